"""The HTTP API under /v1/ on the [http] endpoint: OpenAI's chat completions and model list,
and conversations Parley keeps (sessions).

Every request passes one guard: served at all, the address not throttled for wrong keys, a valid
key (`Authorization: Bearer KEY`), the key not blocked and under `api.requests_per_minute`. A
chat completion is answered by `engine.complete` (stateless: nothing stored); a session message
is a turn of the chat `{key name}:{session}` of platform `api`, by `engine.handle`, so history,
memory, persona, settings and commands work as in any chat. Both go through the one queue of
LLM slots, the reply caps and the answer cache.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.api.commands import PLATFORM
from adapters.api.config import ApiSettings
from adapters.api.errors import ApiError
from adapters.api.keys import KeyRing
from adapters.api.rules import (
    DEFAULT_MODEL_ID,
    CompletionRequest,
    SessionMessage,
    check_session,
    completion_request,
    history_limit,
    read_body,
    read_json,
    session_message,
)
from adapters.api.targets import ApiReplyTarget, EventStream
from adapters.api.wire import Answer, FinishReason, models_list, usage_of
from bot.admin.sessions import SIGN_IN_THROTTLE
from bot.command_table import parse_call
from bot.errors import MessageNotStored
from bot.messages import Msg, phrase, say
from bot.models import DEFAULT_MODEL
from bot.platform import STOP_GRACE_S
from bot.ratelimit import UserRateLimiter
from bot.stateless import StatelessChat
from bot.types import Delivery, IncomingMessage, OutgoingFile

if TYPE_CHECKING:
    from bot.platform import Services

log = logging.getLogger(__name__)

PREFIX = "/v1"
_KEY_NAME = web.RequestKey("parley_api_key", str)  # the name of the key a request came with
_EVENTS = web.RequestKey("parley_api_events", EventStream)  # a streamed answer's events
_BEARER = "bearer "
# A session turn's client sends it again after a 503; nothing waits while it cannot be stored.
_ANSWER_OR_FAIL = Delivery(wait=False)
WRONG_KEY_SCOPE = "api.wrong_key"  # the store throttle's scope: wrong keys per address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiAdapter:
    """Serves /v1/ while started; `await start()` ... `await stop()`."""

    def __init__(self, services: Services, *, stop_grace_s: float = STOP_GRACE_S) -> None:
        settings = services.settings
        self._api = ApiSettings.of(settings)
        self._engine = services.engine
        self._commands = services.commands
        self._store = services.engine.store
        self._max_input_chars = settings.engine.max_input_chars
        self._keys = KeyRing(self._api.keys, self._store)
        # Addresses whose wrong keys locked them (until when, time.time()): known without a read
        # of the store on every request. The counting itself is the store's, shared by processes.
        self._locked: dict[str, float] = {}
        self._rate = UserRateLimiter(self._api.requests_per_minute)
        self._blocked = frozenset(settings.engine.blocked_users)
        self._stop_grace_s = stop_grace_s
        self._serving = False
        self._requests: set[asyncio.Task[Any]] = set()
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/models", self._models)
        app.router.add_post("/chat/completions", self._chat_completions)
        app.router.add_post("/sessions/{session}/messages", self._post_message)
        app.router.add_get("/sessions/{session}/messages", self._get_messages)
        app.router.add_delete("/sessions/{session}", self._delete_session)
        services.http.mount(PREFIX, app)

    @property
    def connected(self) -> bool:
        """True while requests are answered; for /healthz."""
        return self._serving

    async def start(self) -> None:
        """Answer requests from now on (the endpoint already listens)."""
        self._serving = True
        log.info("HTTP API: serving %s/ (%d keys configured)", PREFIX, len(self._api.keys))

    async def stop(self) -> None:
        """Take no more requests; let those in progress finish (bounded), then cancel them."""
        self._serving = False
        running = {task for task in self._requests if task is not asyncio.current_task()}
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self._stop_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- the guard -------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request's checks, and its error boundary: nothing a client sends escapes."""
        task = asyncio.current_task()
        assert task is not None
        self._requests.add(task)
        try:
            request[_KEY_NAME] = await self._admit(request)
            return await handler(request)
        except ApiError as exc:
            return await _refused(request, exc)
        except web.HTTPException as exc:  # the router's: no such path, or not this method
            path = request.path[:200]
            message = say(Msg.API_NOT_FOUND, method=request.method, path=path)
            return ApiError(exc.status, message, code="not_found").response()
        # The request's error boundary: log it, answer 500, keep serving.
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("HTTP API: request %s (%s %s) failed", ref, request.method, request.path)
            return await _refused(request, _internal(ref))
        finally:
            self._requests.discard(task)

    async def _admit(self, request: web.Request) -> str:
        """The name of the request's key, once every check passed (else ApiError)."""
        if not self._serving:
            raise ApiError(503, say(Msg.API_STOPPING), kind="server_error", code="unavailable")
        address = request.remote or "unknown"
        wait = self._locked.get(address, 0.0) - time.time()
        if wait > 0:
            raise _throttled(wait)
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
            raise ApiError(401, say(Msg.API_NO_KEY), code="invalid_api_key")
        name = await self._keys.owner(header[len(_BEARER) :].strip())
        if name is None:
            # A key is checked in constant time and costs nothing to try, so a wrong one is
            # counted after its check; the count is atomic in the store, so wrong keys sent at
            # once from one address get at most the sign-in's free tries (every process alike).
            wait = await self._store.throttle_attempt(WRONG_KEY_SCOPE, address, SIGN_IN_THROTTLE)
            log.warning("HTTP API: a wrong key from %s", address)
            if wait:
                now = time.time()
                self._locked = {a: t for a, t in self._locked.items() if t > now}
                self._locked[address] = now + wait
                raise _throttled(wait)
            raise ApiError(401, say(Msg.API_BAD_KEY), code="invalid_api_key")
        if f"{PLATFORM}:{name}" in self._blocked:
            raise ApiError(403, say(Msg.API_BLOCKED), code="blocked")
        if not self._rate.allow(name):
            wait_s = self._rate.retry_after(name)
            raise ApiError(
                429,
                say(
                    Msg.API_SLOW_DOWN,
                    limit=self._api.requests_per_minute,
                    wait=phrase(Msg.SECONDS, count=max(1, math.ceil(wait_s))),
                ),
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=wait_s,
            )
        return name

    # -- OpenAI's endpoints ----------------------------------------------------------------

    def _model_ids(self) -> list[str]:
        return [DEFAULT_MODEL_ID, *(n for n in self._engine.models.names if n != DEFAULT_MODEL)]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(models_list(self._model_ids()))

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        name = request[_KEY_NAME]
        asked = completion_request(
            read_json(await read_body(request)),
            models=self._model_ids(),
            max_input_chars=self._max_input_chars,
        )
        chat = StatelessChat(
            PLATFORM,
            name,
            asked.messages,
            model="" if asked.model == DEFAULT_MODEL_ID else asked.model,
            temperature=asked.temperature,
            max_tokens=asked.max_tokens,
        )
        answer = Answer(asked.model)
        target = ApiReplyTarget(f"{name}:{answer.id}", self._events(request, answer, asked))
        state = await self._engine.complete(chat, target)
        sent = state.request.prompt or "".join(str(m["content"]) for m in state.request.messages)
        usage = usage_of(state.usage, sent, state.answer)
        return await self._respond(target, answer, usage)

    # -- sessions --------------------------------------------------------------------------

    def _incoming(self, request: web.Request, text: str = "") -> IncomingMessage:
        name = request[_KEY_NAME]
        session = check_session(request.match_info["session"])
        return IncomingMessage(
            platform=PLATFORM,
            channel_key=f"{name}:{session}",  # a key never reaches another key's sessions
            user_id=name,
            user_name=name,
            text=text,
            is_private=True,  # the key's owner owns the session
        )

    async def _post_message(self, request: web.Request) -> web.StreamResponse:
        incoming = self._incoming(request)
        asked = session_message(
            read_json(await read_body(request)), max_input_chars=self._max_input_chars
        )
        incoming = dataclasses.replace(incoming, text=asked.content.strip())
        answer = Answer(DEFAULT_MODEL_ID)
        target = ApiReplyTarget(
            f"{incoming.user_id}:{answer.id}", self._events(request, answer, asked)
        )
        call = parse_call(incoming.text, self._commands.table(PLATFORM))
        if call is not None and call.command.turn:  # /ask: its text is the message
            if not call.args:
                raise ApiError(
                    400,
                    say(Msg.API_BAD_FIELD, field="content", expected="a message after /ask"),
                    code="invalid_value",
                    param="content",
                )
            incoming, call = dataclasses.replace(incoming, text=call.args), None
        if call is not None:
            reply = await self._commands.execute(incoming, call.command.name, call.args)
            target.files.extend(reply.files)
            await target.send(reply.text)  # a delta when streamed
            target.reply_ended(reply.text, "complete", "")
            return await self._respond(target, answer, None)
        wait = self._engine.rate.retry_after(incoming.user_ref)
        if wait > 0:
            raise _slow_down(wait, self._engine.rate.per_minute)
        try:
            # Its client waits on the request: a store that fails is a 503 to try again, not a hold.
            await self._engine.handle(incoming, target, _ANSWER_OR_FAIL)
        except MessageNotStored as exc:
            raise ApiError(503, exc.user_message, kind="server_error", code="not_stored") from None
        return await self._respond(target, answer, None, user_ref=incoming.user_ref)

    async def _get_messages(self, request: web.Request) -> web.StreamResponse:
        incoming = self._incoming(request)
        limit = history_limit(request.query.get("limit"))
        channel = await self._store.find_channel(PLATFORM, incoming.channel_key)
        rows = [] if channel is None else await self._store.conversation(channel, limit)
        return web.json_response(
            {
                "session": request.match_info["session"],
                "messages": [
                    {"role": row.role, "content": row.content, "created_at": int(row.created_at)}
                    for row in rows
                ],
            }
        )

    async def _delete_session(self, request: web.Request) -> web.StreamResponse:
        incoming = self._incoming(request)
        channel = await self._store.find_channel(PLATFORM, incoming.channel_key)
        if channel is not None:
            deleted = await self._store.delete_chat(
                channel, actor_id=incoming.user_id, actor_name=incoming.user_name
            )
            log.info("HTTP API: %s deleted a session (%d messages)", incoming.user_id, deleted)
        return web.Response(status=204)

    # -- answers ---------------------------------------------------------------------------

    @staticmethod
    def _events(
        request: web.Request, answer: Answer, asked: CompletionRequest | SessionMessage
    ) -> EventStream | None:
        """The answer's event stream when the request asked for one (else None)."""
        if not asked.stream:
            return None
        events = EventStream(request, answer, include_usage=asked.include_usage)
        request[_EVENTS] = events  # a failure once it has begun is its last event
        return events

    async def _respond(
        self,
        target: ApiReplyTarget,
        answer: Answer,
        usage: dict[str, int] | None,
        *,
        user_ref: str | None = None,
    ) -> web.StreamResponse:
        """The reply as the request asked for it, or why there is none."""
        outcome = target.outcome
        if outcome is None or outcome.status == "failed":
            raise self._failure(target, user_ref)
        finish: FinishReason = "stop" if outcome.status == "complete" else "length"  # partial: cut
        events = target.events
        if events is not None:
            await events.end(finish, usage)
            assert events.response is not None  # the last chunk began it, if nothing did
            return events.response
        body = answer.completion(outcome.answer, finish, usage)
        if target.files:
            body["files"] = [_file(file) for file in target.files]
        return web.json_response(body)

    def _failure(self, target: ApiReplyTarget, user_ref: str | None) -> ApiError:
        """Why a request has no reply, as the error the client gets."""
        outcome = target.outcome
        if outcome is not None:  # the model failed to answer
            message = outcome.note or say(Msg.API_NO_REPLY)
            return ApiError(502, message, kind="server_error", code="reply_failed")
        said = target.notices[-1] if target.notices else say(Msg.API_NO_REPLY)
        if user_ref is not None and (wait := self._engine.rate.retry_after(user_ref)) > 0:
            return ApiError(
                429, said, kind="rate_limit_error", code="rate_limit_exceeded", retry_after_s=wait
            )
        return ApiError(500, said, kind="server_error", code="no_reply")


