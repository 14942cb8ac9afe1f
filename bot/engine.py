"""The conversation engine: one normalised message in, a streamed and stored reply out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.channel_config import ChannelSettings
from bot.config import EngineSettings, Settings
from bot.delivery.scheduler import EditScheduler
from bot.delivery.stream import ReplyStream
from bot.errors import (
    AudioError,
    DeliveryError,
    LLMRequestRejected,
    LLMStreamBroken,
    LLMTimeout,
    LLMUnavailable,
    MessageNotStored,
    RetryAfter,
    SpeechSynthesisError,
    StorageError,
)
from bot.llm import LLMClient, LLMRequest, estimate_tokens
from bot.memory import Recalled, recall_background, recall_facts, recall_turns, search_terms
from bot.models import ChatModel, ModelCatalog
from bot.prompt import (
    PromptTurn,
    build_request,
    fit_rows,
    image_parts,
    system_prompt,
    with_recalled,
)
from bot.queue import TurnQueue, TurnSlot
from bot.ratelimit import UserRateLimiter
from bot.storage import HistoryStore, StoredMessage, Turn
from bot.types import IncomingMessage, LiveSpeechTarget, ReplyTarget

if TYPE_CHECKING:
    from bot.speech.stt import Transcriber
    from bot.speech.tts import SpeechSynthesizer
    from bot.speech.voice_reply import VoiceReply

log = logging.getLogger(__name__)

_TYPING_EVERY_S = 4.0  # platforms show "typing…" for about 5 s per call
_FINISH_WHEN_CANCELLED_S = 1.0  # a cancelled reply's last edit, before the stream is dropped
_SAVE_PARTIAL_EVERY_S = 2.0  # how much streamed text a hard crash can lose
_HISTORY_ROWS = 400  # rows read per prompt before the token budget trims them

MSG_TOO_LONG = (
    "Your message is too long ({length} characters; the limit is {limit}). Please shorten it."
)
MSG_LLM_DOWN = (
    "⚠️ I can't reach the language model right now. Your message is saved; "
    "please try again in a moment."
)
MSG_LLM_REJECTED = "⚠️ The model server refused this request ({reason}). Try /reset to start over."
MSG_CUT_OFF = "⚠️ The reply was cut off: the model server stopped answering."
MSG_TIMEOUT = "⚠️ The model server took too long to answer."
MSG_EMPTY = "The model returned an empty reply. Try rephrasing, or /reset."
MSG_NO_VOICE = "(I couldn't produce a voice reply this time, so here it is as text.)"
MSG_SLOW_DOWN = (
    "You're sending messages faster than I can answer (limit: {limit} a minute). "
    "Please wait a moment and try again."
)
# For adapters: an attachment the bot cannot read ("photos"), alone or with text to answer.
MSG_UNREADABLE = "I can read text and voice messages, but I can't open {kind} yet."
MSG_CAPTION_ONLY = "I can't open {kind} yet, so I'm answering the text that came with it."
# For adapters: a picture, when the chat's model does not take images (or it is too large).
MSG_NO_VISION = "The model I use here can't see images, so I can't look at that picture."
MSG_NO_VISION_TEXT = (
    "The model I use here can't see images, so I'm answering the text that came with it."
)
MSG_IMAGE_TOO_LARGE = (
    "That picture is too large for me ({size_mb:.1f} MB; the limit is {limit_mb:.1f} MB). "
    "Please send a smaller one."
)
MAX_IMAGES_PER_MESSAGE = 4  # pictures of one message passed to the model; more are left out
IMAGE_MARK = "[image]"  # stands for a picture in the stored message (pictures are not stored)
MSG_REPLY_TIMEOUT = "⚠️ I stopped this reply: it took longer than {seconds:g} s."
MSG_REPLY_CAPPED = "⚠️ I stopped this reply: it reached the length limit for one answer."
MSG_INTERNAL = (
    "⚠️ Something went wrong on my side while answering (ref {ref}). "
    "Your message is saved; please try again."
)
MSG_NO_STT = "Voice notes are not available on this bot (speech recognition is not installed)."


class _ReplyCapped(Exception):
    """A reply reached `engine.max_reply_chars` or `engine.max_reply_messages`."""


class _ChatRefused(Exception):
    """The chat refused the reply for good (blocked, deleted): stop generating it."""


class _Caps:
    """The whole-reply caps: characters (answer and reasoning together) and platform messages."""

    def __init__(self, settings: EngineSettings, stream: ReplyStream) -> None:
        self.max_chars = settings.max_reply_chars
        self.max_messages = settings.max_reply_messages
        self.stream = stream
        self.reasoning = 0

    def fit(self, streamed: _Streamed, piece: str) -> str:
        """The part of `piece` that still fits under the character cap."""
        room = self.max_chars - len(streamed.answer) - self.reasoning
        return piece[: max(0, room)]

    def check(self, streamed: _Streamed, reasoning: str) -> None:
        """Raise `_ChatRefused` if the chat refused the reply, `_ReplyCapped` at a cap."""
        refused = self.stream.refused
        if refused is not None:
            raise _ChatRefused(refused)
        self.reasoning += len(reasoning)
        if len(streamed.answer) + self.reasoning >= self.max_chars:
            raise _ReplyCapped(f"{self.max_chars}-character cap")
        # The writer may lag behind the text (it waits for rate budgets): count the messages the
        # text needs as well as those it already has.
        full = len(streamed.answer) >= self.max_messages * self.stream.max_chars
        if full or self.stream.parts > self.max_messages:
            raise _ReplyCapped(f"{self.max_messages}-message cap")


@dataclass(slots=True)
class _Streamed:
    """What one reply has produced so far."""

    answer: str = ""
    reasoning_open: bool = False
    first_token_at: float | None = None


class ConversationEngine:
    """The turn pipeline: a normalised message in, a streamed and stored reply out."""

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        llm: LLMClient,
        scheduler: EditScheduler,
        *,
        slots: int,
        transcriber: Transcriber | None = None,
        synthesizer: SpeechSynthesizer | None = None,
        models: ModelCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        # The models a chat can pick (/model); the default is `llm`.
        self.models = models if models is not None else ModelCatalog(settings.llm, llm)
        self.scheduler = scheduler
        self.queue = TurnQueue(slots)
        self.rate = UserRateLimiter(settings.engine.user_messages_per_minute)
        self._blocked = frozenset(settings.engine.blocked_users)
        # Per channel while its messages arrive: the lock, and how many hold or wait for it.
        self._arrivals: dict[str, tuple[asyncio.Lock, int]] = {}
        metrics.QUEUE_DEPTH.set_function(lambda: self.queue.depth)
        metrics.LLM_SLOTS_IN_USE.set_function(lambda: self.queue.in_use)
        metrics.LLM_SLOTS_TOTAL.set_function(lambda: self.queue.slots)
        self.transcriber = transcriber
        self.synthesizer = synthesizer

    # ----------------------------------------------------------------- messages

    async def handle(
        self,
        msg: IncomingMessage,
        target: ReplyTarget,
        *,
        on_stored: Callable[[], None] | None = None,
        redeliverable: bool = False,
    ) -> None:
        """Answer one text or voice message; every user-visible outcome goes through `target`.

        `on_stored()` is called once the user's message is safely stored: a platform that
        redelivers unconfirmed updates may confirm it then. If it cannot be stored, the user is
        told why, unless `redeliverable`: then `MessageNotStored` is raised and the adapter
        leaves the update unconfirmed, to come again.

        The turn's error boundary: an unexpected error is logged with the chat and a turn id,
        the user is told, and the engine goes on serving this chat and every other.
        """
        turn_id = secrets.token_hex(4)
        try:
            await self._handle(msg, target, turn_id, on_stored)
        except MessageNotStored as exc:
            if redeliverable:
                raise
            await _tell(target, exc.user_message)
        except (DeliveryError, RetryAfter) as exc:
            # The chat refused what the turn had to say (a notice, the voice note): nobody to tell.
            log.warning("turn %s: %s refused a message: %s", turn_id, target.chat_key, exc)
        # The turn's error boundary: one broken turn must not end the bot.
        except Exception:
            log.exception(
                "turn %s in %s:%s failed unexpectedly", turn_id, msg.platform, msg.channel_key
            )
            await _tell(target, MSG_INTERNAL.format(ref=turn_id))

    async def _handle(
        self,
        msg: IncomingMessage,
        target: ReplyTarget,
        turn_id: str,
        on_stored: Callable[[], None] | None,
    ) -> None:
        metrics.MESSAGES_IN.labels(msg.platform, "voice" if msg.audio else "text").inc()
        if f"{msg.platform}:{msg.user_id}" in self._blocked:
            log.info("ignoring a message from blocked user %s:%s", msg.platform, msg.user_id)
            return
        if not self.rate.allow(f"{msg.platform}:{msg.user_id}"):
            limit = self.settings.engine.user_messages_per_minute
            await target.notice(MSG_SLOW_DOWN.format(limit=limit))
            return
        text = msg.text.strip()
        limit = self.settings.engine.max_input_chars
        if len(text) > limit:
            await target.notice(MSG_TOO_LONG.format(length=len(text), limit=limit))
            return
        key = f"{msg.platform}:{msg.channel_key}"
        # Messages of one channel are recorded and join its line in arrival order: the awaits
        # before that (a new channel's row, token counting over HTTP) finish in any order.
        async with self._arrival(key):
            try:
                channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
                if msg.audio is not None:
                    transcript = await self._transcribe(msg, target, channel_id)
                    if transcript is None:
                        return
                    text = f"{transcript}\n\n{text}" if text else transcript
                if not text and not msg.images:
                    return
                # Pictures are not stored (as audio is not): the history shows where one was.
                stored = text
                if msg.images:
                    stored = f"{' '.join([IMAGE_MARK] * len(msg.images))} {text}".strip()
                turn = await self.store.start_turn(
                    channel_id,
                    author_id=msg.user_id,
                    author_name=msg.user_name,
                    content=stored,
                    token_count=await self._count_tokens(stored),
                )
            except StorageError as exc:
                # The store logged it (once per kind of failure); the user hears why.
                raise MessageNotStored(exc) from exc
        if on_stored is not None:
            on_stored()
        # No await between the lock's release and joining the line (in turn()'s first step).
        # The store's turn lock keeps the channel's order across bot processes sharing one
        # PostgreSQL; it is taken at the head of the channel's line, before an LLM slot.
        gate = functools.partial(self.store.channel_turn, turn.channel_id, turn.reply_row)
        async with self.queue.turn(key, functools.partial(_show_position, target), gate) as slot:
            await self._reply(msg, target, turn, text, turn_id, slot)

    async def takes_images(self, platform: str, channel_key: str) -> bool:
        """Whether the model this chat uses takes images (adapters ask before downloading)."""
        channel_id = await self.store.channel_id(platform, channel_key)
        chosen = self.models.pick((await self._channel_settings(channel_id)).model)
        return await self.models.sees_images(chosen)

    async def observe(self, msg: IncomingMessage) -> None:
        """A group message the bot sees but was not addressed to: kept as background for the
        prompts of later turns there (`group_context`), never answered and never sent to the
        LLM on its own. Failures are logged, never raised: nobody waits for an answer."""
        if msg.is_private or f"{msg.platform}:{msg.user_id}" in self._blocked:
            return
        text = msg.text.strip()[: self.settings.engine.max_input_chars]
        if not text:
            return
        key = f"{msg.platform}:{msg.channel_key}"
        try:
            # In arrival order with the chat's turns, so the prompt shows it where it was said.
            async with self._arrival(key):
                channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
                if not (await self._channel_settings(channel_id)).group_context:
                    return
                await self.store.record_background(
                    channel_id,
                    author_id=msg.user_id,
                    author_name=msg.user_name,
                    content=text,
                    token_count=estimate_tokens(text),
                )
        except StorageError as exc:  # the store logged it, once per kind of failure
            log.info("background message in %s not kept: %s", key, exc)
        except Exception:
            log.exception("keeping a background message in %s failed", key)

    @contextlib.asynccontextmanager
    async def _arrival(self, key: str) -> AsyncIterator[None]:
        """Hold the channel's arrival lock (FIFO); it is dropped once nobody holds or awaits it."""
        lock, users = self._arrivals.get(key, (asyncio.Lock(), 0))
        self._arrivals[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._arrivals[key]
            if users == 1:
                del self._arrivals[key]
            else:
                self._arrivals[key] = (lock, users - 1)

    async def _transcribe(
        self, msg: IncomingMessage, target: ReplyTarget, channel_id: int
    ) -> str | None:
        """The voice note's text, or None after telling the user why there is none."""
        assert msg.audio is not None
        if self.transcriber is None:
            reason = MSG_NO_STT
        else:
            settings = await self._channel_settings(channel_id)
            await target.typing()
            started = time.perf_counter()
            try:
                transcript = await self.transcriber.transcribe(
                    msg.audio, msg.audio_mime, language=settings.stt_language
                )
            except AudioError as exc:
                reason = exc.user_message
            else:
                metrics.STT_SECONDS.observe(time.perf_counter() - started)
                if self.settings.stt.show_transcript:
                    await target.notice(f"🎤 “{transcript}”")
                return transcript
        # The turn is recorded even though it cannot be answered (status 'failed').
        await self.store.record_failed_input(
            channel_id,
            author_id=msg.user_id,
            author_name=msg.user_name,
            note=f"[voice note: {reason}]",
        )
        await target.notice(reason)
        return None

    async def _count_tokens(self, text: str) -> int:
        return await self.llm.tokenize(text) or estimate_tokens(text)

    async def _channel_settings(self, channel_id: int) -> ChannelSettings:
        return await ChannelSettings.load(self.store, self.settings.engine, channel_id)

    async def _reply(
        self,
        msg: IncomingMessage,
        target: ReplyTarget,
        turn: Turn,
        text: str,
        turn_id: str,
        slot: TurnSlot,
    ) -> None:
        try:
            settings, request, chosen = await self._prepare(msg, turn, text)
            await self.store.update_message(turn.reply_row, status="streaming")
        except Exception:
            # Nothing was shown yet: the reply row must not stay 'queued' until the next start.
            with contextlib.suppress(Exception):
                await self._store_reply(turn, "", "failed")
            raise
        live = isinstance(target, LiveSpeechTarget)
        voice = self._voice_reply(msg, settings, live=live)
        if voice is not None and isinstance(target, LiveSpeechTarget):
            target.speak_live(voice.sentences())  # heard sentence by sentence as it streams
        stream = self.scheduler.open(target)
        streamed = _Streamed()
        typing = asyncio.create_task(self._keep_typing(target, streamed))
        started = time.perf_counter()
        status = "failed"
        note = ""
        try:
            async with asyncio.timeout(self.settings.llm.reply_timeout_s):
                await self._consume(chosen, request, stream, voice, streamed, turn, started)
            status = "complete"
        except TimeoutError:  # the whole-reply limit (the LLM client's own become LLMTimeout)
            log.warning("reply in %s stopped after %g s", target.chat_key, self._reply_timeout)
            note = MSG_REPLY_TIMEOUT.format(seconds=self._reply_timeout)
            status = "partial" if streamed.answer else "failed"
        except _ChatRefused as exc:
            # Blocked or gone: stop at once, so the slot and the chat's line are free again.
            log.warning("reply in %s stopped: the chat refused it (%s)", target.chat_key, exc)
            status = "partial" if streamed.answer else "failed"
        except _ReplyCapped as exc:
            log.warning("reply in %s cut at its %s", target.chat_key, exc)
            note = MSG_REPLY_CAPPED
            status = "partial" if streamed.answer else "failed"
        except LLMUnavailable as exc:
            log.warning("no LLM backend answered: %s", exc)
            note = MSG_LLM_DOWN
        except LLMRequestRejected as exc:
            note = MSG_LLM_REJECTED.format(reason=str(exc)[:200])
        except LLMTimeout:
            note = MSG_TIMEOUT
            status = "partial" if streamed.answer else "failed"
        except LLMStreamBroken as exc:
            log.warning("LLM stream broke: %s", exc)
            note = MSG_CUT_OFF
            status = "partial" if streamed.answer else "failed"
        except asyncio.CancelledError:
            # Cancelled (Ctrl-C in the console, shutdown): keep what the user saw.
            await self._store_reply(
                turn, streamed.answer, "partial" if streamed.answer else "failed"
            )
            typing.cancel()
            # Best effort and brief: the platform may be unreachable too, and a shutdown waits.
            finish = asyncio.ensure_future(
                stream.finish(stream.text + " …" if stream.text else None)
            )
            try:
                async with asyncio.timeout(_FINISH_WHEN_CANCELLED_S):
                    await asyncio.shield(finish)
            except (TimeoutError, DeliveryError, RetryAfter, OSError):
                await stream.cancel()
            if voice is not None:
                await voice.cancel()
            raise
        # The turn's error boundary: close the reply, store it, tell the user.
        except Exception:
            log.exception("turn %s in %s failed while streaming", turn_id, target.chat_key)
            note = MSG_INTERNAL.format(ref=turn_id)
            status = "partial" if streamed.answer else "failed"
        finally:
            typing.cancel()
            # Generation is over: the final edits, 429 waits and the voice note go on without
            # the LLM slot (the channel's next turn still waits for them).
            slot.release()
        if status == "complete" and not streamed.answer.strip():
            status, note = "failed", MSG_EMPTY
        metrics.REPLIES.labels(msg.platform, status).inc()
        await self._conclude(target, stream, voice, turn, streamed.answer, status, note, turn_id)

    async def _prepare(
        self, msg: IncomingMessage, turn: Turn, text: str
    ) -> tuple[ChannelSettings, LLMRequest, ChatModel]:
        """The chat's settings, its model and the LLM request: persona, what memory recalls,
        the group's background, history in budget, the message (and its pictures)."""
        settings = await self._channel_settings(turn.channel_id)
        chosen = self.models.pick(settings.model)
        parts: list[dict[str, Any]] = []
        if msg.images:
            if await self.models.sees_images(chosen):
                images = msg.images[:MAX_IMAGES_PER_MESSAGE]
                parts = await asyncio.to_thread(image_parts, images)  # megabytes of base64
            else:  # the adapter asked first; the chat switched models since
                log.info("pictures left out: model %r does not take images", chosen.name)
        rows = await self.store.history(turn.channel_id, turn.user_row, _HISTORY_ROWS)
        kept = fit_rows(rows, settings.history_tokens)
        recalled = await self._recall(
            msg, turn, text, settings, kept, complete=len(rows) == len(kept) < _HISTORY_ROWS
        )
        bot_name = self.settings.engine.bot_name
        system = with_recalled(
            system_prompt(settings, bot_name), recalled, user_name=msg.user_name, bot_name=bot_name
        )
        request = build_request(
            api=chosen.client.api,
            prompt_format=self.settings.llm.prompt_format,
            system=system,
            history=[PromptTurn(row.role, row.content) for row in kept],
            user_text=text,
            settings=settings,
            bot_name=bot_name,
            images=parts,
            model=chosen.model,
        )
        return settings, request, chosen

    async def _recall(
        self,
        msg: IncomingMessage,
        turn: Turn,
        text: str,
        settings: ChannelSettings,
        kept: list[StoredMessage],
        *,
        complete: bool,
    ) -> Recalled:
        """Facts, older turns beyond the history (unless `complete`: the history is all there
        is) and, in groups, the background since the oldest turn shown (or all of it)."""
        terms = search_terms(text)
        facts, used = await recall_facts(
            self.store,
            msg.platform,
            msg.user_id,
            terms,
            private=msg.is_private,
            budget=settings.memory_tokens,
        )
        oldest = kept[0].id if kept else turn.user_row
        earlier = []
        if not complete:
            earlier = await recall_turns(
                self.store,
                turn.channel_id,
                turn.user_row,
                oldest,
                terms,
                budget=settings.memory_tokens - used,
            )
        background = []
        if settings.group_context and not msg.is_private:
            # What was said around the turns shown; all of it when the whole history is shown.
            after = 0 if complete or not kept else kept[0].id
            background = await recall_background(
                self.store,
                turn.channel_id,
                turn.user_row,
                after,
                budget=settings.group_context_tokens,
            )
        return Recalled(facts, earlier, background)

    async def _conclude(
        self,
        target: ReplyTarget,
        stream: ReplyStream,
        voice: VoiceReply | None,
        turn: Turn,
        answer: str,
        status: str,
        note: str,
        turn_id: str,
    ) -> None:
        """Store the reply, show its final text (no marker) with the note, then the voice."""
        if voice is not None and isinstance(target, LiveSpeechTarget):
            # Spoken live: its last sentences go on whatever becomes of the text.
            if status in ("complete", "partial"):
                voice.end()
            else:
                await voice.cancel()
            voice = None
        try:
            await self._store_reply(turn, answer, status)
        # What was streamed is shown even if it cannot be stored.
        except Exception:
            log.exception("turn %s: the reply could not be stored", turn_id)
        try:
            if stream.text:
                await stream.finish(stream.text + (f"\n\n{note}" if note else ""))
            else:
                await stream.cancel()
                if note:
                    await target.notice(note)
        except DeliveryError as exc:
            # The reply is stored; the chat refused it (bot removed, message deleted, ...).
            log.warning("could not deliver the reply to %s: %s", target.chat_key, exc)
            if voice is not None:
                await voice.cancel()
            return
        # The stream's writer failed: free its budget, tell the user.
        except Exception:
            log.exception("turn %s: the reply could not be shown in %s", turn_id, target.chat_key)
            await stream.cancel()
            if voice is not None:
                await voice.cancel()
            await _tell(target, MSG_INTERNAL.format(ref=turn_id))
            return
        if voice is not None:
            await self._send_voice(voice, target, status)

    async def _consume(
        self,
        chosen: ChatModel,
        request: LLMRequest,
        stream: ReplyStream,
        voice: VoiceReply | None,
        streamed: _Streamed,
        turn: Turn,
        started: float,
    ) -> None:
        show_reasoning = self.settings.llm.reasoning == "show"
        last_save = time.monotonic()
        caps = _Caps(self.settings.engine, stream)
        # aclosing: leaving the loop early (a cap, the time limit, a refused chat) closes the
        # connection at once, which is how llama-server learns to free the slot.
        # The chat's model: its own servers only, when it has them.
        async with contextlib.aclosing(
            chosen.client.stream(request, affinity=str(turn.channel_id))
        ) as events:
            async for event in events:
                caps.check(streamed, event.reasoning)
                self._show_reasoning(event.reasoning, stream, streamed, show_reasoning)
                if not event.text:
                    continue
                if streamed.first_token_at is None:
                    streamed.first_token_at = time.perf_counter()
                    metrics.TIME_TO_FIRST_TOKEN.observe(streamed.first_token_at - started)
                if streamed.reasoning_open:
                    stream.append("\n\n")
                    streamed.reasoning_open = False
                piece = caps.fit(
                    streamed, event.text.lstrip() if not streamed.answer else event.text
                )
                if not piece:
                    continue
                streamed.answer += piece
                stream.append(piece)
                if voice is not None:
                    voice.feed(piece)
                metrics.TOKENS_OUT.inc()
                if time.monotonic() - last_save > _SAVE_PARTIAL_EVERY_S:
                    last_save = time.monotonic()
                    await self.store.update_message(turn.reply_row, content=streamed.answer)
                caps.check(streamed, "")

    @staticmethod
    def _show_reasoning(
        reasoning: str, stream: ReplyStream, streamed: _Streamed, show: bool
    ) -> None:
        if reasoning and show:
            quoted = reasoning.replace("\n", "\n> ")
            stream.append(quoted if streamed.reasoning_open else f"> 💭 {quoted}")
            streamed.reasoning_open = True

    @property
    def _reply_timeout(self) -> float:
        return self.settings.llm.reply_timeout_s

    async def _store_reply(self, turn: Turn, answer: str, status: str) -> None:
        answer = answer.rstrip()
        await self.store.update_message(
            turn.reply_row,
            content=answer,
            status=status,  # type: ignore[arg-type]
            token_count=estimate_tokens(answer),
        )

    async def _keep_typing(self, target: ReplyTarget, streamed: _Streamed) -> None:
        while streamed.first_token_at is None:
            try:
                await target.typing()
            except (DeliveryError, RetryAfter, OSError):
                pass  # a failed indicator must not end the reply
            except Exception:
                log.exception("typing indicator in %s failed; no more of them", target.chat_key)
                return
            await asyncio.sleep(_TYPING_EVERY_S)

    def _voice_reply(
        self, msg: IncomingMessage, settings: ChannelSettings, *, live: bool = False
    ) -> VoiceReply | None:
        wanted = (
            live  # a voice channel: every answer is spoken
            or msg.wants_voice
            or settings.voice_mode == "always"
            or (settings.voice_mode == "reply-to-voice" and msg.audio is not None)
        )
        if not wanted or self.synthesizer is None:
            return None
        from bot.speech.voice_reply import VoiceReply

        return VoiceReply(self.synthesizer, max_chars=self.settings.tts.max_chars)

    async def _send_voice(self, voice: VoiceReply, target: ReplyTarget, status: str) -> None:
        if status not in ("complete", "partial"):
            await voice.cancel()  # nothing worth speaking: stop the queued sentences
            return
        try:
            clip = await voice.finish()
        except SpeechSynthesisError as exc:
            log.warning("voice reply failed: %s", exc)
            await target.notice(MSG_NO_VOICE)
            return
        if clip is not None:
            await target.send_voice(clip)


async def _show_position(target: ReplyTarget, position: int) -> None:
    """A courtesy "#n in line" notice: its failure must never cost the turn its answer."""
    try:
        await target.queued(position)
    except (DeliveryError, RetryAfter, OSError) as exc:
        log.info("queue position not shown in %s: %s", target.chat_key, exc)
    except Exception:
        log.exception("queue position in %s failed", target.chat_key)


async def _tell(target: ReplyTarget, text: str) -> None:
    """A best-effort notice from the error boundary: its own failure is only logged."""
    try:
        await target.notice(text)
    except Exception as exc:  # noqa: BLE001 - the platform may be what failed
        log.warning("could not tell %s about a failed turn: %s", target.chat_key, exc)
