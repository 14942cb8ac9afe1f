"""`MqttReplyTarget`: the engine's answer to one MQTT request, as a stream of JSON events.

Events, in order: `delta` (the text added since the last one; the reply streamer coalesces it
under the session's budget, adapters/mqtt/limits.py), `queued`, `notice`, `voice`, `file`, and
one final event: `done` with the whole reply and its status, or `error` with why there is none.
A reply's note ("the reply was cut off...") is a notice before `done`, not part of its text.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from bot.delivery.deltas import DeltaText
from bot.languages import ENGLISH
from bot.messages import Msg, say
from bot.types import OutgoingFile, TargetLimits, VoiceClip

# Publishes one event (a JSON object) where the request's answers go.
EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class MqttReplyTarget(DeltaText):
    """Implements `bot.types.ReplyTarget` and `ReplyOutcomeTarget` for one request."""

    def __init__(self, emit: EventSink, *, session: str, limits: TargetLimits) -> None:
        super().__init__(self._emit_delta)
        self._emit = emit
        self._session = session
        self._limits = limits
        # The latest notice, held back: if the turn ends without a reply, it is the error.
        self._held: str | None = None

    @property
    def chat_key(self) -> str:
        """Replies of one session share its event budget."""
        return f"mqtt:{self._session}"

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    async def _emit_delta(self, text: str) -> None:
        await self._emit({"type": "delta", "text": text})

    # -- ReplyTarget: everything else a turn says ------------------------------------------

    async def typing(self) -> None:
        return None  # the first delta (or `queued`) is the sign of life

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        await self._emit({"type": "queued", "position": position})

    async def notice(self, text: str) -> None:
        held, self._held = self._held, text
        if held is not None:
            await self._emit({"type": "notice", "text": held})

    async def send_voice(self, clip: VoiceClip) -> None:
        await self._emit(
            {
                "type": "voice",
                "mime": "audio/ogg",
                "duration_s": round(clip.duration_s, 2),
                "text": clip.text,
                "data": base64.b64encode(clip.ogg_opus).decode("ascii"),
            }
        )

    async def send_file(self, file: OutgoingFile) -> None:
        await self._emit(
            {
                "type": "file",
                "name": file.name,
                "mime": file.mime,
                "caption": file.caption,
                "data": base64.b64encode(file.data).decode("ascii"),
            }
        )

    # -- the final event -------------------------------------------------------------------

    async def conclude(self) -> None:
        """The turn is over: `done` with the reply, or `error` with the reason there is none.

        Nothing is sent for a message the engine ignored without a word (a blocked user).
        """
        outcome = self.outcome
        if outcome is not None and outcome.status != "failed":
            if outcome.note:
                await self.notice(outcome.note)
            await self.done(outcome.answer, outcome.status)
            return
        message = self._held or (outcome.note if outcome is not None else None)
        if outcome is not None and not message:
            message = say(Msg.MQTT_NO_REPLY)
        if message:
            self._held = None
            await self.error(message)

    async def done(self, text: str, status: str = "complete") -> None:
        """The final event of an answered request (a reply, or a command's answer)."""
        await self._flush()
        await self._emit({"type": "done", "text": text, "status": status})

    async def error(self, message: str) -> None:
        """The final event of a request that cannot be read or answered."""
        await self._flush()
        await self._emit({"type": "error", "message": message})

    async def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._emit({"type": "notice", "text": held})