async def _refused(request: web.Request, error: ApiError) -> web.StreamResponse:
    """`error` as the response, or as the last event of a streamed answer already begun."""
    events = request.get(_EVENTS)
    if events is None or events.response is None:
        return error.response()
    await events.fail(error.body)
    return events.response


def _internal(ref: str) -> ApiError:
    return ApiError(500, say(Msg.API_INTERNAL, ref=ref), kind="server_error", code="internal_error")


def _slow_down(wait_s: float, per_minute: int) -> ApiError:
    return ApiError(
        429,
        say(Msg.SLOW_DOWN, limit=per_minute),
        kind="rate_limit_error",
        code="rate_limit_exceeded",
        retry_after_s=wait_s,
    )


def _file(file: OutgoingFile) -> dict[str, str]:
    return {
        "name": file.name,
        "mime": file.mime,
        "caption": file.caption,
        "data": base64.b64encode(file.data).decode("ascii"),
    }


def _throttled(wait_s: float) -> ApiError:
    """Too many wrong keys from one address: 429 until its wait is over."""
    return ApiError(
        429,
        say(Msg.API_KEY_THROTTLED, wait=phrase(Msg.SECONDS, count=max(1, math.ceil(wait_s)))),
        kind="rate_limit_error",
        code="too_many_wrong_keys",
        retry_after_s=wait_s,
    )
