"""A small aiohttp server that receives Telegram's webhook POSTs and feeds them to PTB.

PTB's own webhook server needs tornado (the `webhooks` extra); aiohttp is already a dependency,
and PTB documents this pattern: decode the update and put it on `Application.update_queue`.
"""

from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from adapters.telegram.updates import decodable

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024  # an update is JSON metadata; files are fetched separately


class WebhookServer:
    """Listens on `host:port` at `path`; only requests carrying `secret` are accepted."""

    def __init__(
        self, application: Application, *, host: str, port: int, path: str, secret: str
    ) -> None:
        self._application = application
        self._host = host
        self._port = port
        self._path = path or "/"
        self._secret = secret.encode()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; returns once listening."""
        app = web.Application(client_max_size=MAX_UPDATE_BYTES)
        app.router.add_post(self._path, self._on_post)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        log.info("Telegram webhook listening on %s:%s%s", self._host, self._port, self._path)

    async def stop(self) -> None:
        """Stop listening; updates already queued are still processed by PTB."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_post(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return web.Response(status=403)
        try:
            data = await request.json()
        except json.JSONDecodeError:
            return web.Response(status=400)
        # An update that cannot be decoded is acknowledged anyway: Telegram would redeliver it.
        checked = decodable(data)
        if checked is not None:
            update = Update.de_json(checked, self._application.bot)
            await self._application.update_queue.put(update)
        return web.Response()
