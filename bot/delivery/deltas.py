"""A reply read as appended text: for clients that receive each new piece of a reply (an HTTP
event stream, MQTT events) rather than one message edited in place."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.delivery.stream import DEFAULT_MARKER
from bot.storage import Status


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the engine says a reply ended (`ReplyOutcomeTarget.reply_ended`)."""

    answer: str
    status: Status
    note: str


class DeltaText:
    """The text half of a reply target whose client reads deltas: each write of a reply part
    becomes the text added since the part's last write.

    The reply streamer only appends to a part (a marker at the end aside), so a write that does
    not extend what was sent is no delta: the outcome carries the whole reply. Neither is the note
    the engine shows after a reply ("the reply was cut off..."): the outcome carries it apart.
    """

    def __init__(self, delta: Callable[[str], Awaitable[None]]) -> None:
        self._delta_out = delta
        self._ids = itertools.count(1)
        self._sent: dict[str, str] = {}  # the text each reply part has sent as deltas
        self.outcome: Outcome | None = None

    async def send(self, text: str) -> str:
        message_id = str(next(self._ids))
        self._sent[message_id] = ""
        await self._delta(message_id, text)
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        await self._delta(message_id, text)

    async def finalize(self, message_id: str, text: str) -> str:
        if self.outcome is not None and self.outcome.note:
            text = text.removesuffix(f"\n\n{self.outcome.note}")
        await self._delta(message_id, text)
        return message_id

    async def delete(self, message_id: str) -> None:
        self._sent.pop(message_id, None)

    def reply_ended(self, answer: str, status: Status, note: str) -> None:
        """The reply is over (the engine says so before its final text is shown)."""
        self.outcome = Outcome(answer, status, note)

    async def _delta(self, message_id: str, text: str) -> None:
        text = text.removesuffix(DEFAULT_MARKER)
        sent = self._sent.get(message_id, "")
        if len(text) <= len(sent) or not text.startswith(sent):
            return
        await self._delta_out(text[len(sent) :])
        self._sent[message_id] = text
