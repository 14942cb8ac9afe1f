"""A small aiohttp server that receives Telegram's webhook POSTs and feeds them to PTB.

PTB's own webhook server needs tornado (the `webhooks` extra); aiohttp is already a dependency.
Each update is handed to PTB's handlers at once and answered 200 only when its message is stored:
answered 500 (a full disk, a database restarting), Telegram sends it again later, as it does for
polling's offsets. Meanwhile the engine may hold the message in memory and store it as soon as it
can (bot/hold.py); Telegram's next delivery is then acknowledged as handled already.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from adapters.telegram.polling import Ticket, Tickets, kept_until
from adapters.telegram.updates import decodable

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024  # an update is JSON metadata; files are fetched separately
SETTLE_WAIT_S = 20.0  # how long a POST waits for its message to be stored
KEEP_SETTLED = 100  # handled update ids remembered, to acknowledge a duplicate delivery


class WebhookServer:
    """Listens on `host:port` at `path`; only requests carrying `secret` are accepted."""

    def __init__(
        self, application: Application, *, host: str, port: int, path: str, secret: str
    ) -> None:
        self.tickets = Tickets()
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
        except ValueError:  # not UTF-8 or not JSON (both ValueErrors): a resend would not help
            return web.Response(status=400)
        # An update that cannot be decoded is acknowledged anyway: Telegram would redeliver it.
        checked = decodable(data)
        if checked is None:
            return web.Response()
        update = Update.de_json(checked, self._application.bot)
        ticket = self.tickets.by_id.get(update.update_id)
        if ticket is None:
            ticket = self.tickets.by_id[update.update_id] = Ticket(
                update.update_id, kept_until(update)
            )
        elif ticket.failed_at is not None:
            ticket.retry()  # Telegram redelivers what was answered with an error
        elif not ticket.settled:
            return await self._answer_when_settled(ticket)  # a duplicate while in progress
        else:
            return web.Response()  # handled already
        await self.tickets.hand_over(self._application, update, ticket)
        return await self._answer_when_settled(ticket)

    async def _answer_when_settled(self, ticket: Ticket) -> web.Response:
        """200 once the message is stored; 500 while it is not (it failed, or waits in memory
        for the store), so Telegram keeps it and sends it again.

        A turn still busy storing after SETTLE_WAIT_S (a long voice note) is acknowledged: it
        has not failed, and holding Telegram's request longer would make it resend anyway.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ticket.changed.wait(), SETTLE_WAIT_S)
        self._forget_settled()
        if not ticket.settled and (ticket.failed_at is not None or ticket.held):
            return web.Response(status=500, text="not stored yet; send it again")
        return web.Response()

    def _forget_settled(self) -> None:
        settled = [i for i, t in self.tickets.by_id.items() if t.settled]
        for update_id in settled[:-KEEP_SETTLED]:  # a few, to recognise a late duplicate
            del self.tickets.by_id[update_id]
