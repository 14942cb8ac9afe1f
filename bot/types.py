"""Plain, typed values that cross the line between the engine and the platform adapters.

The engine never imports a platform library: an adapter turns its platform's update into an
`IncomingMessage` and implements `ReplyTarget` so the engine can answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.speech.voice_reply import SpokenSentence


@dataclass(frozen=True, slots=True)
class ImageInput:
    """A picture the user sent, as downloaded, for a model that takes images."""

    data: bytes
    mime: str  # image/jpeg, image/png, image/webp or image/gif


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One normalised user message, text or voice, from any platform."""

    platform: str  # "telegram" | "discord" | "console"
    channel_key: str  # the conversation: a chat, channel, thread or DM id (string form)
    user_id: str
    user_name: str
    text: str = ""
    is_admin: bool = False  # the adapter decides, from its own config and platform permissions
    audio: bytes | None = None  # a voice note or audio attachment, raw bytes as downloaded
    audio_mime: str | None = None
    reply_to: str | None = None  # platform id of the message this one answers, if any
    message_id: str | None = None  # platform id of this message
    is_private: bool = False  # a DM / private chat
    wants_voice: bool = False  # the user asked for a spoken reply (Discord: /ask voice:true)
    private_reply: bool = False  # a command's answer is seen by the caller alone (Discord)
    images: tuple[ImageInput, ...] = ()  # pictures, when the chat's model takes them


@dataclass(frozen=True, slots=True)
class VoiceClip:
    """Synthesised speech ready to upload: OGG/Opus 48 kHz mono."""

    ogg_opus: bytes
    duration_s: float
    waveform: bytes  # up to 256 amplitude samples, 0..255 each (Discord voice messages)
    text: str  # what is spoken, for captions


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """A file the bot sends into a chat (e.g. a conversation export)."""

    name: str  # file name shown to the user, e.g. "parley-main.md"
    data: bytes
    mime: str  # e.g. "text/markdown"
    caption: str = ""


@dataclass(frozen=True, slots=True)
class RateBudget:
    """A token bucket: `rate` calls per second sustained, bursts of up to `burst` calls."""

    rate: float
    burst: float


@dataclass(frozen=True, slots=True)
class TargetLimits:
    """What one chat/channel of a platform tolerates; the reply streamer keeps under it."""

    max_chars: int  # longest message the platform accepts
    chat: RateBudget  # shared by every reply in the same chat/channel (bucket key: chat_key)
    platform: RateBudget  # shared by every reply of the bot on this platform
    platform_key: str  # bucket key of `platform`, e.g. "telegram"
    min_edit_interval_s: float = 0.0  # floor between two edits of the same message


class TextTarget(Protocol):
    """Where a reply's text goes. Adapters implement it; `bot.delivery` drives it.

    Methods raise `bot.errors.RetryAfter` on a platform 429 and `bot.errors.DeliveryError` on a
    permanent failure. "Message is not modified" is not an error: the adapter swallows it.
    """

    @property
    def chat_key(self) -> str:
        """The bucket key: replies with the same key share the chat's edit budget."""
        ...

    @property
    def limits(self) -> TargetLimits: ...

    async def send(self, text: str) -> str:
        """Post a new message; returns its platform id."""
        ...

    async def edit(self, message_id: str, text: str) -> None: ...

    async def finalize(self, message_id: str, text: str) -> str:
        """The last write of one message part, called once per part with its final text.

        Edit-based targets edit; draft-based targets (Telegram sendMessageDraft) post the real
        message. Returns the id of the message that now holds the final text.
        """
        ...

    async def delete(self, message_id: str) -> None: ...


class ReplyTarget(TextTarget, Protocol):
    """Everything the engine needs to answer one incoming message on a platform."""

    async def typing(self) -> None:
        """Show that the bot is working (typing indicator); safe to call repeatedly."""
        ...

    async def queued(self, position: int) -> None:
        """Tell the user they wait behind `position - 1` other replies ("you are #3 in line")."""
        ...

    async def notice(self, text: str) -> None:
        """A short separate message: errors, refusals, a voice note's transcript."""
        ...

    async def send_voice(self, clip: VoiceClip) -> None:
        """Upload synthesised speech as a voice message (with a plain-audio fallback)."""
        ...

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload a file into the chat (a document on Telegram, an attachment on Discord)."""
        ...


@runtime_checkable
class LiveSpeechTarget(Protocol):
    """A reply target that speaks the answer live as it streams (a Discord voice channel).

    The engine hands it the reply's sentences as they are synthesised, whatever the chat's
    voice mode, instead of uploading a voice note at the end.
    """

    def speak_live(self, sentences: AsyncGenerator[SpokenSentence, None]) -> None:
        """Start saying `sentences` (in a task of its own); never blocks the reply's text.

        A generator, so that a target that stops listening can close it: that stops the
        synthesis of what is still to come.
        """
        ...
