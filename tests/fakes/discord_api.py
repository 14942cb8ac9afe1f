"""A loopback fake Discord for tests and benchmarks: REST v10 plus the gateway, on 127.0.0.1.

`FakeDiscord` serves the world of `discord_world` (one guild, its channels, roles and users),
answers the REST calls discord.py and Parley's Discord adapter make, and enforces what Discord
enforces and a client can trip over: the 3 s interaction deadline, the 15 minute interaction
token, 2000-character messages, the voice-message rules, 429s with Discord's body and headers.
Every call is recorded for assertions. Point discord.py at `api_url` and `gateway_url`.

A 429 looks exactly like Discord's: JSON `retry_after` (float seconds) and `global`, the
`Retry-After` and `X-RateLimit-*` headers and a `Via` header, so discord.py's own HTTP client
retries it after sleeping (as it does against Discord) while a client that owns its waits sees it.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import BodyPartReader, web

from tests.fakes.discord_gateway import INTENT_MESSAGE_CONTENT, Gateway, GatewaySession
from tests.fakes.discord_world import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_VOICE_MESSAGE,
    INTERACTION_APPLICATION_COMMAND,
    DiscordWorld,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    FilePart,
    snowflake,
)
from tests.fakes.streams import endless_stream

API_PREFIX = "/api/v10"
MAX_MESSAGE_CHARS = 2000
MAX_WAVEFORM_SAMPLES = 256
INTERACTION_DEADLINE_S = 3.0  # the first response to an interaction
INTERACTION_TOKEN_LIFETIME_S = 15 * 60  # follow-ups and edits of the original
DEFAULT_HEARTBEAT_INTERVAL_MS = 41_250
SESSION_STARTS_PER_DAY = 1000  # GET /gateway/bot's session_start_limit.total for a small bot
WAIT_TIMEOUT_S = 20.0  # a hang guard for `wait_until`, not a speed expectation

CALLBACK_CHANNEL_MESSAGE = 4
CALLBACK_DEFERRED_CHANNEL_MESSAGE = 5

# JSON error codes Discord answers with.
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
CANNOT_EDIT_OTHERS_MESSAGE = 50005
EMPTY_MESSAGE = 50006
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035
ALREADY_ACKNOWLEDGED = 40060
VOICE_MESSAGE_SINGLE_AUDIO = 50160
VOICE_MESSAGE_NO_CONTENT = 50161


@dataclass
class Call:
    """One REST request the fake received, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    files: list[FilePart]
    status: int = 0
    at: float = 0.0
    channel_id: int | None = None  # the channel whose messages it writes, if any


@dataclass
class _Injected:
    """An answer to force on matching calls: after `skip` matches, the next `times` ones."""

    method: str
    pattern: re.Pattern[str]
    times: int
    skip: int
    reply: Callable[[], _Reply]


class _Reply(Exception):
    """Raised inside a handler to answer with an error body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, code: int, message: str) -> _Reply:
    return _Reply(status, {"message": message, "code": code})


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with Content-Type exactly `application/json`, as discord.py requires."""
    if body is None:
        return web.Response(status=204, headers=headers)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


_current_call: contextvars.ContextVar[Call] = contextvars.ContextVar("current_call")

Handler = Callable[[web.Request, "re.Match[str]", Any, list[FilePart]], Awaitable[Any]]


