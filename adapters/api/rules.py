"""What a request must be: its body read under the cap, its JSON checked field by field.

Everything a client sends is read here without trust: a wrong shape, type or size is an
`ApiError` (400, 404 or 413) naming the field, never an exception anywhere else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.api.errors import ApiError
from adapters.api.limits import (
    DEFAULT_HISTORY,
    MAX_BODY_BYTES,
    MAX_HISTORY,
    MAX_MESSAGES,
    MAX_SESSION_CHARS,
)
from bot.messages import Msg, say
from bot.stateless import ChatMessage, ChatRole

SESSION = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_SESSION_CHARS - 1}}}$")
DEFAULT_MODEL_ID = "parley"  # the id /v1/models gives the default model
# OpenAI's newer name for a system message.
_ROLES: dict[str, ChatRole] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
_MAX_TEMPERATURE = 2.0  # OpenAI's range, and engine.temperature's


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A chat completion request, checked."""

    model: str  # as asked: `parley` or a name of llm.models
    messages: tuple[ChatMessage, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts
    temperature: float | None
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class SessionMessage:
    """A message to a session, checked."""

    content: str
    stream: bool
    include_usage: bool


async def read_body(request: web.Request) -> bytes:
    """The request's body, refused (413) past MAX_BODY_BYTES whatever Content-Length says."""
    too_large = ApiError(
        413, say(Msg.API_TOO_LARGE, limit=MAX_BODY_BYTES), code="request_too_large"
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    body = await request.content.read(MAX_BODY_BYTES + 1)
    while len(body) <= MAX_BODY_BYTES and not request.content.at_eof():
        more = await request.content.read(MAX_BODY_BYTES + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_BODY_BYTES:
        raise too_large
    return body


def read_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not one)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, say(Msg.API_BAD_JSON), code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, say(Msg.API_NOT_OBJECT), code="invalid_json")
    return data


def _bad(field: str, expected: str) -> ApiError:
    message = say(Msg.API_BAD_FIELD, field=field, expected=expected)
    return ApiError(400, message, code="invalid_value", param=field)


def _flag(data: dict[str, Any], field: str) -> bool:
    value = data.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(field, "true or false")
    return value


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad("stream_options", "an object")
    return _flag(options, "include_usage")


def _number(data: dict[str, Any], field: str, low: float, high: float) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _bad(field, f"a number from {low:g} to {high:g}")
    return float(value)


def _count(data: dict[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(field, "a whole number of at least 1")
    return value


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text of a list of text parts; None otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            text = part.get("text")
            if not isinstance(text, str):
                return None
            parts.append(text)
        return "\n".join(parts)
    return None


def _message(index: int, item: Any) -> ChatMessage:
    bad = ApiError(
        400, say(Msg.API_BAD_MESSAGE, index=index), code="invalid_value", param=f"messages[{index}]"
    )
    if not isinstance(item, dict):
        raise bad
    asked = item.get("role")
    role = _ROLES.get(asked) if isinstance(asked, str) else None
    content = item.get("content")
    # An assistant message that only called tools has no content.
    text = "" if content is None and role == "assistant" else _text(content)
    if role is None or text is None:
        raise bad
    return ChatMessage(role, text)


def completion_request(
    data: dict[str, Any], *, models: list[str], max_input_chars: int
) -> CompletionRequest:
    """A chat completion request checked against the models there are and the engine's limit
    on the question's length."""
    model = data.get("model", DEFAULT_MODEL_ID)
    if not isinstance(model, str):
        raise _bad("model", "a string")
    if model not in models:
        message = say(Msg.API_UNKNOWN_MODEL, model=model[:100])
        raise ApiError(404, message, code="model_not_found", param="model")
    items = data.get("messages")
    if not isinstance(items, list) or not items:
        raise _bad("messages", "a non-empty list of messages")
    if len(items) > MAX_MESSAGES:
        raise ApiError(
            400,
            say(Msg.API_TOO_MANY_MESSAGES, limit=MAX_MESSAGES),
            code="invalid_value",
            param="messages",
        )
    messages = tuple(_message(i, item) for i, item in enumerate(items))
    if messages[-1].role != "user":
        raise ApiError(400, say(Msg.API_LAST_NOT_USER), code="invalid_value", param="messages")
    _check_length(messages[-1].content, max_input_chars, "messages")
    n = _count(data, "n")
    if n is not None and n != 1:
        raise ApiError(400, say(Msg.API_ONE_CHOICE), code="invalid_value", param="n")
    # OpenAI's newer name first.
    newer, older = _count(data, "max_completion_tokens"), _count(data, "max_tokens")
    return CompletionRequest(
        model=model,
        messages=messages,
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data),
        temperature=_number(data, "temperature", 0.0, _MAX_TEMPERATURE),
        max_tokens=newer if newer is not None else older,
    )


def session_message(data: dict[str, Any], *, max_input_chars: int) -> SessionMessage:
    """A message to a session: its `content` (the engine's limit applies) and `stream`."""
    content = data.get("content")
    if not isinstance(content, str) or not content.strip():
        raise _bad("content", "a non-empty string")
    _check_length(content.strip(), max_input_chars, "content")
    return SessionMessage(content, _flag(data, "stream"), _include_usage(data))


def _check_length(text: str, limit: int, param: str) -> None:
    if len(text) > limit:
        raise ApiError(
            400,
            say(Msg.TOO_LONG, length=len(text), limit=limit),
            code="input_too_long",
            param=param,
        )


def check_session(session: str) -> str:
    """A session id from the path (400 unless it is one)."""
    if not SESSION.match(session):
        raise ApiError(
            400,
            say(Msg.API_BAD_SESSION, limit=MAX_SESSION_CHARS),
            code="invalid_value",
            param="session",
        )
    return session


def history_limit(query: str | None) -> int:
    """`?limit=N` of a session's GET (400 unless 1..MAX_HISTORY)."""
    if query is None:
        return DEFAULT_HISTORY
    digits = len(str(MAX_HISTORY))
    if len(query) > digits or not query.isascii() or not query.isdigit():
        query = "0"  # refused below (and never a huge number to convert)
    if not 1 <= int(query) <= MAX_HISTORY:
        raise ApiError(
            400, say(Msg.API_BAD_LIMIT, limit=MAX_HISTORY), code="invalid_value", param="limit"
        )
    return int(query)
