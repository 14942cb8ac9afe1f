"""The "Try it" page as a platform of its own ("web"): a `ReplyTarget` that feeds a page's stream.

The engine answers a web message like any other, through `handle(msg, target)`; every call it
makes on the target becomes an event the page receives as server-sent events and draws at once.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from bot.languages import ENGLISH
from bot.types import IncomingMessage, OutgoingFile, RateBudget, TargetLimits, VoiceClip

WEB_PLATFORM = "web"
WEB_CHANNEL = "admin"  # one conversation for the console, shared by its users
WEB_USER_ID = "admin"
# The page draws whatever it gets; the budget only keeps a fast model from sending an event per
# token: at most ~20 updates a second, each carrying all the text that arrived meanwhile.
WEB_MAX_CHARS = 16_000
WEB_LIMITS = TargetLimits(
    max_chars=WEB_MAX_CHARS,
    chat=RateBudget(rate=20.0, burst=4.0),
    platform=RateBudget(rate=200.0, burst=50.0),
    platform_key=WEB_PLATFORM,
)


def web_message(text: str, *, actor_name: str) -> IncomingMessage:
    """A message typed on the Try-it page: an admin in a private chat with the bot."""
    return IncomingMessage(
        platform=WEB_PLATFORM,
        channel_key=WEB_CHANNEL,
        user_id=WEB_USER_ID,
        user_name=actor_name,
        text=text,
        is_admin=True,
        is_private=True,
    )


@dataclass(frozen=True, slots=True)
class WebEvent:
    """One server-sent event: its name and JSON data."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {self.name}\ndata: {payload}\n\n".encode()


class WebReplyTarget:
    """Implements `bot.types.ReplyTarget` for one message typed on the Try-it page."""

    def __init__(self, chat_key: str = f"{WEB_PLATFORM}:{WEB_CHANNEL}") -> None:
        self._chat_key = chat_key
        self.events: asyncio.Queue[WebEvent] = asyncio.Queue()
        self._ids = itertools.count(1)

    @property
    def chat_key(self) -> str:
        return self._chat_key

    @property
    def limits(self) -> TargetLimits:
        return WEB_LIMITS

    def _put(self, name: str, **data: Any) -> None:
        self.events.put_nowait(WebEvent(name, data))

    async def send(self, text: str) -> str:
        message_id = f"w{next(self._ids)}"
        self._put("message", id=message_id, text=text)
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        self._put("edit", id=message_id, text=text)

    async def finalize(self, message_id: str, text: str) -> str:
        self._put("final", id=message_id, text=text)
        return message_id

    async def delete(self, message_id: str) -> None:
        self._put("delete", id=message_id)

    async def typing(self) -> None:
        self._put("typing")

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        self._put("queued", position=position)

    async def notice(self, text: str) -> None:
        self._put("notice", text=text)

    async def send_voice(self, clip: VoiceClip) -> None:
        audio = base64.b64encode(clip.ogg_opus).decode("ascii")
        self._put("voice", audio=audio, duration_s=round(clip.duration_s, 2), text=clip.text)

    async def send_file(self, file: OutgoingFile) -> None:
        data = base64.b64encode(file.data).decode("ascii")
        self._put("file", filename=file.name, mime=file.mime, data=data, caption=file.caption)

    def close(self) -> None:
        """The turn is over: the page's stream ends after this event."""
        self._put("done")
