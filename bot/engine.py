"""The conversation engine: one normalised message in, a streamed and stored reply out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.amend import store_amendable, withdrawn_answer
from bot.attachments import AttachmentPolicy, Unpacked, stored_text
from bot.channel_config import ChannelSettings, chat_language
from bot.config import Settings
from bot.delivery.scheduler import EditScheduler
from bot.errors import (
    AlreadyHandled,
    AudioError,
    DeliveryError,
    MessageNotStored,
    RetryAfter,
    StorageError,
    StorageProblem,
    storage_trouble,
)
from bot.hold import StorageHold
from bot.languages import speech_language, turn_language
from bot.llm import LLMClient, LLMRequest, estimate_tokens
from bot.memory import Recalled, recall_background, recall_facts, recall_turns, search_terms
from bot.messages import Msg, phrase, say
from bot.models import ChatModel, ModelCatalog
from bot.prompt import (
    build_request,
    fit_rows,
    image_parts,
    prompt_turns,
    system_prompt,
    with_recalled,
)
from bot.queue import TurnQueue, TurnSlot
from bot.ratelimit import UserRateLimiter
from bot.reply import ReplyLoop, ReplyState, TurnState, part_recorder, store_reply, tell
from bot.stateless import StatelessChat, stateless_request
from bot.storage import HistoryStore, StoredMessage, Turn
from bot.tools.turn import ToolTurn
from bot.types import (
    AmendableTurn,
    Delivery,
    ImageInput,
    IncomingMessage,
    LiveSpeechTarget,
    ReplyTarget,
)

if TYPE_CHECKING:
    from bot.speech.stt import Transcriber
    from bot.speech.tts import SpeechSynthesizer
    from bot.speech.voice_reply import VoiceReply
    from bot.tools.hub import ToolHub

log = logging.getLogger(__name__)

_HISTORY_ROWS = 400  # rows read per prompt before the token budget trims them
_NOTHING = Unpacked()  # a message without attachments
_DIRECT = Delivery()  # a platform that neither confirms nor redelivers
_NEXT_ROW = sys.maxsize  # "after every stored row": the history a turn arriving now would see


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
        tools: ToolHub | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.llm = llm
        # The models a chat can pick (/model); the default is `llm`.
        self.models = models if models is not None else ModelCatalog(settings.llm, llm)
        self.scheduler = scheduler
        self.queue = TurnQueue(slots)
        self.rate = UserRateLimiter(settings.engine.user_messages_per_minute)
        self.attachments = AttachmentPolicy(settings, self._sees_images)
        self.replies = ReplyLoop(settings, store)
        self.hold = StorageHold()  # messages waiting while the store is out
        self._blocked = frozenset(settings.engine.blocked_users)
        # Per channel while its messages arrive: the lock, and how many hold or wait for it.
        self._arrivals: dict[str, tuple[asyncio.Lock, int]] = {}
        metrics.QUEUE_DEPTH.set_function(lambda: self.queue.depth)
        metrics.LLM_SLOTS_IN_USE.set_function(lambda: self.queue.in_use)
        metrics.LLM_SLOTS_TOTAL.set_function(lambda: self.queue.slots)
        self.transcriber = transcriber
        self.synthesizer = synthesizer
        self.tools = tools  # the configured tool servers (None: none are)

    # ----------------------------------------------------------------- messages

    async def handle(
        self,
        msg: IncomingMessage,
        target: ReplyTarget,
        delivery: Delivery = _DIRECT,
        *,
        amend: AmendableTurn | None = None,
    ) -> None:
        """Answer one message (text, voice, pictures); every user-visible outcome goes through
        `target`.

        `delivery.stored()` is called once the user's message is safely stored (or was stored
        by an earlier delivery of it: that one is not answered again). While the store is out
        the message waits (`bot.hold`); given up, the user is told why, unless the platform
        keeps the update to deliver it again: then `MessageNotStored` is raised and the adapter
        leaves the update unconfirmed. `amend`: a turn that may still grow (see `AmendableTurn`);
        a second call with it amends the turn the first one stored.

        The turn's error boundary: an unexpected error is logged with the chat and a turn id,
        the user is told, and the engine goes on serving this chat and every other.
        """
        turn_id = secrets.token_hex(4)
        try:
            await self._handle(msg, target, turn_id, delivery, amend)
        except MessageNotStored as exc:
            if not exc.final:
                raise
            await tell(target, say(exc.phrase, lang=await self._told_in(msg)))
        except (DeliveryError, RetryAfter) as exc:
            # The chat refused what the turn had to say (a notice, the voice note): nobody to tell.
            log.warning("turn %s: %s refused a message: %s", turn_id, target.chat_key, exc)
        # The turn's error boundary: one broken turn must not end the bot.
        except Exception:
            log.exception("turn %s in %s failed unexpectedly", turn_id, msg.chat_ref)
            await tell(target, say(Msg.INTERNAL, lang=await self._told_in(msg), ref=turn_id))

    async def language(self, msg: IncomingMessage) -> str:
        """The language of `msg`'s turn: its chat's `language` setting, else the sender's."""
        return await chat_language(
            self.store, self.settings, msg.platform, msg.channel_key, msg.language
        )

    async def _told_in(self, msg: IncomingMessage) -> str:
        """The language of an error boundary's notice: whatever failed must not stop it."""
        try:
            return await self.language(msg)
        except Exception:  # noqa: BLE001 - the store may be what failed
            return turn_language(self.settings.engine.language, msg.language)

    async def _handle(
        self,
        msg: IncomingMessage,
        target: ReplyTarget,
        turn_id: str,
        delivery: Delivery,
        amend: AmendableTurn | None,
    ) -> None:
        metrics.MESSAGES_IN.labels(msg.platform, "voice" if msg.recording else "text").inc()
        if msg.user_ref in self._blocked:
            log.info("ignoring a message from blocked user %s", msg.user_ref)
            return
        text = msg.text.strip()
        if not text and not msg.attachments:
            return  # nothing to answer (a bare mention, say)
        # The chat's language is read where it is needed: a text message reaches the arrival
        # lock below without an await, so a chat's messages keep the order they came in.
        counted = amend is not None and amend.counted  # an amendment is the same message
        if not counted and not self.rate.allow(msg.user_ref):
            limit = self.settings.engine.user_messages_per_minute
            lang = await self.language(msg)
            await target.notice(say(Msg.SLOW_DOWN, lang=lang, limit=limit))
            return
        if amend is not None:
            amend.counted, amend.withdrawn = True, False
        limit = self.settings.engine.max_input_chars
        if len(text) > limit:
            lang = await self.language(msg)
            await target.notice(say(Msg.TOO_LONG, lang=lang, length=len(text), limit=limit))
            return
        unpacked = _NOTHING
        if msg.attachments:  # downloads run outside the arrival lock: other messages go on
            found = await self.attachments.unpack(msg, text, target, await self.language(msg))
            if found is None:
                return
            unpacked = found
        key = msg.chat_ref
        size = len(text.encode("utf-8", "replace")) + sum(len(i.data) for i in unpacked.images)
        # While the store is out the message waits in its place, its writes retried.
        place = self.hold.place(
            key,
            size,
            # The chat's own setting is in the store that fails: the configured language, else the
            # sender's.
            tell=functools.partial(
                _tell_delayed, target, turn_language(self.settings.engine.language, msg.language)
            ),
            until=delivery.keep_until,
            held=delivery.held,
            wait=delivery.wait,
        )
        handled = None if msg.handled_key is None else (msg.platform, msg.handled_key)
        rows: Turn | None
        # Messages of one channel are recorded and join its line in arrival order: the awaits
        # before that (a new channel's row, token counting over HTTP) finish in any order.
        async with place as waiting, self._arrival(key):
            try:
                # Checked in the arrival lock: an await before it would reorder the chat.
                await self._not_handled_yet(msg)
                channel_id = await waiting.run(
                    functools.partial(self.store.channel_id, msg.platform, msg.channel_key)
                )
                lang = await self.language(msg)
                if unpacked.recording is not None:
                    transcript = await self._transcribe(msg, target, channel_id, lang)
                    if transcript is None:
                        return
                    text = f"{transcript}\n\n{text}" if text else transcript
                if not text and not unpacked.images:
                    return
                stored = stored_text(text, unpacked.images)
                tokens = await self._count_tokens(stored)
                if amend is not None:  # a live utterance: no platform id, nothing to hold for
                    rows = await store_amendable(self.store, msg, channel_id, stored, tokens, amend)
                else:
                    rows = await waiting.run(
                        functools.partial(
                            self.store.start_turn,
                            channel_id,
                            author_id=msg.user_id,
                            author_name=msg.user_name,
                            content=stored,
                            token_count=tokens,
                            handled=handled,
                        )
                    )
            except StorageError as exc:
                # The store logged it (once per kind of failure); the user hears why.
                raise MessageNotStored(exc) from exc
            except AlreadyHandled:
                log.info("%s: message %s came again; answered already", key, msg.message_id)
                rows = None
        if delivery.stored is not None:
            delivery.stored()
        if rows is None:
            return
        # No await between the lock's release and joining the line (in turn()'s first step).
        # The store's turn lock keeps the channel's order across bot processes sharing one
        # PostgreSQL; it is taken at the head of the channel's line, before an LLM slot.
        gate = functools.partial(self.store.channel_turn, rows.channel_id, rows.reply_row)
        turn = TurnState(msg, target, turn_id, rows, text, lang, unpacked.images, amend)
        shown = functools.partial(_show_position, target, lang)
        async with withdrawn_answer(self.store, turn), self.queue.turn(key, shown, gate) as slot:
            await self._reply(turn, slot)

    async def warm(self, msg: IncomingMessage) -> None:
        """Have the chat's model cache its next prompt's start (persona, history) while `msg`
        is still being said (its text is not known yet), so the reply pays only for the new
        words. Best effort: failures are logged, never raised."""
        try:
            channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
            rows = Turn(channel_id, user_row=_NEXT_ROW, reply_row=_NEXT_ROW)
            lang = await self.language(msg)
            _, request, chosen = await self._request(msg, rows, "", (), lang)
            await chosen.client.warm(request, affinity=str(channel_id))
        except Exception as exc:  # noqa: BLE001 - a cold cache only costs time
            log.debug("prompt of %s not warmed: %s", msg.chat_ref, exc)

    async def _not_handled_yet(self, msg: IncomingMessage) -> None:
        """AlreadyHandled if an earlier delivery of `msg` was stored (a platform's redelivery),
        before a recording is transcribed again; a store that cannot say lets the message
        through: storing it claims the update in the same transaction, which decides."""
        if msg.handled_key is None:
            return
        try:
            handled = await self.store.was_handled(msg.platform, msg.handled_key)
        except StorageError:
            return
        if handled:
            raise AlreadyHandled(f"{msg.platform} update {msg.handled_key}")

    async def complete(self, chat: StatelessChat, target: ReplyTarget) -> ReplyState:
        """Answer a conversation the caller keeps (the HTTP API's chat completions) and store
        nothing: the model asked for, the default chat settings, and the same line of LLM slots,
        caps, time limit and answer cache as every turn. The reply's end reaches `target`."""
        metrics.MESSAGES_IN.labels(chat.platform, "text").inc()
        chosen = self.models.pick(chat.model)
        # Such a caller names no language: the configured one, else English.
        lang = turn_language(self.settings.engine.language, "")
        request = stateless_request(
            chat,
            api=chosen.client.api,
            prompt_format=self.settings.llm.prompt_format,
            settings=ChannelSettings.resolve(self.settings, {}),
            bot_name=self.settings.engine.bot_name,
            model=chosen.model,
            lang=lang,
        )
        ref = secrets.token_hex(4)
        # A line of its own: such a conversation waits for nothing but a free LLM slot.
        msg = IncomingMessage(
            chat.platform, f"{chat.user_id}:{ref}", chat.user_id, chat.user_id, chat.question
        )
        turn = TurnState(msg, target, ref, None, chat.question, lang)
        position = functools.partial(_show_position, target, lang)
        async with self.queue.turn(msg.chat_ref, position) as slot:
            state = ReplyState(
                turn, model=chosen, request=request, stream=self.scheduler.open(target), voice=None
            )
            await self.replies.run(state, slot)
        return state

    async def takes_images(self, platform: str, channel_key: str) -> bool:
        """Whether the model this chat uses takes images."""
        channel_id = await self.store.channel_id(platform, channel_key)
        chosen = self.models.pick((await self._channel_settings(channel_id)).model)
        return await self.models.sees_images(chosen)

    async def _sees_images(self, msg: IncomingMessage) -> bool:
        return await self.takes_images(msg.platform, msg.channel_key)

    async def observe(self, msg: IncomingMessage) -> None:
        """A group message the bot sees but was not addressed to: kept as background for the
        prompts of later turns there (`group_context`), never answered and never sent to the
        LLM on its own. Failures are logged, never raised: nobody waits for an answer."""
        if msg.is_private or msg.user_ref in self._blocked:
            return
        text = msg.text.strip()[: self.settings.engine.max_input_chars]
        if not text:
            return
        key = msg.chat_ref
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
                    handled=None if msg.handled_key is None else (msg.platform, msg.handled_key),
                )
        except StorageError as exc:  # the store logged it, once per kind of failure
            log.info("background message in %s not kept: %s", key, exc)
        except AlreadyHandled:
            log.info("background message %s in %s came again: kept already", msg.message_id, key)
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
        self, msg: IncomingMessage, target: ReplyTarget, channel_id: int, lang: str
    ) -> str | None:
        """The recording's text, or None after telling the user why there is none."""
        recording = msg.recording
        assert recording is not None
        try:
            self.attachments.check_recording(recording)  # by the size it claims: nothing read
            if self.transcriber is None:
                raise AudioError(phrase(Msg.NO_STT))
            settings = await self._channel_settings(channel_id)
            await target.typing()
            audio = await self.attachments.recording(recording)
            started = time.perf_counter()
            transcript = await self.transcriber.transcribe(
                audio, recording.mime or None, language=speech_language(settings.stt_language, lang)
            )
        except AudioError as exc:
            reason = say(exc.phrase, lang=lang)
        else:
            metrics.STT_SECONDS.observe(time.perf_counter() - started)
            if self.settings.stt.show_transcript:
                await target.notice(say(Msg.TRANSCRIPT, lang=lang, transcript=transcript))
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
        return await ChannelSettings.load(self.store, self.settings, channel_id)

    async def _reply(self, turn: TurnState, slot: TurnSlot) -> None:
        try:
            settings, request, chosen = await self._prepare(turn)
            await self.store.update_message(turn.stored.reply_row, status="streaming")
        except Exception:
            # Nothing was shown yet: the reply row must not stay 'queued' until the next start.
            with contextlib.suppress(Exception):
                await store_reply(self.store, turn.stored, "", "failed")
            raise
        target = turn.target
        live = isinstance(target, LiveSpeechTarget)
        voice = self._voice_reply(turn.msg, settings, turn.lang, live=live)
        if voice is not None and isinstance(target, LiveSpeechTarget):
            target.speak_live(voice.sentences())  # heard sentence by sentence as it streams
        stream = self.scheduler.open(
            target, on_part=part_recorder(self.store, turn.stored.reply_row)
        )
        tools = None
        if request.tools and self.tools is not None:
            tools = ToolTurn(
                self.tools,
                request,
                stream,
                self.store,
                msg=turn.msg,
                channel_id=turn.stored.channel_id,
                lang=turn.lang,
                live_voice=voice if live else None,
            )
        state = ReplyState(
            turn, model=chosen, request=request, stream=stream, voice=voice, tools=tools
        )
        await self.replies.run(state, slot)

    async def _prepare(self, turn: TurnState) -> tuple[ChannelSettings, LLMRequest, ChatModel]:
        """The chat's settings, its model and the LLM request: persona, what memory recalls,
        the group's background, history in budget, the message (and its pictures)."""
        return await self._request(turn.msg, turn.stored, turn.text, turn.images, turn.lang)

    async def _request(
        self,
        msg: IncomingMessage,
        rows: Turn,
        text: str,
        images: Sequence[ImageInput],
        lang: str,
    ) -> tuple[ChannelSettings, LLMRequest, ChatModel]:
        settings = await self._channel_settings(rows.channel_id)
        chosen = self.models.pick(settings.model)
        parts: list[dict[str, Any]] = []
        if images:
            if await self.models.sees_images(chosen):
                parts = await asyncio.to_thread(image_parts, images)  # megabytes of base64
            else:  # the pictures were read for the model of then; the chat switched since
                log.info("pictures left out: model %r does not take images", chosen.name)
        # Tools go to a chat that has them on, through the chat API (a base model has none).
        tools: list[dict[str, Any]] = []
        if self.tools is not None and settings.tools and chosen.client.api == "chat":
            tools = self.tools.openai_tools()
        history = await self.store.history(rows.channel_id, rows.user_row, _HISTORY_ROWS)
        kept = fit_rows(history, settings.history_tokens, exchanges=bool(tools))
        complete = len(history) == len(kept) < _HISTORY_ROWS
        recalled = await self._recall(msg, rows, text, settings, kept, complete=complete)
        bot_name = self.settings.engine.bot_name
        system = with_recalled(
            system_prompt(settings, bot_name, lang),
            recalled,
            user_name=msg.user_name,
            bot_name=bot_name,
        )
        request = build_request(
            api=chosen.client.api,
            prompt_format=self.settings.llm.prompt_format,
            system=system,
            history=prompt_turns(kept),
            user_text=text,
            settings=settings,
            bot_name=bot_name,
            images=parts,
            model=chosen.model,
            tools=tools,
            lang=lang,
        )
        return settings, request, chosen

    async def _recall(
        self,
        msg: IncomingMessage,
        rows: Turn,
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
        oldest = kept[0].id if kept else rows.user_row
        earlier = []
        if not complete:
            earlier = await recall_turns(
                self.store,
                rows.channel_id,
                rows.user_row,
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
                rows.channel_id,
                rows.user_row,
                after,
                budget=settings.group_context_tokens,
            )
        return Recalled(facts, earlier, background)

    def _voice_reply(
        self, msg: IncomingMessage, settings: ChannelSettings, lang: str, *, live: bool = False
    ) -> VoiceReply | None:
        wanted = (
            live  # a voice channel: every answer is spoken
            or msg.wants_voice
            or settings.voice_mode == "always"
            or (settings.voice_mode == "reply-to-voice" and msg.recording is not None)
        )
        if not wanted or self.synthesizer is None:
            return None
        from bot.speech.voice_reply import VoiceReply

        return VoiceReply(
            self.synthesizer, max_chars=self.settings.tts.max_chars, lang=lang, first_clause=live
        )


async def _tell_delayed(target: ReplyTarget, lang: str, problem: StorageProblem) -> None:
    """Tell a chat once that its answer waits for the store (a failure only logged)."""
    await tell(target, say(Msg.ANSWER_DELAYED, lang=lang, trouble=storage_trouble(problem)))


async def _show_position(target: ReplyTarget, lang: str, position: int) -> None:
    """A courtesy "#n in line" notice: its failure must never cost the turn its answer."""
    try:
        await target.queued(position, lang)
    except (DeliveryError, RetryAfter, OSError) as exc:
        log.info("queue position not shown in %s: %s", target.chat_key, exc)
    except Exception:
        log.exception("queue position in %s failed", target.chat_key)
