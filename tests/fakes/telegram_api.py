"""A loopback fake of the Telegram Bot API, speaking its real HTTP protocol (aiohttp).

Point python-telegram-bot at it with `base_url(api.api_base_url)` and
`base_file_url(api.file_base_url)`. It serves `getUpdates` from a queue the test fills, keeps the
bot's messages so edits behave as on Telegram ("message is not modified", "message is too long"),
records every call, and can inject errors (400, 403, 429 with `retry_after`) or enforce flood
control like Telegram's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from tests.fakes.streams import endless_stream

DEFAULT_TOKEN = "123456:TEST-fake-token"
MAX_MESSAGE_CHARS = 4096  # Telegram counts characters (code points) after entity parsing
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile refuses larger files
WAIT_LIMIT_S = 20.0  # wait_for gives up after this long
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
# Form fields PTB sends JSON-encoded; every other field is a plain string or an integer.
_JSON_FIELDS = frozenset(
    {"entities", "caption_entities", "reply_parameters", "reply_markup", "commands",
     "allowed_updates", "link_preview_options", "scope"}
)  # fmt: skip
_INT_FIELDS = frozenset(
    {"chat_id", "message_id", "draft_id", "offset", "limit", "timeout", "duration",
     "message_thread_id", "from_chat_id"}
)  # fmt: skip
# Methods that post or change a message: the ones Telegram's flood control counts.
_WRITE_METHODS = frozenset(
    {"sendmessage", "editmessagetext", "sendmessagedraft", "sendvoice", "sendaudio",
     "senddocument"}
)  # fmt: skip
_ENTITY_TYPES = frozenset(
    {"mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number", "bold",
     "italic", "underline", "strikethrough", "spoiler", "blockquote", "expandable_blockquote",
     "code", "pre", "text_link", "text_mention", "custom_emoji", "date_time"}
)  # fmt: skip


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of entity offsets."""
    return len(text.encode("utf-16-le")) // 2


class ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.retry_after is not None:
            payload["parameters"] = {"retry_after": self.retry_after}
        return payload


def too_many_requests(retry_after: int) -> ApiError:
    """The 429 Telegram answers when flood control triggers."""
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request the bot made: Bot API method, decoded parameters, uploaded files, when."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    at: float  # time.monotonic()
    error: ApiError | None = None  # what the fake answered, if it was an error

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class StoredMessage:
    """A message as the fake remembers it (its latest text after edits)."""

    chat_id: int
    message_id: int
    from_bot: bool
    text: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "text"  # text | voice | audio | document | video_note
    file_id: str | None = None
    caption: str | None = None
    edits: int = 0
    deleted: bool = False


@dataclass(slots=True)
class _Injection:
    method: str
    error: ApiError
    times: int
    when: Callable[[dict[str, Any]], bool] | None


@dataclass(slots=True)
class Bucket:
    """A token bucket: `rate` calls per second, bursts of `burst`."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """Take one token; return 0 if there was one, else seconds until one comes."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass(slots=True)
class FloodControl:
    """Telegram-like flood control on message writes: per chat and for the whole bot.

    Telegram documents only "about one message per second" in a chat and "about 30 messages per
    second" overall (https://core.telegram.org/bots/faq). With `every_method`, the overall limit
    counts every call but getUpdates (typing, deletions, getFile...): stricter than Telegram is
    known to be, so a bot that passes it passes whatever Telegram counts.
    """

    private: tuple[float, float] = (1.0, 3.0)  # (rate per s, burst) in one private chat
    group: tuple[float, float] = (20 / 60, 3.0)
    overall: tuple[float, float] = (30.0, 30.0)
    every_method: bool = False
    _buckets: dict[object, Bucket] = field(default_factory=dict)

    def check(self, chat_id: object, is_private: bool, now: float) -> int | None:
        """None if the write may pass, else the `retry_after` to answer.

        `chat_id` is as the bot sent it: one bucket per distinct value, like Telegram's.
        """
        rate, burst = self.private if is_private else self.group
        chat = self._buckets.setdefault(chat_id, Bucket(rate, burst))
        overall = self._buckets.setdefault("overall", Bucket(*self.overall))
        wait = max(chat.take(now), overall.take(now))
        return None if wait == 0 else max(1, math.ceil(wait))

    def check_overall(self, now: float) -> int | None:
        """A call that counts for the whole bot only: None if it may pass, else `retry_after`."""
        wait = self._buckets.setdefault("overall", Bucket(*self.overall)).take(now)
        return None if wait == 0 else max(1, math.ceil(wait))


