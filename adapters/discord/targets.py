"""Where the engine's answers go on Discord: a chat message's channel, or a slash command.

Every call goes through `DiscordRest` under the bot's `EditScheduler`: the reply stream's own,
and notices, typing, the queue notice and voice uploads through `EditScheduler.call` / `offer`
/ `queue_notices`. A 429 on any of them reaches the scheduler as `RetryAfter` and pauses the
bucket every reply of the channel (or the bot, when global) shares; discord.py's own client
would sleep through it unseen and send more meanwhile.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Any

import discord
from discord.http import HTTPClient

from adapters.discord.config import DiscordSettings
from adapters.discord.limits import (
    INTERACTION_TOKEN_LIFETIME_S,
    LIBRARY_CALLS,
    PLATFORM_KEY,
)
from adapters.discord.rest import (
    ALLOWED_MENTIONS,
    FLAG_EPHEMERAL,
    DiscordRest,
    InteractionTokenExpired,
    Upload,
)
from bot.delivery.budgets import GLOBAL_WINDOW_S, Priority, platform_budget, windowed_budget
from bot.delivery.notices import LatestMessage
from bot.delivery.scheduler import EditScheduler
from bot.errors import DeliveryError
from bot.languages import ENGLISH
from bot.messages import queue_text
from bot.splitter import split_markdown
from bot.types import OutgoingFile, TargetLimits, VoiceClip

log = logging.getLogger(__name__)

Clock = Callable[[], float]

MESSAGE_FLAG_VOICE = 1 << 13  # IS_VOICE_MESSAGE
MAX_WAVEFORM_SAMPLES = 256  # Discord's clients draw at most this many
VOICE_FILENAME = "voice-message.ogg"
AUDIO_FALLBACK_FILENAME = "reply.ogg"
TYPING_REFRESH_S = 8.0  # one trigger shows "typing…" for about 10 s
TOKEN_SAFETY_S = 30.0  # stop using the token early: a request may still be on its way
# For discord.py's own messages (the client's default): no @everyone, roles or user pings.
NOTICE_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False)
ORIGINAL = "@original"  # the id a queue position shown in an interaction's response gets


def channel_limits(settings: DiscordSettings) -> TargetLimits:
    """Budgets of one Discord channel and of the whole bot, from `[discord]` settings.

    The bot may send its whole global window at once, less the `LIBRARY_CALLS` discord.py makes
    on its own (and never less than half of it).
    """
    per_window = settings.global_rate * GLOBAL_WINDOW_S
    return TargetLimits(
        max_chars=settings.max_message_chars,
        chat=windowed_budget(settings.channel_edits, settings.channel_window_s),
        platform=platform_budget(max(per_window - LIBRARY_CALLS, per_window / 2), GLOBAL_WINDOW_S),
        platform_key=PLATFORM_KEY,
    )


def voice_message_payload(clip: VoiceClip, *, reply_to: int | None) -> dict[str, Any]:
    """The JSON part of a native voice message (discord.py has no API for one).

    A voice message has no text, exactly one OGG/Opus attachment, and `duration_secs` plus a
    base64 `waveform` on that attachment; Discord ignores both unless the part is audio/ogg.
    """
    samples = clip.waveform[:MAX_WAVEFORM_SAMPLES] or bytes(1)  # a flat line beats none
    attachment = {
        "id": 0,
        "filename": VOICE_FILENAME,
        "duration_secs": round(clip.duration_s, 2),
        "waveform": base64.b64encode(samples).decode(),
    }
    payload: dict[str, Any] = {
        "flags": MESSAGE_FLAG_VOICE,
        "attachments": [attachment],
        "allowed_mentions": {"parse": [], "replied_user": False},
    }
    if reply_to is not None:
        payload["message_reference"] = {"message_id": str(reply_to), "fail_if_not_exists": False}
    return payload


def _voice_upload(clip: VoiceClip) -> Upload:
    return Upload(VOICE_FILENAME, clip.ogg_opus, "audio/ogg")


def _audio_file(clip: VoiceClip, *, reply_to: int | None) -> tuple[dict[str, Any], Upload]:
    """A plain audio attachment: the fallback when a voice message is refused."""
    payload: dict[str, Any] = {
        "attachments": [{"id": 0, "filename": AUDIO_FALLBACK_FILENAME}],
        "allowed_mentions": ALLOWED_MENTIONS,
    }
    if reply_to is not None:
        payload["message_reference"] = {"message_id": str(reply_to), "fail_if_not_exists": False}
    return payload, Upload(AUDIO_FALLBACK_FILENAME, clip.ogg_opus, "audio/ogg")


def _file_message(file: OutgoingFile, *, reply_to: int | None) -> tuple[dict[str, Any], Upload]:
    """An attachment (e.g. an export) with its caption as the message text."""
    payload: dict[str, Any] = {
        "content": file.caption,
        "attachments": [{"id": 0, "filename": file.name}],
        "allowed_mentions": ALLOWED_MENTIONS,
    }
    if reply_to is not None:
        payload["message_reference"] = {"message_id": str(reply_to), "fail_if_not_exists": False}
    return payload, Upload(file.name, file.data, file.mime)


class _DiscordTarget:
    """What both targets share: the bucket key, limits, budgets, typing and voice uploads."""

    def __init__(
        self,
        *,
        rest: DiscordRest,
        channel_id: int,
        limits: TargetLimits,
        scheduler: EditScheduler | None = None,
        http: HTTPClient | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`scheduler`: the bot's, whose budgets every call draws on (a target on its own, as
        in a test of the target alone, gets one of its own). `http` is not used any more:
        every call goes through `rest`; it is accepted so older callers keep working."""
        self._rest = rest
        self._channel_id = channel_id
        self._limits = limits
        self._scheduler = scheduler if scheduler is not None else EditScheduler()
        self._clock = clock
        self._typing_at: float | None = None

    @property
    def chat_key(self) -> str:
        """Replies in one channel share its edit budget."""
        return f"discord:{self._channel_id}"

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    async def typing(self) -> None:
        """Trigger the typing indicator if it costs no text, at most once per `TYPING_REFRESH_S`."""
        now = self._clock()
        if self._typing_at is not None and now - self._typing_at < TYPING_REFRESH_S:
            return
        try:
            shown = await self._scheduler.offer(
                self, partial(self._rest.trigger_typing, self._channel_id)
            )
        except (DeliveryError, OSError) as exc:  # an indicator is not worth a retry
            log.debug("typing indicator refused: %s", exc)
            return
        if shown:  # skipped for text: the next call may try again
            self._typing_at = now

    async def close(self) -> None:
        """The engine is done with this message (nothing to tidy up by default)."""

    async def _call(self, make: Callable[[], Any], what: str = "notice") -> Any:
        """One call under the budgets (see `EditScheduler.call`)."""
        return await self._scheduler.call(self, make, what=what)

    async def _voice_message(self, clip: VoiceClip, *, reply_to: int | None) -> bool:
        """Try the native voice message; False when Discord refuses it."""
        payload = voice_message_payload(clip, reply_to=reply_to)
        upload = partial(
            self._rest.upload_message, self._channel_id, payload, [_voice_upload(clip)]
        )
        try:
            await self._call(upload, "voice")
        except DeliveryError as exc:
            # No Send Voice Messages permission, or Discord rejects the upload: fall back.
            log.info("voice message refused (%s), sending a plain audio file", exc)
            return False
        return True


