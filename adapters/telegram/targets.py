"""`TelegramReplyTarget`: where the engine's answer to one Telegram message goes.

Two ways to stream a reply: "edit" posts a message at the first tokens and edits it; "draft"
(private chats only) animates a sendMessageDraft preview and posts the real message at the end.
Text goes out rendered from Markdown; if Telegram rejects the formatting, the same text goes
out plain, so a reply is never lost to formatting.

Every call goes through the bot's `EditScheduler`, under the chat's and the bot's budgets: the
reply stream's own, and notices, voice notes, the queue notice and typing through
`EditScheduler.call` / `offer` / `queue_notices`, so a 429 on any of them pauses the same bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import telegram.error
from telegram import Bot, InputFile, Message, ReplyParameters
from telegram.constants import ChatAction

from adapters.telegram.config import TelegramSettings
from adapters.telegram.errors import delivery_errors, is_gone, is_not_modified
from adapters.telegram.format import Rendered, render_markdown
from adapters.telegram.limits import GROUP_WINDOW_S, MAX_CAPTION_CHARS, PLATFORM_KEY
from bot.delivery.budgets import (
    GLOBAL_WINDOW_S,
    SHORT_REPLY_CALLS,
    platform_budget,
    windowed_budget,
)
from bot.delivery.scheduler import EditScheduler
from bot.errors import DeliveryError
from bot.languages import ENGLISH
from bot.messages import queue_text
from bot.types import OutgoingFile, RateBudget, TargetLimits, VoiceClip

log = logging.getLogger(__name__)

# Telegram shows "typing..." for 5 s or until the bot sends a message. The engine asks again
# every few seconds; calls closer together than this are dropped.
TYPING_REFRESH_S = 3.0
DRAFT_PREFIX = "draft:"  # ids of draft previews, which are no real messages
VOICE_FILE_NAME = "reply.ogg"
VOICE_FORBIDDEN = "voice_messages_forbidden"  # a user's privacy setting, as a 400 description
# Draft ids animate changes of the same preview, so each reply part needs a fresh one.
_draft_ids = itertools.count(random.randrange(1, 2**30))


def chat_limits(settings: TelegramSettings, *, is_private: bool) -> TargetLimits:
    """Budgets of one Telegram chat and of the whole bot, from `[telegram]` settings.

    A private chat's limit is a soft rate that tolerates short bursts, so it gets the plain rate
    plus a burst; a group's limit is a hard count per minute (`windowed_budget`); the bot may
    send its whole second's count at once (`platform_budget`).
    """
    if is_private:
        chat = RateBudget(rate=settings.private_rate, burst=SHORT_REPLY_CALLS)
    else:
        chat = windowed_budget(settings.group_rate * GROUP_WINDOW_S, GROUP_WINDOW_S)
    return TargetLimits(
        max_chars=settings.max_message_chars,
        chat=chat,
        platform=platform_budget(settings.global_rate * GLOBAL_WINDOW_S, GLOBAL_WINDOW_S),
        platform_key=PLATFORM_KEY,
    )


class TelegramReplyTarget:
    """Implements `bot.types.ReplyTarget` for one incoming message in one Telegram chat."""

    def __init__(
        self,
        bot: Bot,
        *,
        chat_id: int,
        limits: TargetLimits,
        scheduler: EditScheduler | None = None,
        use_drafts: bool = False,
        reply_to_message_id: int | None = None,
        thread_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`scheduler`: the bot's, whose budgets every call draws on (a target on its own, as
        in a test of the target alone, gets a scheduler of its own)."""
        self._bot = bot
        self._chat_id = chat_id
        self._limits = limits
        self._scheduler = scheduler if scheduler is not None else EditScheduler()
        self._use_drafts = use_drafts
        self._reply_to = reply_to_message_id  # the question, quoted in groups
        self._quoted = False  # the reply's first part quotes it; later parts follow it
        self._thread_id = thread_id
        self._clock = clock
        self._shown: dict[int, Rendered] = {}  # what each of our messages shows now
        self._last_typing = -math.inf

    @property
    def chat_key(self) -> str:
        return f"telegram:{self._chat_id}"

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    # -- TextTarget ------------------------------------------------------------------------

    async def send(self, text: str) -> str:
        """Start a reply part: a draft preview, or a real message to edit later."""
        self._reply_started()
        if self._use_drafts:
            draft_id = next(_draft_ids)
            if await self._draft(draft_id, text):
                return f"{DRAFT_PREFIX}{draft_id}"
            self._use_drafts = False  # drafts refused here: stream by edits from now on
        message = await self._post(text)
        return str(message.message_id)

    async def edit(self, message_id: str, text: str) -> None:
        """Show the reply so far."""
        if message_id.startswith(DRAFT_PREFIX):
            await self._draft(int(message_id.removeprefix(DRAFT_PREFIX)), text)
        else:
            await self._edit(int(message_id), text)

    async def finalize(self, message_id: str, text: str) -> str:
        """Write a part's final text; a draft becomes a real message here."""
        if message_id.startswith(DRAFT_PREFIX):
            message = await self._post(text)
            return str(message.message_id)
        await self._edit(int(message_id), text)
        return message_id

    async def delete(self, message_id: str) -> None:
        """Remove a part; drafts need nothing (Telegram drops them after 30 s)."""
        if message_id.startswith(DRAFT_PREFIX):
            return
        with delivery_errors():
            try:
                await self._bot.delete_message(self._chat_id, int(message_id))
            except telegram.error.BadRequest as exc:
                if not is_gone(exc):
                    raise
        self._shown.pop(int(message_id), None)

    # -- ReplyTarget -----------------------------------------------------------------------

    async def typing(self) -> None:
        """Show "typing..." if it costs no text; calls closer than TYPING_REFRESH_S cost nothing."""
        now = self._clock()
        if now - self._last_typing < TYPING_REFRESH_S:
            return
        try:
            shown = await self._scheduler.offer(self, self._typing_call)
        except (DeliveryError, OSError) as exc:  # an indicator is not worth a retry
            log.debug("typing indicator failed in chat %s: %s", self._chat_id, exc)
            return
        if shown:  # skipped for text: the next call may try again
            self._last_typing = now

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        """Show the chat's one "#n in line" message at this position; it never blocks.

        However many of the chat's messages wait, it has one such message, posted once and
        edited as positions change; it goes when none of them waits any more.
        """
        text = functools.partial(queue_text, lang=lang)
        self._scheduler.queue_notices.wait(self, _QueueNotice(self), self, position, text)

    async def notice(self, text: str) -> None:
        """Post a short plain message (transcript, error, refusal); long ones are split."""
        for chunk in split_plain(text, self._limits.max_chars):
            await self._scheduler.call(self, partial(self._post_plain, chunk), what="notice")

    async def send_voice(self, clip: VoiceClip) -> None:
        """Upload a voice message; if the user forbids those, the audio goes as a file."""
        self._reply_started()
        try:
            await self._scheduler.call(self, partial(self._voice_call, clip), what="voice")
        except _VoiceForbidden:
            log.info("chat %s forbids voice messages; sending a file", self._chat_id)
            await self._scheduler.call(self, partial(self._audio_file_call, clip), what="voice")

    async def send_file(self, file: OutgoingFile) -> None:
        """Upload a document (e.g. an export), in the topic it answers."""
        await self._scheduler.call(self, partial(self._file_call, file), what="file")

    async def close(self) -> None:
        """The engine is done with this message: it waits in line no more."""
        self._reply_started()

    # -- internals -------------------------------------------------------------------------

    def _reply_started(self) -> None:
        """The answer begins (or the turn ended): this message waits in line no more."""
        self._scheduler.queue_notices.leave(self, self)

    async def _typing_call(self) -> None:
        with delivery_errors():
            await self._bot.send_chat_action(
                self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
            )

    async def _post_plain(self, text: str, *, quote: bool = True) -> str:
        with delivery_errors(), _posted_at_most_once():
            message = await self._bot.send_message(self._chat_id, text, **self._where(quote=quote))
        return str(message.message_id)

    async def _voice_call(self, clip: VoiceClip) -> None:
        audio = InputFile(clip.ogg_opus, filename=VOICE_FILE_NAME)
        duration = max(1, math.ceil(clip.duration_s))
        with delivery_errors(), _posted_at_most_once():
            try:
                await self._bot.send_voice(self._chat_id, audio, duration=duration, **self._where())
            except telegram.error.BadRequest as exc:
                if VOICE_FORBIDDEN not in exc.message.lower():
                    raise
                raise _VoiceForbidden(exc.message) from exc

    async def _audio_file_call(self, clip: VoiceClip) -> None:
        audio = InputFile(clip.ogg_opus, filename=VOICE_FILE_NAME)
        caption = _caption(clip.text) or None
        with delivery_errors(), _posted_at_most_once():
            await self._bot.send_document(self._chat_id, audio, caption=caption, **self._where())

    async def _file_call(self, file: OutgoingFile) -> None:
        document = InputFile(file.data, filename=file.name)
        caption = _caption(file.caption) or None
        with delivery_errors(), _posted_at_most_once():
            await self._bot.send_document(self._chat_id, document, caption=caption, **self._where())

    def _where(self, *, quote: bool = True) -> dict[str, Any]:
        """Placement of a new message: the topic thread, and the question it answers."""
        where: dict[str, Any] = {"message_thread_id": self._thread_id}
        if quote and self._reply_to is not None:
            where["reply_parameters"] = ReplyParameters(
                self._reply_to, allow_sending_without_reply=True
            )
        return where

    async def _render(self, text: str) -> Rendered:
        # A few ms of parsing for a long reply, and it runs on every edit: keep it off the loop.
        return await asyncio.to_thread(render_markdown, text, self._limits.max_chars)

    async def _post(self, text: str) -> Message:
        rendered = await self._render(text)
        where = self._where(quote=not self._quoted)
        self._quoted = True
        with delivery_errors():
            try:
                message = await self._bot.send_message(
                    self._chat_id, rendered.text, entities=rendered.entities, **where
                )
            except telegram.error.BadRequest as exc:
                if not rendered.entities:
                    raise
                log.warning("Telegram refused the formatting (%s); sending plain text", exc)
                rendered = Rendered(text)
                message = await self._bot.send_message(self._chat_id, text, **where)
        self._shown[message.message_id] = rendered
        return message

    async def _edit(self, message_id: int, text: str) -> None:
        rendered = await self._render(text)
        if self._shown.get(message_id) == rendered:
            return
        with delivery_errors():
            try:
                await self._edit_call(message_id, rendered)
            except telegram.error.BadRequest as exc:
                if not rendered.entities:
                    raise
                log.warning("Telegram refused the formatting (%s); editing in plain text", exc)
                rendered = Rendered(text)
                await self._edit_call(message_id, rendered)
        self._shown[message_id] = rendered

    async def _edit_call(self, message_id: int, rendered: Rendered) -> None:
        try:
            await self._bot.edit_message_text(
                rendered.text, self._chat_id, message_id, entities=rendered.entities
            )
        except telegram.error.BadRequest as exc:
            if not is_not_modified(exc):
                raise

    async def _draft(self, draft_id: int, text: str) -> bool:
        """Show a draft preview; False when Telegram refuses drafts in this chat."""
        rendered = await self._render(text)
        with delivery_errors():
            try:
                await self._draft_call(draft_id, rendered)
            except telegram.error.BadRequest as exc:
                if not rendered.entities:
                    log.warning("draft refused in chat %s (%s)", self._chat_id, exc)
                    return False
                log.warning("Telegram refused the formatting (%s); drafting plain text", exc)
                try:
                    await self._draft_call(draft_id, Rendered(text))
                except telegram.error.BadRequest as plain_exc:
                    log.warning("draft refused in chat %s (%s)", self._chat_id, plain_exc)
                    return False
        return True

    async def _draft_call(self, draft_id: int, rendered: Rendered) -> None:
        await self._bot.send_message_draft(
            self._chat_id,
            draft_id,
            rendered.text,
            message_thread_id=self._thread_id,
            entities=rendered.entities,
        )


