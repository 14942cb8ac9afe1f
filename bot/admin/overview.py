"""The overview: health checks, the LLM backends and their slots, the queue, totals and charts."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.admin.pages import Pages
from bot.admin.stats import MetricsHistory, Series
from bot.health import HealthChecks
from bot.llm_server_api import NoAnswer

if TYPE_CHECKING:
    from bot.engine import ConversationEngine
    from bot.llm import LLMClient
    from bot.llm_pool import Backend

OVERVIEW_CACHE_S = 2.0  # several open overview pages probe the backends once
SLOTS_TIMEOUT_S = 2.0


class Overview:
    """The overview page and its JSON (which the page polls for its charts)."""

    def __init__(
        self,
        *,
        llm: LLMClient,
        engine: ConversationEngine,
        checks: HealthChecks,
        history: MetricsHistory,
        pages: Pages,
        sample_every_s: float,
    ) -> None:
        self.llm = llm
        self.engine = engine
        self.checks = checks
        self.history = history
        self.pages = pages
        self.sample_every_s = sample_every_s
        self._cache: tuple[float, dict[str, Any]] | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("", self._page, name="overview")
        router.add_get("/", self._page, name="overview_slash")
        router.add_get("/api/overview", self._json, name="overview_json")

    async def _page(self, request: web.Request) -> web.StreamResponse:
        data = await self.data()
        return self.pages.render(request, "overview.html", current="overview", data=data)

    async def _json(self, request: web.Request) -> web.StreamResponse:
        data = await self.data()
        data = {**data, "series": [_series_json(s) for s in self.history.series()]}
        return web.json_response(data)

    async def data(self) -> dict[str, Any]:
        """Health, backends, slots, queue and totals; probed at most every OVERVIEW_CACHE_S."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < OVERVIEW_CACHE_S:
            return self._cache[1]
        results, backends = await asyncio.gather(
            self.checks.run(),
            asyncio.gather(*(self._backend(b) for b in self.llm.pool.backends)),
        )
        totals = self.history.latest()
        queue = self.engine.queue
        data = {
            "health": [{"name": r.name, "ok": r.ok, "problem": r.problem or ""} for r in results],
            "backends": list(backends),
            "engine": {"slots": queue.slots, "busy": queue.in_use, "queue": queue.depth},
            "totals": {
                "messages_in": int(totals.get("parley_messages_in_total")),
                "replies": int(totals.get("parley_replies_total")),
                "tokens_out": int(totals.get("parley_tokens_out_total")),
                "rate_limited": int(totals.get("parley_rate_limited_total")),
                "replies_by_status": {k: int(v) for k, v in totals.replies_by_status.items()},
                "cache_hits": int(totals.cache_by_result.get("hit", 0)),
                "cache_misses": int(totals.cache_by_result.get("miss", 0)),
            },
            "sampled_every_s": self.sample_every_s,
            "process": self.pages.process,  # the queue, totals and charts are this process's
        }
        self._cache = (now, data)
        return data

    async def _backend(self, backend: Backend) -> dict[str, Any]:
        """One LLM backend (named without credentials): does it answer, and how many of its
        slots are busy (llama.cpp)."""
        healthy, slots = await asyncio.gather(
            self.llm.http.healthy(backend.url), self._slots(backend.url)
        )
        busy, total = slots if slots else (None, None)
        return {"url": backend.name, "healthy": healthy, "busy": busy, "slots": total}

    async def _slots(self, url: str) -> tuple[int, int] | None:
        """llama-server's /slots: (processing, total); None when the server has no such page."""
        try:
            slots = await self.llm.http.slots(url, timeout_s=SLOTS_TIMEOUT_S)
        except NoAnswer:
            return None
        if slots is None:
            return None
        return sum(1 for slot in slots if slot.get("is_processing")), len(slots)


def _series_json(series: Series) -> dict[str, Any]:
    return {
        "key": series.key,
        "title": series.title,
        "unit": series.unit,
        "points": [[round(t, 3), None if v is None else round(v, 4)] for t, v in series.points],
    }
