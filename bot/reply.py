"""One reply while it is written: the model's stream into the chat, its caps, its end.

The engine prepares a turn (the chat's settings, the model, the request) and hands a
`ReplyState` to `ReplyLoop.run`, which streams the answer into the chat, keeps it under the
whole-reply caps and the time limit, stores it, shows its final text and sends the voice. A
request the answer cache knows (bot/answer_cache.py) is answered from it, whole, without the LLM.
When the model calls tools, each round's calls are carried out by the reply's `ToolTurn`
(bot/tools/turn.py) and the model is asked again, until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot import metrics
from bot.answer_cache import AnswerCache, CachedAnswer
from bot.config import Settings
from bot.delivery.stream import PartShown, PartSink, ReplyStream
from bot.errors import (
    DeliveryError,
    LLMRequestRejected,
    LLMStreamBroken,
    LLMTimeout,
    LLMUnavailable,
    RetryAfter,
    SpeechSynthesisError,
    StorageError,
)
from bot.llm import LLMRequest, estimate_tokens
from bot.messages import Msg, say
from bot.models import ChatModel
from bot.queue import TurnSlot
from bot.storage import HistoryStore, Status, Turn
from bot.tools.calls import ToolCall, ToolCallAssembler
from bot.types import (
    AmendableTurn,
    ImageInput,
    IncomingMessage,
    LiveSpeechTarget,
    ReplyOutcomeTarget,
    ReplyTarget,
)

if TYPE_CHECKING:
    from bot.speech.voice_reply import VoiceReply
    from bot.tools.turn import ToolTurn

log = logging.getLogger(__name__)

_TYPING_EVERY_S = 4.0  # platforms show "typing…" for about 5 s per call
_FINISH_WHEN_CANCELLED_S = 1.0  # a cancelled reply's last edit, before the stream is dropped
_SAVE_PARTIAL_EVERY_S = 2.0  # how much streamed text a hard crash can lose
_SHOWN: tuple[Status, ...] = ("complete", "partial")  # replies worth their voice
# A reply part's message id is recorded before the stream's next call: a database that does not
# answer may hold the reply up this long, no longer.
_RECORD_PART_S = 5.0


class _ReplyCapped(Exception):
    """A reply reached `engine.max_reply_chars` or `engine.max_reply_messages`."""


class _ChatRefused(Exception):
    """The chat refused the reply for good (blocked, deleted): stop generating it."""


@dataclass(frozen=True, slots=True)
class TurnState:
    """One turn once its message is stored: what it answers, and where the answer goes."""

    msg: IncomingMessage
    target: ReplyTarget
    ref: str  # the turn's id, in logs and in the notice of an unexpected error
    rows: Turn | None  # the stored user message and the reply's row; None: nothing is stored
    text: str  # what is answered: the message's text, after a recording's transcript
    lang: str  # the language Parley speaks in this turn (bot/languages.py)
    images: tuple[ImageInput, ...] = ()  # its pictures, for a model that takes images
    amendable: AmendableTurn | None = None  # its words may still grow (a voice utterance)

    @property
    def withdrawn(self) -> bool:
        """The speaker went on: this answer is void (the turn will be amended)."""
        return self.amendable is not None and self.amendable.withdrawn

    @property
    def stored(self) -> Turn:
        """The rows of a turn that is stored (a conversation the caller keeps has none)."""
        if self.rows is None:
            raise ValueError(f"turn {self.ref} is not stored")
        return self.rows


@dataclass(slots=True)
class ReplyState:
    """One turn's reply from its request to its stored end: what every step reads and adds."""

    turn: TurnState
    model: ChatModel
    request: LLMRequest
    stream: ReplyStream
    voice: VoiceReply | None
    answer: str = ""  # the answer's text so far
    reasoning_chars: int = 0  # reasoning streamed so far (it counts toward the character cap)
    reasoning_open: bool = False  # a quoted reasoning block is being shown
    first_token_at: float | None = None
    status: Status = "failed"
    note: str = ""  # said after the text (or alone): why the reply stopped
    tools: ToolTurn | None = None  # the tool rounds, when the model is offered tools
    after_tools: bool = False  # a tool line ends what is shown: the next text goes below it
    usage: dict[str, Any] = field(default_factory=dict)  # the LLM's token counts and timings
    cached: bool = False  # answered from the answer cache, without the LLM

    def ended(self, status: Status, note: str = "") -> None:
        """The reply stopped; a partial one keeps what was streamed."""
        self.status = status if status != "partial" or self.answer else "failed"
        self.note = note

    def tool_exchange(self) -> str | None:
        """The tool calls and results to store with the reply (None: there were none)."""
        return self.tools.exchange() if self.tools is not None else None


