"""Topics and payloads: which topic a request came on, what it asks, and where its answer goes.

Everything a device sends is checked here before it reaches the engine: a payload that cannot be
read raises `Unreadable` with the message its error event carries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from adapters.mqtt.limits import (
    MAX_PAYLOAD_BYTES,
    MAX_SESSION_CHARS,
    MAX_TOPIC_BYTES,
    MAX_USER_CHARS,
)
from bot.messages import Msg, say

# Several Parley processes subscribe in this group: the broker hands each request to one of them.
SHARE_GROUP = "parley"
ONLINE = b"online"
OFFLINE = b"offline"
# A session id is one safe topic level: no wildcard, no separator, nothing a shell or a file name
# would trip on.
_SESSION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_SESSION_CHARS - 1}}}")


class Unreadable(ValueError):
    """A request that cannot be answered as sent; the message says why, for its error event."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Parley's topics under `mqtt.topic_prefix`."""

    prefix: str

    @property
    def requests(self) -> str:
        """The shared subscription every process makes: each request reaches one of them."""
        return f"$share/{SHARE_GROUP}/{self.prefix}/+/in"

    @property
    def status(self) -> str:
        """Retained `online` / `offline`."""
        return f"{self.prefix}/status"

    def replies(self, session: str) -> str:
        """Where a session's events go when its request names no Response Topic."""
        return f"{self.prefix}/{session}/out"

    def session_of(self, topic: str) -> str | None:
        """The session level of a request topic `{prefix}/{session}/in` (unchecked), else None."""
        head, _, rest = topic.partition(f"{self.prefix}/")
        if head or not rest.endswith("/in"):
            return None
        session = rest.removesuffix("/in")
        return None if "/" in session else session

    def answerable(self, topic: str) -> bool:
        """Whether events may be published on `topic` (a request's Response Topic).

        Not a topic Parley reads itself: an answer published on a request topic would be read as
        the next request, and so on for ever.
        """
        if not topic or len(topic.encode()) > MAX_TOPIC_BYTES or topic.startswith("$"):
            return False
        if any(c in topic for c in "+#\0"):
            return False
        return topic != self.status and self.session_of(topic) is None


@dataclass(frozen=True, slots=True)
class Request:
    """What a device asked: its text and, when it said so, who is asking."""

    text: str
    user: str | None = None


def check_session(session: str) -> str:
    """`session` if it is a safe session id, else `Unreadable`."""
    if not _SESSION.fullmatch(session):
        raise Unreadable(say(Msg.MQTT_BAD_SESSION, limit=MAX_SESSION_CHARS))
    return session


def read_request(payload: bytes) -> Request:
    """A request from its payload: UTF-8 text, or a JSON object {"text": ..., "user": ...}."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Unreadable(say(Msg.MQTT_TOO_LARGE, size=len(payload), limit=MAX_PAYLOAD_BYTES))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable(say(Msg.MQTT_NOT_UTF8)) from None
    if text.lstrip().startswith("{"):
        request = _json_request(text)
    elif not text.strip():
        raise Unreadable(say(Msg.MQTT_EMPTY))
    else:
        request = Request(text.strip())
    for value in (request.text, request.user or ""):
        _check_text(value)
    return request


def _check_text(value: str) -> None:
    # JSON can spell what UTF-8 cannot carry (a lone surrogate, "\ud800"), and PostgreSQL
    # stores no NUL character: neither would survive the way to the store and back.
    if "\0" in value:
        raise Unreadable(say(Msg.MQTT_NOT_UTF8))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unreadable(say(Msg.MQTT_NOT_UTF8)) from None


def _json_request(text: str) -> Request:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise Unreadable(say(Msg.MQTT_BAD_JSON)) from None
    if not isinstance(data, dict):
        raise Unreadable(say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS))
    message, user = data.get("text"), data.get("user")
    if not isinstance(message, str) or not message.strip():
        raise Unreadable(say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS))
    if user is not None and not (isinstance(user, str) and 0 < len(user.strip()) <= MAX_USER_CHARS):
        raise Unreadable(say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS))
    return Request(message.strip(), user.strip() if user is not None else None)
