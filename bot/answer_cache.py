"""The answer cache: a complete reply, kept in the store by the hash of exactly what was sent to
the LLM, answers an identical later request at once, without the LLM, on every platform.

The key covers the servers (or the model's own), the request path and the whole body: the model
name, every message or the raw prompt, the sampling parameters. Only complete replies are kept;
on PostgreSQL every process shares them. A cache that fails makes a miss, never a failed reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.cache_settings import CacheSettings
from bot.errors import StorageError

if TYPE_CHECKING:
    from bot.llm import LLMClient, LLMRequest
    from bot.storage import HistoryStore

log = logging.getLogger(__name__)

# The LLM's token counts worth keeping with an answer (its usage also carries llama.cpp timings).
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A kept answer and the token counts the LLM reported for it."""

    text: str
    usage: dict[str, int] = field(default_factory=dict)


def token_counts(usage: dict[str, Any]) -> dict[str, int]:
    """The token counts of an LLM's usage report (timings and the rest left out)."""
    return {
        name: value
        for name in USAGE_KEYS
        if isinstance(value := usage.get(name), int) and not isinstance(value, bool)
    }


def request_key(client: LLMClient, request: LLMRequest) -> str:
    """The hash of exactly what `client` would send for `request` (CPU: megabytes with images)."""
    path, body = client.payload(request)
    wire = {"servers": client.urls, "path": path, "body": body}
    text = json.dumps(wire, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class AnswerCache:
    """`key()` a request, `find()` its answer, `keep()` a complete one; off unless enabled."""

    def __init__(self, settings: CacheSettings, store: HistoryStore) -> None:
        self.settings = settings
        self.store = store

    async def key(self, client: LLMClient, request: LLMRequest) -> str | None:
        """The request's key, or None while the cache is off."""
        if not self.settings.enabled:
            return None
        if any(isinstance(m.get("content"), list) for m in request.messages):
            return await asyncio.to_thread(request_key, client, request)  # base64 pictures
        return request_key(client, request)

    async def find(self, key: str) -> CachedAnswer | None:
        """The answer kept under `key` (counted as a hit or a miss); None when there is none."""
        try:
            found = await self.store.cached_answer(key)
        except StorageError as exc:  # the store logged it; the LLM answers instead
            log.info("answer cache not read: %s", exc)
            found = None
        # The cache's error boundary: whatever fails here, the LLM answers.
        except Exception:
            log.exception("answer cache look-up failed")
            found = None
        metrics.ANSWER_CACHE.labels("hit" if found is not None else "miss").inc()
        if found is None:
            return None
        text, usage = found
        return CachedAnswer(text, token_counts(usage))

    async def keep(self, key: str, text: str, usage: dict[str, Any]) -> None:
        """Keep a complete reply under `key`; a failure is logged, never raised."""
        try:
            await self.store.keep_answer(
                key,
                text,
                token_counts(usage),
                ttl_s=self.settings.ttl_s,
                max_entries=self.settings.max_entries,
            )
        except StorageError as exc:
            log.info("answer not kept in the cache: %s", exc)
        # The cache's error boundary: the reply is given and stored whatever fails here.
        except Exception:
            log.exception("keeping an answer in the cache failed")
