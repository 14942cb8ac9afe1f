"""The Try-it page: talk to the bot from the browser, as the "web" platform, answers streamed."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from bot.admin import queries
from bot.admin.pages import Pages, actor, event_stream, form_field, next_or_none
from bot.admin.web_target import WEB_CHANNEL, WEB_PLATFORM, WebReplyTarget, web_message

if TYPE_CHECKING:
    from bot.commands import Commands
    from bot.engine import ConversationEngine
    from bot.storage import Store

log = logging.getLogger(__name__)

HISTORY_SHOWN = 40  # the web chat's last messages on the page


class TryIt:
    """The page, and each message sent from it answered as one turn."""

    def __init__(
        self, *, store: Store, engine: ConversationEngine, commands: Commands, pages: Pages
    ) -> None:
        self.store = store
        self.engine = engine
        self.commands = commands
        self.pages = pages
        self._turns: set[asyncio.Task[None]] = set()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/try", self._page, name="try_it")
        router.add_post("/try/send", self._send, name="try_send")

    def cancel_turns(self) -> None:
        """Cancel the turns in progress (the engine keeps what was said as 'partial')."""
        for task in list(self._turns):
            task.cancel()

    async def close(self) -> None:
        """Cancel the turns in progress and wait for them to end."""
        self.cancel_turns()
        await asyncio.gather(*self._turns, return_exceptions=True)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        channel_id = await self.store.channel_id(WEB_PLATFORM, WEB_CHANNEL)
        rows = await queries.chat_messages(self.store, channel_id, limit=HISTORY_SHOWN)
        return self.pages.render(request, "try.html", current="try", rows=rows, chat_id=channel_id)

    async def _send(self, request: web.Request) -> web.StreamResponse:
        """Answer one message typed on the page, streamed back as server-sent events."""
        text = form_field(await request.post(), "message").strip()
        if not text:
            return web.json_response({"error": "type a message first"}, status=400)
        target = WebReplyTarget()
        turn = asyncio.create_task(self._turn(text, target, actor(request)))
        self._turns.add(turn)
        turn.add_done_callback(self._turns.discard)
        response = await event_stream(request)
        try:
            while True:
                event = await next_or_none(target.events)
                if event is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(event.encode())
                if event.name == "done":
                    break
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the page was closed: the reply is still finished and stored
        return response

    async def _turn(self, text: str, target: WebReplyTarget, actor_name: str) -> None:
        """One turn of the "web" platform: a command, or a message through engine.handle()."""
        message = web_message(text, actor_name=actor_name)
        try:
            if text.startswith("/"):
                name, _, args = text[1:].partition(" ")
                await target.notice(await self.commands.run(message, name, args))
            else:
                await self.engine.handle(message, target)
        except Exception:
            log.exception("admin console: the Try-it turn failed")
            await target.notice("⚠️ Something went wrong; the logs say what.")
        finally:
            target.close()