async def rewrite_message(
    rest: DiscordRest,
    scheduler: EditScheduler,
    limits: TargetLimits,
    channel_id: int,
    message_id: int,
    text: str,
) -> None:
    """Replace the text of one of the bot's messages under the channel's budgets (a message of
    a reply interrupted by a killed process, finished after the restart). An interaction's
    response is a message of the bot's too, edited the same way once its token is gone."""
    where = _DiscordTarget(rest=rest, channel_id=channel_id, limits=limits, scheduler=scheduler)
    edit = partial(rest.edit_message, channel_id, message_id, text)
    await scheduler.call(where, edit, priority=Priority.COMPLETE, what="repair")


class _ChannelQueueNotice:
    """The `MessageOps` of a channel's "in line" message: a reply to the message that waits."""

    def __init__(self, rest: DiscordRest, channel_id: int, reply_to: int) -> None:
        self._rest = rest
        self._channel_id = channel_id
        self._reply_to = reply_to

    async def post(self, text: str) -> str:
        message_id = await self._rest.create_message(
            self._channel_id, text, reply_to=self._reply_to
        )
        return str(message_id)

    async def edit(self, message_id: str, text: str) -> None:
        await self._rest.edit_message(self._channel_id, int(message_id), text)

    async def delete(self, message_id: str) -> None:
        await self._rest.delete_message(self._channel_id, int(message_id))