class FakeTelegramAPI:
    """The fake server. Use `async with FakeTelegramAPI() as api:`."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_id: int = 777000111,
        bot_username: str = "ParleyTestBot",
        flood: FloodControl | None = None,
    ) -> None:
        self.token = token
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Parley",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.flood = flood
        self.calls: list[ApiCall] = []  # every call but getUpdates, which only counts in polls
        self.polls = 0
        self.commands: list[dict[str, str]] = []  # the default menu
        # Menus for one language_code each (setMyCommands with a language_code).
        self.menus: dict[str, list[dict[str, str]]] = {}
        self.webhook: dict[str, Any] = {}
        self.files: dict[str, bytes] = {}
        self.file_sizes: dict[str, int] = {}
        # Files whose download streams without end, whatever size they claim; what was sent.
        self.endless: set[str] = set()
        self.streamed: dict[str, int] = {}
        self.chats: dict[int, dict[str, Any]] = {}
        self.messages: dict[tuple[int, int], StoredMessage] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._file_ids = itertools.count(1)
        self._injections: list[_Injection] = []
        self._changed = asyncio.Event()  # set and replaced on every change
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._on_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._on_file)
        # No access log: its request lines carry the bot token.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self._notify()  # ends pending long polls, which would hold up the server's shutdown
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def file_base_url(self) -> str:
        return f"{self.url}/file/bot"

    # -- what tests do ---------------------------------------------------------------------

    def user(
        self, user_id: int, name: str, username: str | None = None, language_code: str = ""
    ) -> dict[str, Any]:
        """A Bot API User object for a human; `language_code` is their app's language."""
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self.chats[chat["id"]] = chat
        return chat

    def group_chat(self, chat_id: int, title: str = "Test group") -> dict[str, Any]:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        self.chats[chat_id] = chat
        return chat

    def forum_chat(self, chat_id: int, title: str = "Test forum") -> dict[str, Any]:
        """A supergroup with topics: messages in a topic carry its `message_thread_id`."""
        chat = {"id": chat_id, "type": "supergroup", "title": title, "is_forum": True}
        self.chats[chat_id] = chat
        return chat

    def text_update(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str,
        *,
        reply_to: StoredMessage | None = None,
        topic: int | None = None,
    ) -> dict[str, Any]:
        """An update carrying a text message; mentions and commands get their entities.

        `topic`: the forum topic (message_thread_id) it is written in.
        """
        message = self._user_message(chat, user, reply_to, topic)
        message["text"] = text
        entities = _auto_entities(text)
        if entities:
            message["entities"] = entities
        self._remember(message, text=text)
        return self._wrap(message)

    def voice_update(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        data: bytes,
        *,
        duration: int = 3,
        kind: str = "voice",
        file_size: int | None = None,
        reply_to: StoredMessage | None = None,
        caption: str | None = None,
    ) -> dict[str, Any]:
        """An update with a recording (`kind` voice | audio | video_note | video) of `data`.

        `file_size` overrides the advertised size (an "oversized" file needs no real bytes).
        """
        file_id = self._store_file(data, file_size)
        message = self._user_message(chat, user, reply_to)
        media: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "duration": duration,
            "file_size": self.file_sizes[file_id],
        }
        if kind == "video_note":
            media["length"] = 240
        elif kind == "video":
            media.update(width=320, height=240, mime_type="video/mp4")
        else:
            media["mime_type"] = "audio/ogg" if kind == "voice" else "audio/mpeg"
        message[kind] = media
        if caption:
            message["caption"] = caption
            entities = _auto_entities(caption)
            if entities:
                message["caption_entities"] = entities
        self._remember(message, kind=kind, file_id=file_id)
        return self._wrap(message)

    def media_update(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        kind: str,
        payload: Any,
        *,
        caption: str | None = None,
        topic: int | None = None,
    ) -> dict[str, Any]:
        """An update with any other kind of message (photo, document, sticker, location...).

        `payload` is the field's value as the Bot API shapes it, e.g. a list of PhotoSize.
        """
        message = self._user_message(chat, user, None, topic)
        message[kind] = payload
        if caption:
            message["caption"] = caption
            entities = _auto_entities(caption)
            if entities:
                message["caption_entities"] = entities
        self._remember(message, kind=kind)
        return self._wrap(message)

    def photo_update(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        sizes: list[bytes],
        *,
        caption: str | None = None,
        file_sizes: list[int] | None = None,
        topic: int | None = None,
    ) -> dict[str, Any]:
        """An update with a photo: one PhotoSize per entry of `sizes` (smallest first), each a
        downloadable file; `file_sizes` overrides the sizes advertised."""
        photo = []
        for index, data in enumerate(sizes):
            advertised = file_sizes[index] if file_sizes is not None else None
            file_id = self._store_file(data, advertised)
            side = 90 * (index + 1)
            photo.append(
                {
                    "file_id": file_id,
                    "file_unique_id": f"u{file_id}",
                    "width": side,
                    "height": side,
                    "file_size": self.file_sizes[file_id],
                }
            )
        return self.media_update(chat, user, "photo", photo, caption=caption, topic=topic)

    def image_file_update(
        self, chat: dict[str, Any], user: dict[str, Any], data: bytes, mime: str, **kwargs: Any
    ) -> dict[str, Any]:
        """An update with a picture sent as a file (a document with an image MIME type)."""
        file_id = self._store_file(data, None)
        document = {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_name": "picture." + mime.rsplit("/", 1)[-1],
            "mime_type": mime,
            "file_size": len(data),
        }
        return self.media_update(chat, user, "document", document, **kwargs)

    def bot_said(self, chat: dict[str, Any], text: str) -> StoredMessage:
        """A message the bot sent earlier (e.g. to reply to it in a group)."""
        self.chats[chat["id"]] = chat
        return self._bot_message(chat, "text", text=text)

    def push(self, update: dict[str, Any]) -> None:
        """Queue an update for the bot's next getUpdates."""
        self._updates.append(update)
        self._notify()

    def send_text(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """`text_update` + `push`; returns the update."""
        update = self.text_update(*args, **kwargs)
        self.push(update)
        return update

    def send_voice(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """`voice_update` + `push`; returns the update."""
        update = self.voice_update(*args, **kwargs)
        self.push(update)
        return update

    def fail(
        self,
        method: str,
        *,
        status: int = 400,
        description: str = "Bad Request",
        retry_after: int | None = None,
        times: int = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (matching `when`) with an error."""
        error = ApiError(status, description, retry_after)
        self._injections.append(_Injection(method.lower(), error, times, when))

    def rate_limit(self, method: str, retry_after: int, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with 429 and `retry_after`."""
        error = too_many_requests(retry_after)
        self._injections.append(_Injection(method.lower(), error, times, None))

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[ApiCall]:
        """Recorded calls of one method (case-insensitive), optionally only (un)successful ones."""
        return [
            c for c in self.calls
            if c.method.lower() == method.lower() and (ok is None or c.ok == ok)
        ]  # fmt: skip

    def bot_messages(self, chat_id: int) -> list[StoredMessage]:
        """The bot's messages in a chat that still exist, oldest first."""
        return [
            m for (cid, _), m in sorted(self.messages.items())
            if cid == chat_id and m.from_bot and not m.deleted
        ]  # fmt: skip

    async def wait_for(self, predicate: Callable[[FakeTelegramAPI], object]) -> None:
        """Wait until `predicate(self)` is true; re-checked after every call and update.

        Gives up after WAIT_LIMIT_S so a broken bot fails the test instead of hanging it.
        """
        async with asyncio.timeout(WAIT_LIMIT_S):
            await self.until(predicate)

    async def until(self, predicate: Callable[[FakeTelegramAPI], object]) -> None:
        """`wait_for` without a time limit (the caller sets one)."""
        await self._until(lambda: bool(predicate(self)))

    # -- HTTP ------------------------------------------------------------------------------

    async def _on_method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _json(ApiError(401, "Unauthorized").body(), 401)
        method = request.match_info["method"]
        params, files = await _read_params(request)
        handler = getattr(self, f"_m_{method.lower()}", None)
        error: ApiError | None = None
        result: Any = None
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            self._inject(method, params)
            self._flood_check(method, params)
            result = await handler(params, files)
        except ApiError as exc:
            error = exc
        if method.lower() != "getupdates":  # polls are noise; tests look at what the bot sent
            self.calls.append(ApiCall(method, params, files, time.monotonic(), error))
            self._notify()
        if error is not None:
            return _json(error.body(), error.status)
        return _json({"ok": True, "result": result})

    async def _on_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if file_id not in self.files:
            return web.Response(status=404)
        if file_id in self.endless:
            return await endless_stream(request, "application/octet-stream", self.streamed, file_id)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    def _inject(self, method: str, params: dict[str, Any]) -> None:
        for injection in self._injections:
            if injection.method != method.lower() or injection.times <= 0:
                continue
            if injection.when is not None and not injection.when(params):
                continue
            injection.times -= 1
            raise injection.error

    def _flood_check(self, method: str, params: dict[str, Any]) -> None:
        if self.flood is None or method.lower() == "getupdates":
            return
        if method.lower() not in _WRITE_METHODS:
            if self.flood.every_method:
                retry_after = self.flood.check_overall(time.monotonic())
                if retry_after is not None:
                    raise too_many_requests(retry_after)
            return
        chat_id = params.get("chat_id")
        chat = self.chats.get(chat_id) if isinstance(chat_id, int) else None
        is_private = chat is not None and chat["type"] == "private"
        retry_after = self.flood.check(chat_id, is_private, time.monotonic())
        if retry_after is not None:
            raise too_many_requests(retry_after)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    # -- Bot API methods -------------------------------------------------------------------

    async def _m_getme(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self.bot_user

    async def _m_getupdates(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.polls += 1
        offset = params.get("offset", 0)
        limit = params.get("limit", 100)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and params.get("timeout", 0) > 0:
            try:
                async with asyncio.timeout(params["timeout"]):
                    await self._until(lambda: bool(self._updates) or self._closing)
            except TimeoutError:
                return []
        return self._updates[:limit]

    async def _m_deletewebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.webhook = {}
        return True

    async def _m_setwebhook(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self.webhook = dict(params)
        return True

    async def _m_setmycommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        commands = list(params.get("commands", []))
        language = params.get("language_code")
        if not language:
            self.commands = commands
        elif not re.fullmatch(r"[a-z]{2}", str(language)):
            raise ApiError(400, "Bad Request: invalid language code specified")
        else:
            self.menus[str(language)] = commands
        return True

    async def _m_deletemycommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        language = params.get("language_code")
        if language:
            self.menus.pop(str(language), None)
        else:
            self.commands = []
        return True

    async def _m_getmycommands(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        language = params.get("language_code")
        return self.menus.get(str(language), self.commands) if language else self.commands

    async def _m_sendchataction(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        self._chat(params)
        return True

    async def _m_sendmessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        text, entities = self._checked_text(params)
        message = self._bot_message(chat, "text", text=text, entities=entities)
        return self._message_json(message)

    async def _m_sendmessagedraft(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        if chat["type"] != "private":
            raise ApiError(400, "Bad Request: drafts can be sent only to private chats")
        if not params.get("draft_id"):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        if params.get("text"):
            self._checked_text(params)
        return True

    async def _m_editmessagetext(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        stored = self.messages.get((chat["id"], params.get("message_id", 0)))
        if stored is None or stored.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        if not stored.from_bot or stored.kind != "text":
            raise ApiError(400, "Bad Request: message can't be edited")
        text, entities = self._checked_text(params)
        if text == stored.text and entities == stored.entities:
            raise ApiError(400, NOT_MODIFIED)
        stored.text, stored.entities = text, entities
        stored.edits += 1
        return self._message_json(stored, edited=True)

    async def _m_deletemessage(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        chat = self._chat(params)
        stored = self.messages.get((chat["id"], params.get("message_id", 0)))
        if stored is None or stored.deleted:
            raise ApiError(400, "Bad Request: message to delete not found")
        stored.deleted = True
        return True

    async def _m_sendvoice(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._media_message(params, files, "voice")

    async def _m_sendaudio(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._media_message(params, files, "audio")

    async def _m_senddocument(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        return self._media_message(params, files, "document")

    async def _m_getfile(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        file_id = params.get("file_id", "")
        if file_id not in self.file_sizes:
            raise ApiError(400, "Bad Request: invalid file_id")
        if self.file_sizes[file_id] > MAX_DOWNLOAD_BYTES:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": self.file_sizes[file_id],
            "file_path": f"voice/{file_id}",
        }

    # -- helpers ---------------------------------------------------------------------------

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        chat = self.chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _checked_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text = params.get("text", "")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if params.get("parse_mode"):
            raise ApiError(400, "Bad Request: this fake accepts entities only, not parse_mode")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ApiError(400, "Bad Request: message is too long")
        entities = list(params.get("entities") or [])
        size = utf16_len(text)
        for entity in entities:
            offset, length = entity.get("offset", -1), entity.get("length", 0)
            if entity.get("type") not in _ENTITY_TYPES:
                raise ApiError(400, "Bad Request: can't parse entities: unsupported entity type")
            if offset < 0 or length <= 0 or offset + length > size:
                raise ApiError(400, "Bad Request: can't parse entities: entity out of range")
            if entity["type"] == "text_link" and not str(entity.get("url", "")).startswith(
                ("http://", "https://", "tg://")
            ):
                raise ApiError(400, "Bad Request: can't parse entities: wrong HTTP URL")
        return text, entities

    def _media_message(self, params: dict[str, Any], files: dict[str, bytes], kind: str) -> Any:
        chat = self._chat(params)
        data = files.get(kind)
        if data is None:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        file_id = self._store_file(data, None)
        caption = params.get("caption")
        message = self._bot_message(chat, kind, file_id=file_id, caption=caption)
        return self._message_json(message)

    def _store_file(self, data: bytes, size: int | None) -> str:
        file_id = f"file{next(self._file_ids)}"
        self.files[file_id] = data
        self.file_sizes[file_id] = len(data) if size is None else size
        return file_id

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _user_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        reply_to: StoredMessage | None,
        topic: int | None = None,
    ) -> dict[str, Any]:
        self.chats[chat["id"]] = chat
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat["id"]),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
        }
        if topic is not None:
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        if reply_to is not None:
            message["reply_to_message"] = self._message_json(reply_to)
        return message

    def _remember(self, message: dict[str, Any], **fields: Any) -> None:
        chat_id, message_id = message["chat"]["id"], message["message_id"]
        self.messages[(chat_id, message_id)] = StoredMessage(
            chat_id, message_id, from_bot=False, **fields
        )

    def _bot_message(self, chat: dict[str, Any], kind: str, **fields: Any) -> StoredMessage:
        message_id = self._next_message_id(chat["id"])
        stored = StoredMessage(chat["id"], message_id, from_bot=True, kind=kind, **fields)
        self.messages[(chat["id"], message_id)] = stored
        return stored

    def _message_json(self, stored: StoredMessage, *, edited: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": stored.message_id,
            "date": int(time.time()),
            "chat": self.chats[stored.chat_id],
            "from": self.bot_user if stored.from_bot else {"id": 1, "is_bot": False,
                                                            "first_name": "User"},
        }  # fmt: skip
        if edited:
            message["edit_date"] = int(time.time())
        if stored.kind == "text":
            message["text"] = stored.text
            if stored.entities:
                message["entities"] = stored.entities
        elif stored.file_id is not None:
            size = self.file_sizes[stored.file_id]
            media: dict[str, Any] = {
                "file_id": stored.file_id,
                "file_unique_id": f"u{stored.file_id}",
                "file_size": size,
            }
            if stored.kind in ("voice", "audio", "video_note"):
                media["duration"] = 1
            if stored.kind == "video_note":
                media["length"] = 240
            message[stored.kind] = media
            if stored.caption:
                message["caption"] = stored.caption
        return message

    def _wrap(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"update_id": next(self._update_ids), "message": message}


def _auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram's client adds by itself: a leading /command and @mentions."""
    entities: list[dict[str, Any]] = []
    if text.startswith("/"):
        word = text.split(maxsplit=1)[0]
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(word)})
    position = 0
    for word in text.split(" "):
        if word.startswith("@") and len(word) > 1:
            offset = utf16_len(text[:position])
            entities.append({"type": "mention", "offset": offset, "length": utf16_len(word)})
        position += len(word) + 1
    return entities


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Decode PTB's form (or multipart) fields, or a JSON body, into Bot API values."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json()
        return (body if isinstance(body, dict) else {}), files
    if request.method == "GET":
        fields: Any = request.query
    else:
        fields = await request.post()
    for name, value in fields.items():
        if isinstance(value, web.FileField):
            files[name] = value.file.read()
        elif name in _JSON_FIELDS:
            params[name] = json.loads(value)
        elif name in _INT_FIELDS and value.lstrip("-").isdigit():
            params[name] = int(value)
        elif value in ("true", "false"):
            params[name] = value == "true"
        else:
            params[name] = value
    # PTB uploads a file as a multipart part named "attach://<name>" referenced by the field.
    for name, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            files[name] = files.pop(value.removeprefix("attach://"), b"")
    return params, files


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)