class ReplyLoop:
    """Streams replies: the caps, the time limit, typing, the store and the voice note."""

    def __init__(self, settings: Settings, store: HistoryStore) -> None:
        self.settings = settings
        self.store = store
        self.cache = AnswerCache(settings.cache, store)

    async def run(self, state: ReplyState, slot: TurnSlot) -> None:
        """Stream the reply (or take it from the answer cache), conclude it, and free the LLM
        slot as soon as generation ends. Only a complete reply is kept in the cache."""
        key = await self.cache.key(state.model.client, state.request)  # None: the cache is off
        cached = await self.cache.find(key) if key is not None else None
        if cached is not None:
            slot.release()
            self._answer_from_cache(state, cached)
        else:
            await self._generate(state, slot)
        metrics.REPLIES.labels(state.turn.msg.platform, state.status).inc()
        await self._conclude(state)
        if key is not None and cached is None and state.status == "complete":
            await self.cache.keep(key, state.answer.rstrip(), state.usage)

    def _answer_from_cache(self, state: ReplyState, cached: CachedAnswer) -> None:
        state.cached = True
        state.first_token_at = time.perf_counter()
        state.answer = cached.text
        state.usage = dict(cached.usage)
        if state.voice is not None:
            state.voice.feed(cached.text)  # spoken as usual
        state.ended("complete")

    async def _generate(self, state: ReplyState, slot: TurnSlot) -> None:
        target = state.turn.target
        timeout = self.settings.llm.reply_timeout_s
        typing = asyncio.create_task(self._keep_typing(state))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self._consume(state, started)
            state.ended("complete")
        except TimeoutError:  # the whole-reply limit (the LLM client's own become LLMTimeout)
            log.warning("reply in %s stopped after %g s", target.chat_key, timeout)
            state.ended("partial", say(Msg.REPLY_TIMEOUT, lang=state.turn.lang, seconds=timeout))
        except _ChatRefused as exc:
            # Blocked or gone: stop at once, so the slot and the chat's line are free again.
            log.warning("reply in %s stopped: the chat refused it (%s)", target.chat_key, exc)
            state.ended("partial")
        except _ReplyCapped as exc:
            log.warning("reply in %s cut at its %s", target.chat_key, exc)
            state.ended("partial", say(Msg.REPLY_CAPPED, lang=state.turn.lang))
        except LLMUnavailable as exc:
            log.warning("no LLM backend answered: %s", exc)
            state.ended("failed", say(Msg.LLM_DOWN, lang=state.turn.lang))
        except LLMRequestRejected as exc:
            state.ended(
                "failed", say(Msg.LLM_REJECTED, lang=state.turn.lang, reason=str(exc)[:200])
            )
        except LLMTimeout:
            state.ended("partial", say(Msg.LLM_TIMEOUT, lang=state.turn.lang))
        except LLMStreamBroken as exc:
            log.warning("LLM stream broke: %s", exc)
            state.ended("partial", say(Msg.CUT_OFF, lang=state.turn.lang))
        except asyncio.CancelledError:
            typing.cancel()
            await self._cancelled(state)
            raise
        # The turn's error boundary: close the reply, store it, tell the user.
        except Exception:
            log.exception("turn %s in %s failed while streaming", state.turn.ref, target.chat_key)
            state.ended("partial", say(Msg.INTERNAL, lang=state.turn.lang, ref=state.turn.ref))
        finally:
            typing.cancel()
            # Generation is over: the final edits, 429 waits and the voice note go on without
            # the LLM slot (the channel's next turn still waits for them).
            slot.release()
        if state.status == "complete" and not state.answer.strip():
            state.ended("failed", say(Msg.EMPTY_REPLY, lang=state.turn.lang))

    async def _consume(self, state: ReplyState, started: float) -> None:
        """Stream rounds until the model answers: after a round that asked for tools, the
        tools run and the model is asked again with their results."""
        tools = state.tools
        while True:
            if tools is not None:
                tools.offer()
            calls = await self._stream_round(state, started)
            if not calls:
                return
            if tools is None or not tools.offered:
                log.info("the model asked for tools it was not offered: ignored")
                return
            state.reasoning_open = False
            await tools.run(calls, state.answer)
            state.after_tools = True
            self._check(state, "")

    async def _stream_round(self, state: ReplyState, started: float) -> list[ToolCall]:
        """Stream one response into the chat; the tool calls it asked for."""
        show_reasoning = self.settings.llm.reasoning == "show"
        last_save = time.monotonic()
        stream = state.stream
        calls = ToolCallAssembler()
        rows = state.turn.rows
        # aclosing: leaving the loop early (a cap, the time limit, a refused chat) closes the
        # connection at once, which is how llama-server learns to free the slot.
        # The chat's model: its own servers only, when it has them.
        affinity = str(rows.channel_id) if rows is not None else None
        async with contextlib.aclosing(
            state.model.client.stream(state.request, affinity=affinity)
        ) as events:
            async for event in events:
                calls.feed(event.tool_calls)
                if event.usage:
                    state.usage.update(event.usage)
                self._check(state, event.reasoning)
                if event.reasoning and show_reasoning:
                    quoted = event.reasoning.replace("\n", "\n> ")
                    if not state.reasoning_open:
                        self._below_tools(state)
                    stream.append(quoted if state.reasoning_open else f"> 💭 {quoted}")
                    state.reasoning_open = True
                if not event.text:
                    continue
                if state.first_token_at is None:
                    state.first_token_at = time.perf_counter()
                    metrics.TIME_TO_FIRST_TOKEN.observe(state.first_token_at - started)
                if state.reasoning_open:
                    stream.append("\n\n")
                    state.reasoning_open = False
                text = event.text
                if not state.answer or state.after_tools:
                    text = text.lstrip()
                    if not text:
                        continue
                if self._below_tools(state) and state.answer:
                    # What the model wrote before its tool calls is a paragraph of its own.
                    state.answer += "\n\n"
                    if state.voice is not None:
                        state.voice.feed("\n\n")
                piece = self._fit(state, text)
                if not piece:
                    continue
                self._add(state, piece)
                metrics.TOKENS_OUT.inc()
                if rows is not None and time.monotonic() - last_save > _SAVE_PARTIAL_EVERY_S:
                    last_save = time.monotonic()
                    await self.store.update_message(rows.reply_row, content=state.answer)
                self._check(state, "")
        return calls.finish()

    @staticmethod
    def _add(state: ReplyState, piece: str) -> None:
        """Answer text: shown, kept and spoken."""
        state.answer += piece
        state.stream.append(piece)
        if state.voice is not None:
            state.voice.feed(piece)

    @staticmethod
    def _below_tools(state: ReplyState) -> bool:
        """Start a new paragraph under a tool line, if one ends what is shown; whether it did."""
        if not state.after_tools:
            return False
        state.after_tools = False
        state.stream.append("\n\n")
        return True

    def _fit(self, state: ReplyState, piece: str) -> str:
        """The part of `piece` that still fits under the character cap."""
        room = self.settings.engine.max_reply_chars - len(state.answer) - state.reasoning_chars
        return piece[: max(0, room)]

    def _check(self, state: ReplyState, reasoning: str) -> None:
        """Raise `_ChatRefused` if the chat refused the reply, `_ReplyCapped` at a cap."""
        stream = state.stream
        if stream.refused is not None:
            raise _ChatRefused(stream.refused)
        max_chars = self.settings.engine.max_reply_chars
        max_messages = self.settings.engine.max_reply_messages
        state.reasoning_chars += len(reasoning)
        if len(state.answer) + state.reasoning_chars >= max_chars:
            raise _ReplyCapped(f"{max_chars}-character cap")
        # The writer may lag behind the text (it waits for rate budgets): count the messages the
        # text needs as well as those it already has.
        full = len(state.answer) >= max_messages * stream.max_chars
        if full or stream.parts > max_messages:
            raise _ReplyCapped(f"{max_messages}-message cap")

    async def _cancelled(self, state: ReplyState) -> None:
        """Cancelled (Ctrl-C in the console, shutdown): keep what the user saw. A withdrawn
        answer keeps nothing (the engine marks its row): nobody saw it."""
        if state.turn.withdrawn:
            await state.stream.cancel()
            if state.voice is not None:
                await state.voice.cancel()
            return
        await self._store(state, "partial" if state.answer else "failed")
        stream = state.stream
        # Best effort and brief: the platform may be unreachable too, and a shutdown waits.
        finish = asyncio.ensure_future(stream.finish(stream.text + " …" if stream.text else None))
        try:
            async with asyncio.timeout(_FINISH_WHEN_CANCELLED_S):
                await asyncio.shield(finish)
        except (TimeoutError, DeliveryError, RetryAfter, OSError):
            await stream.cancel()
        if state.voice is not None:
            await state.voice.cancel()

    async def _conclude(self, state: ReplyState) -> None:
        """Store the reply, show its final text (no marker) with the note, then the voice."""
        target, stream, voice, note = state.turn.target, state.stream, state.voice, state.note
        if isinstance(target, ReplyOutcomeTarget):
            target.reply_ended(state.answer.rstrip(), state.status, note)
        if voice is not None and isinstance(target, LiveSpeechTarget):
            # Spoken live: its last sentences go on whatever becomes of the text.
            if state.status in _SHOWN:
                voice.end()
            else:
                await voice.cancel()
            voice = None
        try:
            await self._store(state, state.status)
        # What was streamed is shown even if it cannot be stored.
        except Exception:
            log.exception("turn %s: the reply could not be stored", state.turn.ref)
        # A cached answer was never streamed: it is shown whole, in one message.
        shown = stream.text or state.answer
        try:
            if shown:
                await stream.finish(shown + (f"\n\n{note}" if note else ""))
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
            log.exception(
                "turn %s: the reply could not be shown in %s", state.turn.ref, target.chat_key
            )
            await stream.cancel()
            if voice is not None:
                await voice.cancel()
            await tell(target, say(Msg.INTERNAL, lang=state.turn.lang, ref=state.turn.ref))
            return
        if voice is not None:
            await self._send_voice(voice, state)

    async def _store(self, state: ReplyState, status: Status) -> None:
        if state.turn.rows is not None:  # a conversation the caller keeps stores nothing
            await store_reply(
                self.store, state.turn.rows, state.answer, status, state.tool_exchange()
            )

    async def _send_voice(self, voice: VoiceReply, state: ReplyState) -> None:
        if state.status not in _SHOWN:
            await voice.cancel()  # nothing worth speaking: stop the queued sentences
            return
        try:
            clip = await voice.finish()
        except SpeechSynthesisError as exc:
            log.warning("voice reply failed: %s", exc)
            await state.turn.target.notice(say(Msg.NO_VOICE, lang=state.turn.lang))
            return
        if clip is not None:
            await state.turn.target.send_voice(clip)

    async def _keep_typing(self, state: ReplyState) -> None:
        target = state.turn.target
        while state.first_token_at is None:
            try:
                await target.typing()
            except (DeliveryError, RetryAfter, OSError):
                pass  # a failed indicator must not end the reply
            except Exception:
                log.exception("typing indicator in %s failed; no more of them", target.chat_key)
                return
            await asyncio.sleep(_TYPING_EVERY_S)