class ChannelTarget(_DiscordTarget):
    """Answers a chat message in its channel: the reply's first part replies to it."""

    def __init__(
        self,
        *,
        rest: DiscordRest,
        message: discord.Message,
        limits: TargetLimits,
        scheduler: EditScheduler | None = None,
        http: HTTPClient | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            rest=rest,
            channel_id=message.channel.id,
            limits=limits,
            scheduler=scheduler,
            http=http,
            clock=clock,
        )
        self._message = message
        self._replied = False

    async def send(self, text: str) -> str:
        # This message waits no more: the channel's "in line" message goes once none waits
        # (deleted rather than turned into the reply: it would sit above the answers to
        # earlier messages that were posted after it). The deletion waits for a spare token.
        self._waits_no_more()
        reply_to = None if self._replied else self._message.id
        message_id = await self._rest.create_message(self._channel_id, text, reply_to=reply_to)
        self._replied = True
        return str(message_id)

    async def edit(self, message_id: str, text: str) -> None:
        await self._rest.edit_message(self._channel_id, int(message_id), text)

    async def finalize(self, message_id: str, text: str) -> str:
        await self.edit(message_id, text)
        return message_id

    async def delete(self, message_id: str) -> None:
        await self._rest.delete_message(self._channel_id, int(message_id))

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        """Show the channel's one "#n in line" message at this position; it never blocks."""
        if self._replied:
            return
        ops = _ChannelQueueNotice(self._rest, self._channel_id, self._message.id)
        text = functools.partial(queue_text, lang=lang)
        self._scheduler.queue_notices.wait(self, ops, self, position, text)

    async def notice(self, text: str) -> None:
        pieces = split_markdown(text, self._limits.max_chars)
        if not pieces:
            return
        # A reply that failed while waiting: the "in line" message says why instead.
        waiting = await self._scheduler.queue_notices.take_over(self, self)
        if waiting is not None:
            first = pieces.pop(0)
            edit = partial(self._rest.edit_message, self._channel_id, int(waiting), first)
            await self._call(edit)
        for piece in pieces:
            post = partial(
                self._rest.create_message, self._channel_id, piece, reply_to=self._message.id
            )
            await self._call(post)

    async def send_voice(self, clip: VoiceClip) -> None:
        self._waits_no_more()
        if await self._voice_message(clip, reply_to=self._message.id):
            return
        payload, upload = _audio_file(clip, reply_to=self._message.id)
        await self._call(
            partial(self._rest.upload_message, self._channel_id, payload, [upload]), "voice"
        )

    async def close(self) -> None:
        """The engine is done with this message: it waits in line no more."""
        self._waits_no_more()

    def _waits_no_more(self) -> None:
        self._scheduler.queue_notices.leave(self, self)

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload an attachment (e.g. an export) as a reply to the message it answers."""
        payload, upload = _file_message(file, reply_to=self._message.id)
        await self._call(
            partial(self._rest.upload_message, self._channel_id, payload, [upload]), "file"
        )


class _Kind(Enum):
    ORIGINAL = "original"
    FOLLOWUP = "followup"
    CHANNEL = "channel"


class InteractionTarget(_DiscordTarget):
    """Answers a slash command: the deferred response, then follow-ups, then the channel.

    The reply's first part edits the original ("thinking…") response and later parts are
    follow-ups. The interaction token expires after 15 minutes; from then on the reply goes on
    as channel messages, and a part that was being edited continues in a new channel message
    holding the text the old one could no longer show. An `ephemeral` target (a private
    command's answer) never falls back to the channel: only the user may see it.

    While the turn waits, the original response shows its queue position (each interaction has
    its own response, so there is nothing to share with other waiting turns).
    """

    def __init__(
        self,
        *,
        rest: DiscordRest,
        interaction: discord.Interaction,
        channel: discord.PartialMessageable,
        limits: TargetLimits,
        scheduler: EditScheduler | None = None,
        http: HTTPClient | None = None,
        clock: Clock = time.monotonic,
        ephemeral: bool = False,
    ) -> None:
        super().__init__(
            rest=rest,
            channel_id=channel.id,
            limits=limits,
            scheduler=scheduler,
            http=http,
            clock=clock,
        )
        self._ephemeral = ephemeral  # answers and files go to the caller alone
        self._interaction = interaction
        self._channel = channel  # where the reply goes on once the token has expired
        self._app_id = interaction.application_id
        self._token = interaction.token
        self._expires_at = clock() + INTERACTION_TOKEN_LIFETIME_S - TOKEN_SAFETY_S
        self._token_dead = False
        self._original_free = True  # still "thinking…" or a queue position
        self._kinds: dict[str, _Kind] = {}
        self._shown: dict[str, str] = {}  # what each streamed message shows
        self._moved: dict[str, tuple[str, str]] = {}  # id -> (channel message id, text shown)
        self._queue: LatestMessage | None = None  # the queue position in the original

    def _token_alive(self) -> bool:
        return not self._token_dead and self._clock() < self._expires_at

    def _remember(self, message_id: int, kind: _Kind, text: str) -> str:
        key = str(message_id)
        self._kinds[key] = kind
        self._shown[key] = text
        return key

    async def send(self, text: str) -> str:
        await self._stop_queue_position()
        if self._token_alive():
            try:
                if self._original_free:
                    message_id = await self._rest.edit_original(self._app_id, self._token, text)
                    self._original_free = False
                    return self._remember(message_id, _Kind.ORIGINAL, text)
                message_id = await self._rest.create_followup(self._app_id, self._token, text)
                return self._remember(message_id, _Kind.FOLLOWUP, text)
            except InteractionTokenExpired:
                self._token_dead = True
        message_id = await self._rest.create_message(self._channel_id, text, reply_to=None)
        return self._remember(message_id, _Kind.CHANNEL, text)

    async def edit(self, message_id: str, text: str) -> None:
        await self._write(message_id, text)

    async def finalize(self, message_id: str, text: str) -> str:
        return await self._write(message_id, text)

    async def _write(self, message_id: str, text: str) -> str:
        """Show `text` in the message; returns the id of the message that now holds it."""
        if message_id in self._moved:
            moved_id, shown = self._moved[message_id]
            await self._rest.edit_message(self._channel_id, int(moved_id), _beyond(text, shown))
            return moved_id
        kind = self._kinds[message_id]
        if kind is _Kind.CHANNEL:
            await self._rest.edit_message(self._channel_id, int(message_id), text)
            return message_id
        if self._token_alive():
            try:
                if kind is _Kind.ORIGINAL:
                    await self._rest.edit_original(self._app_id, self._token, text)
                else:
                    await self._rest.edit_followup(self._app_id, self._token, int(message_id), text)
            except InteractionTokenExpired:
                self._token_dead = True
            else:
                self._shown[message_id] = text
                return message_id
        shown = self._shown[message_id]
        rest = _beyond(text, shown)
        if not rest.strip():
            return message_id  # nothing new to show yet
        moved_id = str(await self._rest.create_message(self._channel_id, rest, reply_to=None))
        self._moved[message_id] = (moved_id, shown)
        return moved_id

    async def delete(self, message_id: str) -> None:
        moved = self._moved.pop(message_id, None)
        if moved is not None:
            await self._rest.delete_message(self._channel_id, int(moved[0]))
        kind = self._kinds.get(message_id)
        if kind is _Kind.CHANNEL:
            await self._rest.delete_message(self._channel_id, int(message_id))
        elif kind is _Kind.FOLLOWUP and self._token_alive():
            await self._rest.delete_followup(self._app_id, self._token, int(message_id))
        elif kind is _Kind.ORIGINAL and self._token_alive():
            # The original response cannot go away before the token does: blank it instead.
            await self._rest.edit_original(self._app_id, self._token, "…")
            self._original_free = True

    async def typing(self) -> None:
        """Nothing to do: Discord shows "<bot> is thinking…" for a deferred response."""

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        """Show the queue position in the original response while it is still free."""
        if not self._original_free or not self._token_alive():
            return
        if self._queue is None:
            self._queue = LatestMessage(self._scheduler, self, _OriginalQueueNotice(self))
        self._queue.show(queue_text(position, 1, lang))

    async def notice(self, text: str) -> None:
        """A message of its own: the original response while it is free, else a follow-up."""
        for piece in split_markdown(text, self._limits.max_chars):
            await self._call(partial(self._post_notice, piece))

    async def answer(self, text: str, *, empty: str) -> None:
        """A command's answer, split at the message limit; `empty` when it has no text."""
        await self.notice(text if text.strip() else empty)

    async def _post_notice(self, text: str) -> None:
        await self._stop_queue_position()
        if self._token_alive():
            try:
                if self._original_free:
                    await self._rest.edit_original(self._app_id, self._token, text)
                    self._original_free = False
                else:
                    await self._rest.create_followup(
                        self._app_id, self._token, text, ephemeral=self._ephemeral
                    )
                return
            except InteractionTokenExpired:
                self._token_dead = True
        if self._ephemeral:
            raise DeliveryError("the interaction's token expired", reason="token_expired")
        await self._rest.create_message(self._channel_id, text, reply_to=None)

    async def send_voice(self, clip: VoiceClip) -> None:
        # Interaction responses drop duration_secs and waveform, so a voice message must be a
        # plain channel message; the interaction's follow-up carries the fallback file.
        if await self._voice_message(clip, reply_to=None):
            return
        payload, upload = _audio_file(clip, reply_to=None)
        if self._token_alive():
            make = partial(self._rest.upload_followup, self._app_id, self._token, payload, [upload])
        else:
            make = partial(self._rest.upload_message, self._channel_id, payload, [upload])
        await self._call(make, "voice")

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload an attachment as a follow-up (the response's text stays), or in the channel
        once the interaction's token has expired."""
        await self._call(partial(self._post_file, file), "file")

    async def _post_file(self, file: OutgoingFile) -> None:
        payload, upload = _file_message(file, reply_to=None)
        if self._token_alive():
            if self._ephemeral:
                payload["flags"] = FLAG_EPHEMERAL
            try:
                await self._rest.upload_followup(self._app_id, self._token, payload, [upload])
                return
            except InteractionTokenExpired:
                self._token_dead = True
        if self._ephemeral:  # a private answer never goes into the channel
            raise DeliveryError("the interaction's token expired", reason="token_expired")
        payload.pop("flags", None)
        await self._rest.upload_message(self._channel_id, payload, [upload])

    async def close(self) -> None:
        """The engine is done: a queue position still on its way is not written any more."""
        await self._stop_queue_position()

    async def _stop_queue_position(self) -> None:
        """The original response is about to show something else: no queue edit may follow."""
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.detach()


class _OriginalQueueNotice:
    """The `MessageOps` of a queue position shown in an interaction's original response."""

    def __init__(self, target: InteractionTarget) -> None:
        self._target = target

    async def post(self, text: str) -> str:
        await self.edit(ORIGINAL, text)
        return ORIGINAL

    async def edit(self, message_id: str, text: str) -> None:
        target = self._target
        await target._rest.edit_original(target._app_id, target._token, text)

    async def delete(self, message_id: str) -> None:
        """Nothing: the original response cannot go; the reply or a notice replaces it."""


def _beyond(text: str, shown: str) -> str:
    """The part of `text` that a frozen message showing `shown` does not show.

    `shown` may end in the streamer's marker, so the shared beginning counts, not `shown`.
    """
    common = next(
        (i for i, (a, b) in enumerate(zip(text, shown, strict=False)) if a != b),
        min(len(text), len(shown)),
    )
    return text[common:].lstrip()
