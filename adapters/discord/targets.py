"""Where the engine's answers go on Discord: a chat message's channel, or a slash command.

Streamed text goes through `DiscordRest` (a 429 reaches the reply streamer as `RetryAfter`);
notices, typing and voice uploads go through discord.py, which waits out 429s itself.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable
from enum import Enum

import discord
from discord.http import HTTPClient, Route

from adapters.discord.errors import INVALID_WEBHOOK_TOKEN, delivery_error
from adapters.discord.limits import INTERACTION_TOKEN_LIFETIME_S
from adapters.discord.rest import DiscordRest, InteractionTokenExpired
from bot.errors import DeliveryError, RetryAfter
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
NOTICE_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False)
QUEUE_TEXT = "⏳ You're #{position} in line; I'll answer as soon as it's your turn."


def voice_message_form(clip: VoiceClip, *, reply_to: int | None) -> list[dict[str, object]]:
    """The multipart form of a native voice message (discord.py has no API for one).

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
    payload: dict[str, object] = {
        "flags": MESSAGE_FLAG_VOICE,
        "attachments": [attachment],
        "allowed_mentions": {"parse": [], "replied_user": False},
    }
    if reply_to is not None:
        payload["message_reference"] = {"message_id": str(reply_to), "fail_if_not_exists": False}
    return [
        {"name": "payload_json", "value": json.dumps(payload)},
        {
            "name": "files[0]",
            "value": clip.ogg_opus,
            "filename": VOICE_FILENAME,
            "content_type": "audio/ogg",
        },
    ]


async def post_voice_message(
    http: HTTPClient, channel_id: int, clip: VoiceClip, *, reply_to: int | None
) -> None:
    """Upload `clip` as a voice message through discord.py's HTTP layer (its retries included)."""
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
    await http.request(route, form=voice_message_form(clip, reply_to=reply_to))


def _audio_file(clip: VoiceClip) -> discord.File:
    return discord.File(io.BytesIO(clip.ogg_opus), filename=AUDIO_FALLBACK_FILENAME)


def _upload(file: OutgoingFile) -> discord.File:
    return discord.File(io.BytesIO(file.data), filename=file.name)


class _DiscordTarget:
    """What both targets share: the bucket key, limits, typing and voice uploads."""

    def __init__(
        self,
        *,
        rest: DiscordRest,
        http: HTTPClient,
        channel_id: int,
        limits: TargetLimits,
        clock: Clock = time.monotonic,
    ) -> None:
        self._rest = rest
        self._http = http
        self._channel_id = channel_id
        self._limits = limits
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
        """Trigger the typing indicator, at most once per `TYPING_REFRESH_S`."""
        now = self._clock()
        if self._typing_at is not None and now - self._typing_at < TYPING_REFRESH_S:
            return
        self._typing_at = now
        try:
            await self._http.send_typing(self._channel_id)
        except discord.HTTPException as exc:
            log.debug("typing indicator refused: %s", exc)

    async def _voice_message(self, clip: VoiceClip, *, reply_to: int | None) -> bool:
        """Try the native voice message; False when Discord refuses it."""
        try:
            await post_voice_message(self._http, self._channel_id, clip, reply_to=reply_to)
        except discord.HTTPException as exc:
            # No Send Voice Messages permission, or Discord rejects the upload: fall back.
            log.info("voice message refused (%s), sending a plain audio file", exc)
            return False
        return True


