"""The conversations and the settings: chats (listed, searched, read), each chat's settings
(changed like `/config set`, audited), and the global settings read-only with their sources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.admin import queries
from bot.admin.chat_settings import chat_settings, set_chat_setting
from bot.admin.config_view import describe_settings, read_config_file
from bot.admin.pages import (
    PREFIX,
    Pages,
    actor,
    form_field,
    id_in_path,
    int_param,
    quote_path,
    redirect,
)
from bot.config import Settings
from bot.storage.base import MAX_ROW_ID

if TYPE_CHECKING:
    from bot.commands import Commands
    from bot.storage import Store

log = logging.getLogger(__name__)

CHATS_PER_PAGE = 50
MESSAGES_PER_PAGE = 100
SEARCH_HITS = 100


class Conversations:
    """The Conversations and Settings pages."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        commands: Commands,
        pages: Pages,
        config_path: Path | None,
        environ: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.store = store
        self.commands = commands
        self.pages = pages
        self.config_path = config_path
        self.environ = environ
        self._file_data: dict[str, Any] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/chats", self._chats_page, name="chats")
        router.add_get(r"/chats/{chat:\d+}", self._chat_page, name="chat")
        router.add_get(
            r"/chats/{chat:\d+}/settings", self._chat_settings_page, name="chat_settings"
        )
        router.add_post(r"/chats/{chat:\d+}/settings", self._chat_settings_submit, name="chat_set")
        router.add_get("/settings", self._settings_page, name="settings")

    async def read_config_file(self) -> None:
        """Read the config file once, to show where each global setting came from."""
        self._file_data = await asyncio.to_thread(read_config_file, self.config_path)

    async def _chats_page(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("q", "").strip()
        page = int_param(
            request.query.get("page"), 1, minimum=1, maximum=MAX_ROW_ID // CHATS_PER_PAGE
        )
        hits: list[queries.SearchHit] = []
        chats: list[queries.ChatSummary] = []
        total = 0
        if search:
            hits = await queries.search_messages(self.store, search, limit=SEARCH_HITS)
        else:
            total = await queries.count_chats(self.store)
            chats = await queries.list_chats(
                self.store, limit=CHATS_PER_PAGE, offset=(page - 1) * CHATS_PER_PAGE
            )
        return self.pages.render(
            request,
            "chats.html",
            current="chats",
            search=search,
            hits=hits,
            chats=chats,
            page=page,
            more=page * CHATS_PER_PAGE < total,
            total=total,
        )

    async def _chat(self, request: web.Request) -> queries.ChatSummary:
        chat = await queries.get_chat(self.store, id_in_path(request, "chat"))
        if chat is None:
            raise web.HTTPNotFound(text="No such conversation.")
        return chat

    async def _chat_page(self, request: web.Request) -> web.StreamResponse:
        """A chat's messages, each with the conversation (/session) it belongs to; `?session=ID`
        shows one conversation only."""
        chat = await self._chat(request)
        before = int_param(request.query.get("before"), None, minimum=1)
        sessions = await self.store.sessions(chat.id)
        names = {session.id: session.name for session in sessions}
        wanted = int_param(request.query.get("session"), None, minimum=0)
        shown = wanted if wanted in names else None
        rows = await queries.chat_messages(
            self.store, chat.id, limit=MESSAGES_PER_PAGE, before=before, session_id=shown
        )
        older = rows[0].id if len(rows) == MESSAGES_PER_PAGE else None
        return self.pages.render(
            request,
            "chat.html",
            current="chats",
            chat=chat,
            rows=rows,
            older=older,
            sessions=sessions,
            session_names=names,
            shown_session=shown,
        )

    async def _chat_settings_page(self, request: web.Request) -> web.StreamResponse:
        chat = await self._chat(request)
        saved = request.query.get("saved", "")
        return await self._chat_settings_view(request, chat, saved=saved)

    async def _chat_settings_view(
        self,
        request: web.Request,
        chat: queries.ChatSummary,
        *,
        saved: str = "",
        error: str = "",
        error_key: str = "",
        status: int = 200,
    ) -> web.Response:
        rows = await chat_settings(self.store, self.settings, chat.id)
        return self.pages.render(
            request,
            "chat_settings.html",
            status=status,
            current="settings",
            chat=chat,
            rows=rows,
            saved=saved if any(row.key == saved for row in rows) else "",
            error=error,
            error_key=error_key,
        )

    async def _chat_settings_submit(self, request: web.Request) -> web.StreamResponse:
        chat = await self._chat(request)
        form = await request.post()
        key = form_field(form, "key")
        result = await set_chat_setting(
            self.commands,
            chat.platform,
            chat.channel_key,
            chat.id,
            key,
            form_field(form, "value"),
            actor_name=actor(request),
        )
        if not result.ok:
            return await self._chat_settings_view(
                request, chat, error=result.answer, error_key=key, status=400
            )
        log.info("admin console: chat %d: %s changed", chat.id, key)
        return redirect(f"{PREFIX}/chats/{chat.id}/settings?saved={quote_path(key)}#{key}")

    async def _settings_page(self, request: web.Request) -> web.StreamResponse:
        rows = describe_settings(self.settings, self._file_data, self.environ)
        sections: dict[str, list[Any]] = {}
        for row in rows:
            sections.setdefault(row.key.split(".", 1)[0], []).append(row)
        chats = await queries.list_chats(self.store, limit=CHATS_PER_PAGE)
        return self.pages.render(
            request,
            "settings.html",
            current="settings",
            sections=sections,
            chats=chats,
            config_path=str(self.config_path) if self.config_path else "",
        )