class _VoiceForbidden(Exception):
    """The user's privacy settings refuse voice messages from bots."""


class _QueueNotice:
    """The `MessageOps` of a chat's "#n in line" message: plain text, in the question's place."""

    def __init__(self, target: TelegramReplyTarget) -> None:
        self._target = target

    async def post(self, text: str) -> str:
        return await self._target._post_plain(text)

    async def edit(self, message_id: str, text: str) -> None:
        target = self._target
        with delivery_errors():
            try:
                await target._bot.edit_message_text(text, target._chat_id, int(message_id))
            except telegram.error.BadRequest as exc:
                if not is_not_modified(exc):
                    raise

    async def delete(self, message_id: str) -> None:
        target = self._target
        with delivery_errors():
            try:
                await target._bot.delete_message(target._chat_id, int(message_id))
            except telegram.error.BadRequest as exc:
                if not is_gone(exc):
                    raise


@contextlib.contextmanager
def _posted_at_most_once() -> Iterator[None]:
    """A post that timed out may have landed: it is a refusal, never retried into a duplicate.

    (A lost connection or a 5xx stays a network failure, which the scheduler retries.)
    """
    try:
        yield
    except telegram.error.TimedOut as exc:
        raise DeliveryError(
            f"Telegram did not answer in time; the message may or may not be posted: {exc}",
            reason="unknown",
        ) from exc


def _caption(text: str) -> str:
    """A caption within Telegram's limit."""
    if len(text) <= MAX_CAPTION_CHARS:
        return text
    return text[: MAX_CAPTION_CHARS - 1] + "…"


def split_plain(text: str, max_chars: int) -> list[str]:
    """Cut plain text into chunks of at most `max_chars`, at a newline or space when possible."""
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > max_chars:
        cut = rest.rfind("\n", 0, max_chars + 1)
        if cut <= 0:
            cut = rest.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return chunks