class ChannelTarget(_DiscordTarget):
    """Answers a chat message in its channel: the reply's first part replies to it."""

    def __init__(
        self,
        *,
        rest: DiscordRest,
        http: HTTPClient,
        message: discord.Message,
        limits: TargetLimits,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            rest=rest, http=http, channel_id=message.channel.id, limits=limits, clock=clock
        )
        self._message = message
        self._queue_message: int | None = None
        self._replied = False

    async def send(self, text: str) -> str:
        if self._queue_message is not None:
            # The "waiting in line" message goes: turned into the reply, it would sit above
            # the answers to earlier messages that were posted after it.
            queue_message, self._queue_message = self._queue_message, None
            try:
                await self._rest.delete_message(self._channel_id, queue_message)
            except (RetryAfter, DeliveryError, OSError) as exc:
                log.info("queue message not deleted: %s", exc)
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

    async def queued(self, position: int) -> None:
        """Post (or update) one "you're #n in line" message; it is cosmetic, so failures pass."""
        if self._replied:
            return
        text = QUEUE_TEXT.format(position=position)
        try:
            if self._queue_message is None:
                self._queue_message = await self._rest.create_message(
                    self._channel_id, text, reply_to=self._message.id
                )
            else:
                await self._rest.edit_message(self._channel_id, self._queue_message, text)
        except (RetryAfter, DeliveryError, OSError) as exc:
            log.info("queue position not shown: %s", exc)

    async def notice(self, text: str) -> None:
        pieces = split_markdown(text, self._limits.max_chars)
        reference = self._message.to_reference(fail_if_not_exists=False)
        channel = self._message.channel
        assert not isinstance(channel, discord.GroupChannel)  # bots are never in group DMs
        try:
            if self._queue_message is not None and pieces:
                # A reply that failed while waiting: its queue message says why instead.
                waiting = channel.get_partial_message(self._queue_message)
                self._queue_message = None
                await waiting.edit(content=pieces.pop(0), allowed_mentions=NOTICE_MENTIONS)
            for piece in pieces:
                await channel.send(piece, reference=reference, allowed_mentions=NOTICE_MENTIONS)
        except discord.HTTPException as exc:
            raise delivery_error("notice not delivered", exc) from exc

    async def send_voice(self, clip: VoiceClip) -> None:
        if await self._voice_message(clip, reply_to=self._message.id):
            return
        try:
            await self._message.channel.send(
                file=_audio_file(clip),
                reference=self._message.to_reference(fail_if_not_exists=False),
                allowed_mentions=NOTICE_MENTIONS,
            )
        except discord.HTTPException as exc:
            raise delivery_error("voice reply not delivered", exc) from exc

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload an attachment (e.g. an export) as a reply to the message it answers."""
        try:
            await self._message.channel.send(
                file.caption or None,
                file=_upload(file),
                reference=self._message.to_reference(fail_if_not_exists=False),
                allowed_mentions=NOTICE_MENTIONS,
            )
        except discord.HTTPException as exc:
            raise delivery_error("file not delivered", exc) from exc


class _Kind(Enum):
    ORIGINAL = "original"
    FOLLOWUP = "followup"
    CHANNEL = "channel"


class InteractionTarget(_DiscordTarget):
    """Answers a slash command: the deferred response, then follow-ups, then the channel.

    The reply's first part edits the original ("thinking…") response and later parts are
    follow-ups. The interaction token expires after 15 minutes; from then on the reply goes on
    as channel messages, and a part that was being edited continues in a new channel message
    holding the text the old one could no longer show.
    """

    def __init__(
        self,
        *,
        rest: DiscordRest,
        http: HTTPClient,
        interaction: discord.Interaction,
        channel: discord.PartialMessageable,
        limits: TargetLimits,
        clock: Clock = time.monotonic,
        ephemeral: bool = False,
    ) -> None:
        super().__init__(rest=rest, http=http, channel_id=channel.id, limits=limits, clock=clock)
        self._ephemeral = ephemeral  # files go to the caller alone (a private command's)
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

    def _token_alive(self) -> bool:
        return not self._token_dead and self._clock() < self._expires_at

    def _remember(self, message_id: int, kind: _Kind, text: str) -> str:
        key = str(message_id)
        self._kinds[key] = kind
        self._shown[key] = text
        return key

    async def send(self, text: str) -> str:
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

    async def queued(self, position: int) -> None:
        """Show the queue position in the original response while it is still free."""
        if not self._original_free or not self._token_alive():
            return
        try:
            await self._rest.edit_original(
                self._app_id, self._token, QUEUE_TEXT.format(position=position)
            )
        except (RetryAfter, DeliveryError, OSError) as exc:
            log.info("queue position not shown: %s", exc)

    async def notice(self, text: str) -> None:
        try:
            for piece in split_markdown(text, self._limits.max_chars):
                await self._post_notice(piece)
        except discord.HTTPException as exc:
            raise delivery_error("notice not delivered", exc) from exc

    async def _post_notice(self, text: str) -> None:
        if self._token_alive():
            try:
                if self._original_free:
                    await self._interaction.edit_original_response(
                        content=text, allowed_mentions=NOTICE_MENTIONS
                    )
                    self._original_free = False
                else:
                    await self._interaction.followup.send(text, allowed_mentions=NOTICE_MENTIONS)
                return
            except discord.HTTPException as exc:
                if exc.code != INVALID_WEBHOOK_TOKEN:
                    raise
                self._token_dead = True
        await self._channel.send(text, allowed_mentions=NOTICE_MENTIONS)

    async def send_voice(self, clip: VoiceClip) -> None:
        # Interaction responses drop duration_secs and waveform, so a voice message must be a
        # plain channel message; the interaction's follow-up carries the fallback file.
        if await self._voice_message(clip, reply_to=None):
            return
        try:
            if self._token_alive():
                await self._interaction.followup.send(file=_audio_file(clip))
            else:
                await self._channel.send(file=_audio_file(clip))
        except discord.HTTPException as exc:
            raise delivery_error("voice reply not delivered", exc) from exc

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload an attachment as a follow-up (the response's text stays), or in the channel
        once the interaction's token has expired."""
        try:
            if self._token_alive():
                await self._interaction.followup.send(
                    file.caption or discord.utils.MISSING,
                    file=_upload(file),
                    ephemeral=self._ephemeral,
                    allowed_mentions=NOTICE_MENTIONS,
                )
            else:
                await self._channel.send(
                    file.caption or None, file=_upload(file), allowed_mentions=NOTICE_MENTIONS
                )
        except discord.HTTPException as exc:
            raise delivery_error("file not delivered", exc) from exc


def _beyond(text: str, shown: str) -> str:
    """The part of `text` that a frozen message showing `shown` does not show.

    `shown` may end in the streamer's marker, so the shared beginning counts, not `shown`.
    """
    common = next(
        (i for i, (a, b) in enumerate(zip(text, shown, strict=False)) if a != b),
        min(len(text), len(shown)),
    )
    return text[common:].lstrip()
