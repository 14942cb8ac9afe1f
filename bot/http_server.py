"""The operations endpoint: /healthz and /metrics on [http] host:port (off by default)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bot.config import HTTPSettings
from bot.health import HealthChecks

log = logging.getLogger(__name__)

HEALTHY = 200
UNHEALTHY = 503  # what load balancers and orchestrators read as "take me out of rotation"


class OpsServer:
    """Serves /healthz (200 or 503 naming the failing parts) and /metrics (Prometheus)."""

    def __init__(
        self,
        settings: HTTPSettings,
        checks: HealthChecks,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.settings = settings
        self.checks = checks
        self.registry = registry
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self._failing: list[str] = []  # as of the last /healthz, to log changes only

    @property
    def url(self) -> str:
        """Base URL once started (with the real port when [http] port is 0)."""
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # No access log: a scraper every few seconds would drown the bot's own lines.
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("health and metrics on %s/healthz and %s/metrics", self.url, self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        results = await self.checks.run()
        failing = [r.name for r in results if not r.ok]
        if failing != self._failing:
            for result in results:
                if not result.ok:
                    log.warning("health: %s is failing: %s", result.name, result.problem)
            if not failing:
                log.info("health: every check passes again")
            self._failing = failing
        body: dict[str, object] = {
            "status": "fail" if failing else "ok",
            "checks": {r.name: r.problem or "ok" for r in results},
        }
        if failing:
            body["failing"] = failing
        body.update(self.checks.details())  # e.g. "llm": slots in use, total, queue
        return web.json_response(body, status=UNHEALTHY if failing else HEALTHY)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Prometheus asks for OpenMetrics in its Accept header; others get the text format.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})


@contextlib.asynccontextmanager
async def serve_http(settings: HTTPSettings, checks: HealthChecks) -> AsyncIterator[HealthChecks]:
    """Serve /healthz and /metrics while the block runs, when [http] is enabled.

    Yields `checks`, so the caller can register the platforms' checks once they exist.
    """
    if not settings.enabled:
        yield checks
        return
    server = OpsServer(settings, checks)
    await server.start()
    try:
        yield checks
    finally:
        await server.stop()
