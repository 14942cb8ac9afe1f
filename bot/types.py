"""Plain, typed values that cross the line between the engine and the platform adapters.

The engine never imports a platform library: an adapter turns its platform's update into an
`IncomingMessage` and implements `ReplyTarget` so the engine can answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from bot.errors import AttachmentTooLarge, AttachmentUnavailable
from bot.languages import ENGLISH
from bot.storage.base import Status, Turn

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ImageInput:
    """A picture the user sent, as downloaded, for a model that takes images."""

    data: bytes
    mime: str  # image/jpeg, image/png, image/webp or image/gif


# What an attachment is, as far as Parley is concerned: a picture (a format a model with eyes
# takes), audio and video (their sound is transcribed), and what it cannot open yet.
AttachmentKind = Literal[
    "picture",  # JPEG, PNG, WebP or GIF: for a model that takes images
    "audio",  # a voice note or an audio file
    "video",  # a video or video note
    "image",  # a picture in another format
    "document",  # any other file
    "sticker",
    "animation",  # a GIF as Telegram sends it
    "location",
    "place",
    "poll",
    "contact",
    "dice",
    "game",
    "story",
    "paid_media",
    "checklist",
]
# Picture formats the chat API's image parts take (OpenAI's list; llama.cpp decodes them too).
PICTURE_MIMES = ("image/jpeg", "image/png", "image/webp", "image/gif")
# Reads an attachment's content, stopping past `limit` bytes (AttachmentTooLarge) however many
# the platform claimed; AttachmentUnavailable when the platform does not deliver it.
Reader = Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Attachment:
    """Something a message carries besides its text, as the platform describes it."""

    kind: AttachmentKind
    size: int = 0  # in bytes, as the platform claims it (0: not told)
    mime: str = ""  # e.g. "image/png", "audio/ogg" ("" when not told)
    name: str = ""  # its file name, if it has one
    max_bytes: int | None = None  # the most the platform delivers (Telegram: 20 MB)
    reader: Reader | None = field(default=None, repr=False, compare=False)  # None: no content

    def check(self, limit: int) -> int:
        """The limit that applies (the platform's own may be lower); AttachmentTooLarge when
        the attachment claims more."""
        if self.max_bytes is not None:
            limit = min(limit, self.max_bytes)
        if self.size > limit:
            raise AttachmentTooLarge(limit, size=self.size)
        return limit

    async def read(self, limit: int) -> bytes:
        """Its content, never more than `limit` bytes.

        Raises AttachmentTooLarge when it claims more or turns out to be more (the reader stops
        at the limit), AttachmentUnavailable when there is nothing to read or it cannot be had.
        """
        limit = self.check(limit)
        if self.reader is None:
            raise AttachmentUnavailable(f"a {self.kind} has no content to read")
        data = await self.reader(limit)
        if len(data) > limit:  # a reader that does not stop: still never passed on
            raise AttachmentTooLarge(limit)
        return data

    @classmethod
    def of_bytes(cls, kind: AttachmentKind, data: bytes, mime: str = "") -> Attachment:
        """An attachment already in memory (a file given on the command line, a test's)."""

        async def reader(limit: int) -> bytes:
            return data

        return cls(kind, size=len(data), mime=mime, reader=reader)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One normalised user message, text or voice, from any platform."""

    platform: str  # "telegram" | "discord" | "console"
    channel_key: str  # the conversation: a chat, channel, thread or DM id (string form)
    user_id: str
    user_name: str
    text: str = ""
    is_admin: bool = False  # the adapter decides, from its own config and platform permissions
    reply_to: str | None = None  # platform id of the message this one answers, if any
    message_id: str | None = None  # platform id of this message
    is_private: bool = False  # a DM / private chat
    wants_voice: bool = False  # the user asked for a spoken reply (Discord: /ask voice:true)
    private_reply: bool = False  # a command's answer is seen by the caller alone (Discord)
    attachments: tuple[Attachment, ...] = ()  # pictures, recordings, files, stickers...
    # The sender's language as the platform tells it (Telegram's language_code, Discord's
    # locale, the console's LANG; "" when unknown): Parley speaks it unless the chat says
    # otherwise (bot/languages.py).
    language: str = ""

    @property
    def user_ref(self) -> str:
        """The sender across platforms, e.g. "telegram:42" (as `engine.blocked_users` has it)."""
        return f"{self.platform}:{self.user_id}"

    @property
    def chat_ref(self) -> str:
        """The conversation across platforms, e.g. "discord:1234"."""
        return f"{self.platform}:{self.channel_key}"

    @property
    def recording(self) -> Attachment | None:
        """The voice note, audio or video whose sound is transcribed (the first one)."""
        return next((a for a in self.attachments if a.kind in ("audio", "video")), None)

    @property
    def handled_key(self) -> str | None:
        """What a redelivery of this message has in common with it (its conversation and its
        platform id), so it is answered once; None when the platform gives no id."""
        return None if self.message_id is None else f"{self.channel_key}/{self.message_id}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a platform hands over one message, and what it wants to hear back.

    A platform that delivers an update again until it is confirmed (Telegram) confirms it on
    `stored()`, and keeps it until `keep_until` (epoch seconds; None: the platform does not
    deliver again, so a message that cannot be stored waits in memory only). `held()` says it
    waits in memory for the store to come back. A caller that waits for the answer on an open
    request (the HTTP API) does not `wait`: a store that fails gives it `MessageNotStored` at
    once, to answer "try again" rather than hold the request open for hours.
    """

    stored: Callable[[], None] | None = None
    held: Callable[[], None] | None = None
    keep_until: float | None = None
    wait: bool = True


@dataclass(eq=False)
class AmendableTurn:
    """A turn whose words may still grow: a voice utterance answered at the speaker's first
    short pause, before they are surely done.

    The first `ConversationEngine.handle` given it stores the message as usual and keeps its
    rows here; a later one amends that same turn (the user's row gets the new words, the reply's
    row is reused), so the history shows one question and one answer. `withdraw()` before
    cancelling the task that answers it: that answer is dropped (its row is marked 'failed', never
    shown as an answer) until the amendment answers again.
    """

    rows: Turn | None = None  # the stored message and its reply's row, once stored
    counted: bool = False  # passed the per-user rate limit: an amendment is not a new message
    withdrawn: bool = False

    def withdraw(self) -> None:
        """The words so far are not the whole turn: the answer being made for them is void."""
        self.withdrawn = True


@dataclass(frozen=True, slots=True)
class SpokenSentence:
    """One sentence of a reply and its speech: mono float32 PCM at 48 kHz."""

    text: str
    pcm: npt.NDArray[np.float32]


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
    """A budget of calls: a chat's is a token bucket (`rate` a second, bursts of up to `burst`);
    a platform's is a sliding window of `burst` calls per `burst / rate` seconds."""

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

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        """Tell the user, in `lang`, they wait behind `position - 1` other replies ("you are #3
        in line")."""
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


@runtime_checkable
class ReplyOutcomeTarget(Protocol):
    """A reply target told how each reply ended, for clients that wait for a final event with
    the reply's status (the MQTT bridge) rather than reading a chat."""

    def reply_ended(self, answer: str, status: Status, note: str) -> None:
        """The reply is over: its text as stored, its status ("complete", "partial" or
        "failed") and the note the user is shown with it ("" when none). Called once, before
        its final text is shown (which ends with the note)."""
        ...
