"""The audit log (every change, by whom) and the live log tail (redacted records, streamed)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from bot.admin import queries
from bot.admin.logtail import LogRing
from bot.admin.pages import Pages, event_stream, int_param, next_or_none, send_event

if TYPE_CHECKING:
    from bot.storage import Store

AUDIT_PER_PAGE = 50
LOG_LINES_SHOWN = 200


class AuditAndLogs:
    """The Audit log and Logs pages, and the logs' event stream."""

    def __init__(self, *, store: Store, log_ring: LogRing, pages: Pages) -> None:
        self.store = store
        self.log_ring = log_ring
        self.pages = pages
        self._closing = asyncio.Event()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/audit", self._audit_page, name="audit")
        router.add_get("/logs", self._logs_page, name="logs")
        router.add_get("/logs/stream", self._logs_stream, name="logs_stream")

    def end_streams(self) -> None:
        """End the open event streams (they would hold up a shutdown)."""
        self._closing.set()
        self.log_ring.wake_all()

    async def _audit_page(self, request: web.Request) -> web.StreamResponse:
        before = int_param(request.query.get("before"), None, minimum=1)
        chat_id = int_param(request.query.get("chat"), None, minimum=1)
        rows = await queries.audit_page(
            self.store, limit=AUDIT_PER_PAGE, before=before, channel_id=chat_id
        )
        older = rows[-1].id if len(rows) == AUDIT_PER_PAGE else None
        chat = await queries.get_chat(self.store, chat_id) if chat_id else None
        return self.pages.render(
            request, "audit.html", current="audit", rows=rows, older=older, chat=chat
        )

    async def _logs_page(self, request: web.Request) -> web.StreamResponse:
        entries = self.log_ring.entries(LOG_LINES_SHOWN)
        last = entries[-1].seq if entries else 0
        return self.pages.render(request, "logs.html", current="logs", entries=entries, last=last)

    async def _logs_stream(self, request: web.Request) -> web.StreamResponse:
        """New log records as server-sent events, from the one after `?after=SEQ`."""
        after = int_param(request.query.get("after"), 0, minimum=0)
        queue = self.log_ring.subscribe()
        response = await event_stream(request)
        try:
            for entry in self.log_ring.entries():
                if entry.seq > after:
                    await send_event(response, "log", entry.as_json())
                    after = entry.seq
            while True:
                entry = await next_or_none(queue)
                if self._closing.is_set():
                    break
                if entry is None:
                    await response.write(b": keep-alive\n\n")
                elif entry.seq > after:
                    await send_event(response, "log", entry.as_json())
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the page was closed
        finally:
            self.log_ring.unsubscribe(queue)
        return response