class FakeDiscord(DiscordWorld):
    """REST + gateway fake of Discord; use as `async with FakeDiscord() as discord: ...`."""

    TOKEN = "fake-bot-token.not-a-secret"

    def __init__(
        self,
        *,
        token: str = TOKEN,
        grant_message_content: bool = True,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        channel_write_limit: tuple[int, float] | None = None,
        global_limit: tuple[int, float] | None = None,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Limits are `(calls, seconds)` sliding windows answered with 429s when exceeded.

        `channel_write_limit` counts message writes per channel; `global_limit` counts the bot's
        authenticated requests (Discord: 50 per second; interaction endpoints are exempt).
        """
        super().__init__(grant_message_content=grant_message_content)
        self.token = token
        self.channel_write_limit = channel_write_limit
        self.global_limit = global_limit
        self.recommended_shards = recommended_shards
        self.max_concurrency = max_concurrency
        self._requests: deque[float] = deque()
        # Arrival times of every request that counts against the bot's global limit, from every
        # connection (all of a sharded bot's processes share the one limit of its token).
        self.global_stamps: list[float] = []
        self.clock = clock
        self.calls: list[Call] = []
        self.unhandled: list[Call] = []
        self.attachments: dict[int, tuple[bytes, str]] = {}
        self.rate_limited: list[Call] = []
        self._injected: list[_Injected] = []
        self.downloads: list[int] = []
        # Attachments whose URL streams without end, whatever size they claim; what was sent.
        self.endless: set[int] = set()
        self.streamed: dict[int, int] = {}
        self._writes: dict[int, deque[float]] = defaultdict(deque)
        self._changed = asyncio.Condition()
        self.gateway = Gateway(
            token=token,
            heartbeat_interval_ms=heartbeat_interval_ms,
            granted_intents=lambda: INTENT_MESSAGE_CONTENT if self.grant_message_content else 0,
            ready_events=lambda session: self.ready_events(self.gateway_url, session.shard),
            on_change=self._notify,
        )
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/gateway/bot"), self._get_gateway_bot),
            ("GET", re.compile(r"/users/@me"), self._get_me),
            ("GET", re.compile(r"/oauth2/applications/@me"), self._get_application),
            ("PUT", re.compile(r"/applications/(?P<app>\d+)/commands"), self._put_commands),
            (
                "PUT",
                re.compile(r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands"),
                self._put_commands,
            ),
            (
                "POST",
                re.compile(r"/interactions/(?P<id>\d+)/(?P<token>[^/]+)/callback"),
                self._callback,
            ),
            ("POST", re.compile(r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"), self._followup),
            (
                "GET|PATCH|DELETE",
                re.compile(
                    r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<msg>@original|\d+)"
                ),
                self._webhook_message,
            ),
            ("POST", re.compile(r"/channels/(?P<channel>\d+)/messages"), self._create_message),
            (
                "GET|PATCH|DELETE",
                re.compile(r"/channels/(?P<channel>\d+)/messages/(?P<msg>\d+)"),
                self._channel_message,
            ),
            ("POST", re.compile(r"/channels/(?P<channel>\d+)/typing"), self._typing),
        ]
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/attachments/{id}/{filename}", self._download)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self.gateway.sessions:
            if not session.socket.closed:
                await session.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """Value for `discord.api_base_url`."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """Value for `discord.gateway_url`."""
        return self.url.replace("http://", "ws://") + "/gateway"

    # -- hooks for tests -------------------------------------------------------------------

    def rate_limit(
        self,
        method: str,
        path_pattern: str,
        *,
        times: int = 1,
        skip: int = 0,
        retry_after: float = 0.25,
        is_global: bool = False,
    ) -> None:
        """Answer matching calls with a 429 (path regex without the /api/v10 prefix).

        The first `skip` matching calls pass, the `times` after them are refused.
        """
        self._injected.append(
            _Injected(
                method,
                re.compile(path_pattern),
                times,
                skip,
                lambda: self._too_many(retry_after, is_global=is_global),
            )
        )

    def refuse(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 403,
        code: int = MISSING_PERMISSIONS,
        message: str = "Missing Permissions",
        times: int = 1,
        skip: int = 0,
    ) -> None:
        """Answer matching calls with an error, as Discord refuses a call (`skip`: as above)."""
        self._injected.append(
            _Injected(
                method, re.compile(path_pattern), times, skip, lambda: _error(status, code, message)
            )
        )

    def add_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str,
        *,
        duration_s: float | None = None,
        waveform: bytes | None = None,
    ) -> dict[str, Any]:
        """Host a file and return the attachment object a message carries for it."""
        attachment_id = snowflake()
        self.attachments[attachment_id] = (data, content_type)
        payload: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": f"{self.url}/attachments/{attachment_id}/{filename}",
            "proxy_url": f"{self.url}/attachments/{attachment_id}/{filename}",
            "content_type": content_type,
        }
        if duration_s is not None:
            payload["duration_secs"] = duration_s
            payload["waveform"] = base64.b64encode(waveform or b"\0").decode()
        return payload

    async def post_message(
        self,
        author: FakeUser,
        content: str = "",
        *,
        channel_id: int | None = None,
        dm: bool = False,
        mention_bot: bool = False,
        reply_to: FakeMessage | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        flags: int = 0,
    ) -> FakeMessage:
        """A user writes a message: store it and dispatch MESSAGE_CREATE."""
        if dm:
            channel_id = self.dm_channel(author)
        channel_id = channel_id or self.GENERAL_ID
        if mention_bot:
            content = f"<@{self.BOT.id}> {content}".strip()
        message = FakeMessage(
            id=snowflake(),
            channel_id=channel_id,
            author=author,
            content=content,
            flags=flags,
            attachments=list(attachments),
            reference=reply_to.id if reply_to else None,
            writes=[content],
        )
        self.messages[message.id] = message
        await self.gateway.dispatch("MESSAGE_CREATE", self.message_payload(message, event=True))
        return message

    async def redeliver(self, message: FakeMessage) -> None:
        """Dispatch `message`'s MESSAGE_CREATE again, as Discord may replay events after a
        reconnect (gateway delivery is at least once)."""
        await self.gateway.dispatch("MESSAGE_CREATE", self.message_payload(message, event=True))

    async def drop_sessions(self, code: int = 4000) -> None:
        """Close every live gateway session as Discord does on an error of its own (4000: an
        unknown error, after which a client resumes or identifies again)."""
        for session in self.gateway.live:
            await session.close(code, "Unknown error.")

    async def interact(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: int | None = None,
        dm: bool = False,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A user runs a synced slash command ("ask", "config set"): dispatch INTERACTION_CREATE.

        `locale`: the language of the user's Discord client.

        Options are checked against the schema the bot registered, so an unsynced command or a
        misnamed option fails here as it would in the Discord client.
        """
        user = user or self.ALICE
        channel_id = self.dm_channel(user) if dm else channel_id or self.GENERAL_ID
        guild_id = None if dm else self.guild_of(channel_id)
        names = command.split()
        schema = self.registered_command(names[0], guild_id)
        data = {
            "id": schema["id"],
            "name": names[0],
            "type": 1,
            "options": self.command_options(schema, names[1:], options or {}),
        }
        if guild_id is not None and schema.get("guild_id"):
            data["guild_id"] = str(guild_id)
        resolved = self.resolved(user, data["options"])
        if resolved:
            data["resolved"] = resolved
        interaction = FakeInteraction(
            id=snowflake(),
            token=f"itoken-{snowflake()}",
            channel_id=channel_id,
            guild_id=guild_id,
            user=user,
            created_at=self.clock(),
            locale=locale,
        )
        self.interactions[interaction.id] = interaction
        await self.gateway.dispatch(
            "INTERACTION_CREATE", self.interaction_payload(interaction, data)
        )
        interaction.created_at = self.clock()
        return interaction

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is re-checked after every call and gateway frame.

        Gives up after `WAIT_TIMEOUT_S`, a guard against a hung test, not a speed expectation.
        """
        async with asyncio.timeout(WAIT_TIMEOUT_S), self._changed:
            await self._changed.wait_for(predicate)

    # -- queries for assertions ------------------------------------------------------------

    def channel_messages(self, channel_id: int, *, by_bot: bool | None = None) -> list[FakeMessage]:
        """A channel's live messages in order; `by_bot` filters on the author."""
        found = [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]
        if by_bot is not None:
            found = [m for m in found if m.author.bot == by_bot]
        return sorted(found, key=lambda m: m.id)

    def reply_messages(self, interaction: FakeInteraction) -> list[FakeMessage]:
        """The original response and the follow-ups of an interaction, in order."""
        ids = [interaction.original_id, *interaction.followup_ids]
        return [self.messages[i] for i in ids if i is not None and not self.messages[i].deleted]

    def original_response(self, interaction: FakeInteraction) -> FakeMessage:
        """The interaction's original response (deferred or not); a test fails if none yet."""
        assert interaction.original_id is not None, "the interaction has no response yet"
        return self.messages[interaction.original_id]

    def busiest_window(self, window_s: float = 1.0) -> int:
        """The most requests counting against the global limit in any `window_s` window."""
        stamps = sorted(self.global_stamps)
        most, first = 0, 0
        for last, at in enumerate(stamps):
            while at - stamps[first] >= window_s:
                first += 1
            most = max(most, last - first + 1)
        return most

    def calls_to(self, method: str, path_pattern: str) -> list[Call]:
        """Recorded calls whose method matches and whose path matches the regex fully."""
        pattern = re.compile(path_pattern)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    @property
    def session(self) -> GatewaySession:
        """The most recent gateway session."""
        return self.gateway.sessions[-1]

    # -- REST dispatch ---------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        call = Call(request.method, path, dict(request.query), body, files, at=self.clock())
        self.calls.append(call)
        _current_call.set(call)  # each request runs in its own task, hence its own context
        try:
            result_status, result = await self._route(request, path, body, files)
            call.status = result_status
            return json_response(result_status, result)
        except _Reply as reply:
            call.status = reply.status
            if reply.status == 429:
                self.rate_limited.append(call)
            return json_response(reply.status, reply.body, reply.headers)
        finally:
            await self._notify()

    async def _route(
        self, request: web.Request, path: str, body: Any, files: list[FilePart]
    ) -> tuple[int, Any]:
        for methods, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None or request.method not in methods.split("|"):
                continue
            # Interaction webhooks authenticate by the token in their URL.
            needs_auth = not path.startswith(("/webhooks/", "/interactions/"))
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise _error(401, 0, "401: Unauthorized")
            self._check_injected(request.method, path)
            if needs_auth:  # interaction endpoints are exempt from the global limit
                self._count_global()
            result = await handler(request, match, body, files)
            if result is None:
                return 204, None
            return 200, result
        self.unhandled.append(_current_call.get())
        raise _error(404, 0, "404: Not Found")

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[FilePart]]:
        if not request.can_read_body:
            return None, []
        if request.content_type == "multipart/form-data":
            body: Any = None
            files: list[FilePart] = []
            reader = await request.multipart()
            async for part in reader:
                # discord.py's uploads are flat: one part per file and payload_json.
                assert isinstance(part, BodyPartReader), "nested multipart"
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append(
                        FilePart(
                            part.name or "",
                            part.filename,
                            part.headers.get("Content-Type"),
                            bytes(data),
                        )
                    )
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    # -- rate limits -----------------------------------------------------------------------

    def _check_injected(self, method: str, path: str) -> None:
        for rule in self._injected:
            if rule.times <= 0 or rule.method != method or not rule.pattern.fullmatch(path):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            rule.times -= 1
            raise rule.reply()

    def _count_write(self, channel_id: int) -> None:
        """A write to `channel_id`'s messages: recorded, and refused past the channel's limit."""
        _current_call.get().channel_id = channel_id
        if self.channel_write_limit is not None:
            self._take(self._writes[channel_id], self.channel_write_limit, is_global=False)

    def _count_global(self) -> None:
        self.global_stamps.append(self.clock())
        if self.global_limit is not None:
            self._take(self._requests, self.global_limit, is_global=True)

    def _take(self, stamps: deque[float], limit: tuple[int, float], *, is_global: bool) -> None:
        """A sliding window of `limit[0]` calls per `limit[1]` seconds; a 429 past it."""
        count, window = limit
        now = self.clock()
        while stamps and now - stamps[0] >= window:
            stamps.popleft()
        if len(stamps) >= count:
            raise self._too_many(window - (now - stamps[0]), is_global=is_global)
        stamps.append(now)

    def _too_many(self, retry_after: float, *, is_global: bool) -> _Reply:
        retry_after = round(max(retry_after, 0.001), 3)
        headers = {
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fake-bucket",
            "X-RateLimit-Scope": "global" if is_global else "user",
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": retry_after}
        body["global"] = is_global
        return _Reply(429, body, headers)

    # -- handlers: identity and commands ---------------------------------------------------

    async def _get_gateway_bot(self, *_: Any) -> Any:
        # What AutoShardedClient asks when it is given no shard_count: the recommended number of
        # shards and how many sessions may start (max_concurrency: IDENTIFYs per 5 s bucket).
        identifies = sum(1 for s in self.gateway.sessions if s.identify is not None)
        return {
            "url": self.gateway_url,
            "shards": self.recommended_shards,
            "session_start_limit": {
                "total": SESSION_STARTS_PER_DAY,
                "remaining": max(SESSION_STARTS_PER_DAY - identifies, 0),
                "reset_after": 24 * 3600 * 1000,
                "max_concurrency": self.max_concurrency,
            },
        }

    async def _get_me(self, *_: Any) -> Any:
        return {**self.BOT.payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    async def _get_application(self, *_: Any) -> Any:
        return {
            "id": str(self.APPLICATION_ID),
            "name": "Parley",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.ALICE.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
        }

    async def _put_commands(
        self, _: web.Request, match: re.Match[str], body: Any, __: list[FilePart]
    ) -> Any:
        if int(match["app"]) != self.APPLICATION_ID:
            raise _error(403, 50001, "Missing Access")
        guild = match.groupdict().get("guild")
        guild_id = int(guild) if guild else None
        problems = self.command_problems(body)
        if problems:
            raise _Reply(
                400, {"message": "Invalid Form Body", "code": INVALID_FORM_BODY, "errors": problems}
            )
        registered = []
        for command in body:
            key = (guild_id, command["name"])
            command_id = self._command_ids.setdefault(key, snowflake())
            full = {
                "type": 1,
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": str(command_id),
                "application_id": str(self.APPLICATION_ID),
                "version": str(snowflake()),
            }
            if guild_id is not None:
                full["guild_id"] = str(guild_id)
            registered.append(full)
        self.commands[guild_id] = registered
        return registered

    # -- handlers: interactions ------------------------------------------------------------

    def _interaction_for_token(self, app: str, token: str) -> FakeInteraction:
        found = next((i for i in self.interactions.values() if i.token == token), None)
        if int(app) != self.APPLICATION_ID or found is None or found.callback_type is None:
            raise _error(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        if self.clock() - found.created_at > INTERACTION_TOKEN_LIFETIME_S:
            raise _error(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return found

    async def _callback(
        self, request: web.Request, match: re.Match[str], body: Any, files: list[FilePart]
    ) -> Any:
        interaction = self.interactions.get(int(match["id"]))
        if interaction is None or interaction.token != match["token"]:
            raise _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if interaction.callback_type is not None:
            raise _error(400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        if self.clock() - interaction.created_at > INTERACTION_DEADLINE_S:
            interaction.late_callback = True
            raise _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        kind = body["type"]
        data = body.get("data") or {}
        if kind not in (CALLBACK_CHANNEL_MESSAGE, CALLBACK_DEFERRED_CHANNEL_MESSAGE):
            raise _error(400, INVALID_FORM_BODY, f"callback type {kind} is not for commands")
        interaction.callback_type = kind
        flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
        if kind == CALLBACK_DEFERRED_CHANNEL_MESSAGE:
            flags |= FLAG_LOADING
            content = ""
        else:
            content = self._checked_content(data)
        message = await self._store_bot_message(
            interaction.channel_id,
            content,
            flags=flags,
            files=files,
            body=data,
            interaction_id=interaction.id,
        )
        interaction.original_id = message.id
        if request.query.get("with_response") not in ("1", "true", "True"):
            return None
        return {
            "interaction": {
                "id": str(interaction.id),
                "type": INTERACTION_APPLICATION_COMMAND,
                "response_message_id": str(message.id),
                "response_message_loading": kind == CALLBACK_DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(flags & FLAG_EPHEMERAL),
            },
            "resource": {"type": kind, "message": self.message_payload(message)},
        }

    async def _followup(
        self, request: web.Request, match: re.Match[str], body: Any, files: list[FilePart]
    ) -> Any:
        interaction = self._interaction_for_token(match["app"], match["token"])
        body = body or {}
        self._count_write(interaction.channel_id)
        message = await self._store_bot_message(
            interaction.channel_id,
            self._checked_content(body, files),
            flags=int(body.get("flags") or 0) & FLAG_EPHEMERAL,
            files=files,
            body=body,
            interaction_id=interaction.id,
        )
        interaction.followup_ids.append(message.id)
        if request.query.get("wait") in ("1", "true", "True"):
            return self.message_payload(message)
        return None

    async def _webhook_message(
        self, request: web.Request, match: re.Match[str], body: Any, files: list[FilePart]
    ) -> Any:
        interaction = self._interaction_for_token(match["app"], match["token"])
        if match["msg"] == "@original":
            message_id = interaction.original_id
        else:
            message_id = int(match["msg"])
            if message_id not in interaction.followup_ids:
                message_id = None
        message = self.messages.get(message_id) if message_id is not None else None
        if message is None or message.deleted:
            raise _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        return await self._message_verb(request.method, message, body or {}, files)

    # -- handlers: channels ----------------------------------------------------------------

    def _check_channel(self, channel_id: int) -> None:
        if not self.known_channel(channel_id):
            raise _error(404, UNKNOWN_CHANNEL, "Unknown Channel")

    async def _create_message(
        self, _: web.Request, match: re.Match[str], body: Any, files: list[FilePart]
    ) -> Any:
        channel_id = int(match["channel"])
        self._check_channel(channel_id)
        body = body or {}
        flags = int(body.get("flags") or 0)
        if flags & FLAG_VOICE_MESSAGE:
            self._check_voice_message(body, files)
            content = ""
        else:
            content = self._checked_content(body, files)
        reference = None
        if body.get("message_reference"):
            reference = int(body["message_reference"]["message_id"])
            target = self.messages.get(reference)
            if target is None or target.channel_id != channel_id:
                if body["message_reference"].get("fail_if_not_exists", True):
                    raise _error(400, INVALID_FORM_BODY, "Unknown message reference")
                reference = None
        self._count_write(channel_id)
        message = await self._store_bot_message(
            channel_id, content, flags=flags, files=files, body=body, reference=reference
        )
        return self.message_payload(message)

    async def _channel_message(
        self, request: web.Request, match: re.Match[str], body: Any, files: list[FilePart]
    ) -> Any:
        channel_id = int(match["channel"])
        self._check_channel(channel_id)
        message = self.messages.get(int(match["msg"]))
        if message is None or message.deleted or message.channel_id != channel_id:
            raise _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        if request.method != "GET" and not message.author.bot:
            raise _error(
                403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user"
            )
        return await self._message_verb(request.method, message, body or {}, files)

    async def _typing(self, *_: Any) -> Any:
        return None

    async def _download(self, request: web.Request) -> web.StreamResponse:
        attachment_id = int(request.match_info["id"])
        self.downloads.append(attachment_id)
        found = self.attachments.get(attachment_id)
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, content_type = found
        if attachment_id in self.endless:
            return await endless_stream(request, content_type, self.streamed, attachment_id)
        return web.Response(body=data, content_type=content_type)

    # -- message storage -------------------------------------------------------------------

    async def _message_verb(
        self, method: str, message: FakeMessage, body: dict[str, Any], files: list[FilePart]
    ) -> Any:
        if method == "GET":
            return self.message_payload(message)
        if method == "DELETE":
            message.deleted = True
            return None
        self._count_write(message.channel_id)
        if "content" in body:
            content = body["content"] or ""
            if len(content) > MAX_MESSAGE_CHARS:
                raise self._too_long()
            message.content = content
        message.flags &= ~FLAG_LOADING
        message.writes.append(message.content)
        if files:
            message.files.extend(files)
        return self.message_payload(message)

    def _too_long(self) -> _Reply:
        return _Reply(
            400,
            {
                "message": "Invalid Form Body",
                "code": INVALID_FORM_BODY,
                "errors": {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": f"Must be {MAX_MESSAGE_CHARS} or fewer in length.",
                            }
                        ]
                    }
                },
            },
        )

    def _checked_content(self, body: dict[str, Any], files: Sequence[FilePart] = ()) -> str:
        content = body.get("content") or ""
        if len(content) > MAX_MESSAGE_CHARS:
            raise self._too_long()
        if not content and not files and not body.get("embeds"):
            raise _error(400, EMPTY_MESSAGE, "Cannot send an empty message")
        return content

    def _check_voice_message(self, body: dict[str, Any], files: list[FilePart]) -> None:
        attachments = body.get("attachments") or []
        if len(files) != 1 or len(attachments) != 1:
            raise _error(
                400,
                VOICE_MESSAGE_SINGLE_AUDIO,
                "Voice messages must have a single audio attachment",
            )
        if body.get("content"):
            raise _error(400, VOICE_MESSAGE_NO_CONTENT, "Voice messages cannot have content")
        meta, upload = attachments[0], files[0]
        problems = []
        if (upload.content_type or "").split(";")[0].strip() != "audio/ogg":
            problems.append("the file part must be audio/ogg")
        duration = meta.get("duration_secs")
        if not isinstance(duration, int | float) or duration <= 0:
            problems.append("duration_secs must be a positive number")
        try:
            samples = base64.b64decode(meta.get("waveform", ""), validate=True)
        except ValueError:
            samples = b""
        if not 1 <= len(samples) <= MAX_WAVEFORM_SAMPLES:
            problems.append(f"waveform must be base64 of 1-{MAX_WAVEFORM_SAMPLES} bytes")
        if upload.data[:4] != b"OggS":
            problems.append("the upload is not an Ogg file")
        if problems:
            raise _Reply(
                400, {"message": "Invalid Form Body", "code": INVALID_FORM_BODY, "errors": problems}
            )

    async def _store_bot_message(
        self,
        channel_id: int,
        content: str,
        *,
        flags: int,
        files: list[FilePart],
        body: dict[str, Any],
        reference: int | None = None,
        interaction_id: int | None = None,
    ) -> FakeMessage:
        metas = {int(a.get("id", i)): a for i, a in enumerate(body.get("attachments") or [])}
        attachments = []
        for index, upload in enumerate(files):
            meta = metas.get(index, {})
            hosted = self.add_attachment(
                upload.data,
                upload.filename or f"file{index}",
                upload.content_type or "application/octet-stream",
            )
            for key in ("duration_secs", "waveform"):
                if key in meta:
                    hosted[key] = meta[key]
            attachments.append(hosted)
        message = FakeMessage(
            id=snowflake(),
            channel_id=channel_id,
            author=self.BOT,
            content=content,
            flags=flags,
            attachments=attachments,
            files=list(files),
            reference=reference,
            interaction_id=interaction_id,
            writes=[content],
        )
        self.messages[message.id] = message
        # Discord echoes the bot's own messages on the gateway; the bot must ignore them.
        await self.gateway.dispatch("MESSAGE_CREATE", self.message_payload(message, event=True))
        return message