async def store_reply(
    store: HistoryStore, rows: Turn, answer: str, status: Status, tool_exchange: str | None = None
) -> None:
    """Store a reply's final text and status (and its tool calls and results, if any)."""
    answer = answer.rstrip()
    await store.update_message(
        rows.reply_row,
        content=answer,
        status=status,
        token_count=estimate_tokens(answer),
        tool_exchange=tool_exchange,
    )


def part_recorder(store: HistoryStore, reply_row: int) -> PartSink:
    """Records a reply's platform messages as the stream reports them, so a process killed
    mid-reply leaves their ids for the next start to finish them (`bot.repair`)."""

    async def record(shown: PartShown) -> None:
        try:
            async with asyncio.timeout(_RECORD_PART_S):
                if shown.done:
                    await store.part_done(reply_row, shown.part, shown.message_id)
                else:
                    await store.part_shown(reply_row, shown.part, shown.message_id)
        except (StorageError, TimeoutError) as exc:  # the reply goes on; only a crash needs it
            log.info("reply %d: message %s not recorded: %s", reply_row, shown.message_id, exc)
        # Whatever went wrong with the record, the reply itself must go on.
        except Exception:
            log.exception("reply %d: recording message %s failed", reply_row, shown.message_id)

    return record


async def tell(target: ReplyTarget, text: str) -> None:
    """A best-effort notice from an error boundary: its own failure is only logged."""
    try:
        await target.notice(text)
    except Exception as exc:  # noqa: BLE001 - the platform may be what failed
        log.warning("could not tell %s about a failed turn: %s", target.chat_key, exc)
