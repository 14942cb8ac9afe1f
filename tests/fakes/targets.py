"""A recording ReplyTarget: what a platform would have shown, for engine-level tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.languages import ENGLISH
from bot.types import OutgoingFile, RateBudget, ReplyTarget, TargetLimits, VoiceClip

FAST_LIMITS = TargetLimits(
    max_chars=2000,
    chat=RateBudget(rate=1000.0, burst=1000.0),
    platform=RateBudget(rate=1000.0, burst=1000.0),
    platform_key="test",
)


@dataclass
class RecordingTarget:
    """Keeps every message's current text, the notices, queue positions and voice clips."""

    key: str = "test:chat"
    target_limits: TargetLimits = FAST_LIMITS
    messages: dict[str, str] = field(default_factory=dict)
    finals: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    position_languages: list[str] = field(default_factory=list)  # what each was said in
    voices: list[VoiceClip] = field(default_factory=list)
    files: list[OutgoingFile] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    typing_calls: int = 0
    first_text: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def chat_key(self) -> str:
        return self.key

    @property
    def limits(self) -> TargetLimits:
        return self.target_limits

    @property
    def text(self) -> str:
        """The reply as the user finally sees it, all parts joined."""
        return "".join(self.finals.values())

    async def send(self, text: str) -> str:
        message_id = str(len(self.messages) + 1)
        self.messages[message_id] = text
        self.calls.append("send")
        self.first_text.set()
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        self.messages[message_id] = text
        self.calls.append("edit")

    async def finalize(self, message_id: str, text: str) -> str:
        self.messages[message_id] = text
        self.finals[message_id] = text
        self.calls.append("finalize")
        return message_id

    async def delete(self, message_id: str) -> None:
        self.messages.pop(message_id, None)
        self.calls.append("delete")

    async def typing(self) -> None:
        self.typing_calls += 1

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        self.positions.append(position)
        self.position_languages.append(lang)

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def send_voice(self, clip: VoiceClip) -> None:
        self.voices.append(clip)

    async def send_file(self, file: OutgoingFile) -> None:
        self.files.append(file)


# The engine takes any ReplyTarget: mypy fails here, not in a test, if this fake drifts from it.
_IS_A_REPLY_TARGET: type[ReplyTarget] = RecordingTarget
