"""A conversation in a voice channel: utterances become turns, answers are spoken as they stream.

Each utterance the `VoiceSession` hears is transcribed by the speech module (Whisper, in its
worker pool) and becomes a turn of the engine in the conversation of the *linked text channel*:
the text channel `/join` was called from (which may be the voice channel's own chat). The turn
uses that channel's history, persona and settings; its answer is spoken into the call as the LLM
writes it, first clause first (`VoiceTurnTarget` is a `LiveSpeechTarget`), and, unless
`discord.voice_mirror_text` is off, both sides' words are written there too: the transcript as a
message of the bot ("🎙️ **Alice**: ..."), the answer as a reply to it, streamed through the
normal Discord reply target and its rate budgets.

Turn-taking: utterances are answered one at a time, in the order they ended, whoever spoke
them; transcription of the next one runs while the current answer is spoken. In wake-word mode
(`discord.voice_listen = "wake_word"`) only utterances that start with the bot's name
(`engine.bot_name`) are answered. Barge-in: someone starting to speak while the bot talks stops
its speech (the session does that within a frame; the rest of the answer's sentences are not
synthesised), unless `discord.voice_barge_in` is off.

Early answers (`discord.voice_early_answer`): at a speaker's first short pause, when nothing
else is being answered, what they said so far is answered at once as an `AmendableTurn`, heard
when the pause reaches `voice_pause_ms` (the turn is confirmed) or at once if it is a whole
sentence or question. If the speaker goes on, that answer is withdrawn (nothing of it heard, or
stopped as in a barge-in; its text never written) and the whole utterance amends the stored
turn. While someone speaks, the chat's prompt prefix is warmed in the LLM's cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord.channel import VocalGuildChannel

from adapters.discord.rules import AccessRules
from adapters.discord.targets import NOTICE_MENTIONS, ChannelTarget
from adapters.discord.voice.endings import sounds_finished
from adapters.discord.voice.opus import OPUS_RATE
from adapters.discord.voice.receiver import Utterance
from adapters.discord.voice.turn_target import VoiceTurnTarget
from adapters.discord.voice.wake import wake_word_rest
from bot import metrics
from bot.errors import AudioError
from bot.messages import Msg, say
from bot.types import AmendableTurn, IncomingMessage, ReplyTarget, TargetLimits

if TYPE_CHECKING:
    from adapters.discord.voice.session import VoiceSession
    from bot.speech.stt import Transcriber

log = logging.getLogger(__name__)

# Saying only the name ("Parley?") opens this window for that speaker's next utterance.
WAKE_FOLLOW_UP_S = 8.0
MIN_TRANSCRIPT_LETTERS = 2  # "Uh." or a lone "I": Whisper's reading of a cough or a breath
# Whisper starts on what was said at a pause this long (or at `voice_early_pause_ms` if that is
# shorter): its text is then (mostly) ready when the pause reaches the early answer's.
TRANSCRIBE_PAUSE_MS = 80
MIRROR_PREFIX = "🎙️"

Reply = Callable[[discord.Message], ChannelTarget]


class TurnHandler(Protocol):
    """The engine's `handle`, as a voice turn calls it."""

    def __call__(
        self, msg: IncomingMessage, target: ReplyTarget, *, amend: AmendableTurn | None = None
    ) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True, slots=True)
class VoiceTurnDeps:
    """What a voice conversation needs from the adapter and the core."""

    handle: TurnHandler
    transcriber: Transcriber
    language: Callable[[str], Coroutine[Any, Any, str]]  # Whisper's language for a channel key
    reply_target: Reply  # the normal Discord reply target for a mirrored transcript
    access: AccessRules  # who may talk to the bot where (the text channel's rules apply)
    bot_name: str
    limits: TargetLimits
    wake_word: bool
    barge_in: bool
    mirror_text: bool
    early_pause_ms: int | None = None  # answer at a pause this long (None: at the end)
    # The engine's `warm`: cache the chat's prompt prefix while someone speaks (None: don't).
    warm: Callable[[IncomingMessage], Coroutine[Any, Any, None]] | None = None


@dataclass(eq=False)
class _Guess:
    """An answer started at a speaker's short pause, before the turn is surely over."""

    utterance: Utterance  # as the pause promised it
    transcript: asyncio.Task[str | None]
    amend: AmendableTurn
    after: tuple[asyncio.Task[None], ...] = ()  # withdrawn answers of its turn, still ending
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)  # the pause lasted
    task: asyncio.Task[None] | None = None
    target: VoiceTurnTarget | None = None
    answered: bool = False  # it became a turn (else the confirmed utterance is looked at anew)
    transcribed_at: float | None = None

    def ending(self) -> tuple[asyncio.Task[None], ...]:
        """Withdrawn, it and the answers withdrawn before it that are still being cancelled."""
        return tuple(t for t in (*self.after, self.task) if t is not None and not t.done())


@dataclass(slots=True)
class _Heard:
    utterance: Utterance
    transcript: asyncio.Task[str | None]
    transcribed_at: float | None = None  # monotonic
    guess: _Guess | None = None  # the early answer this utterance confirms


@dataclass(frozen=True, slots=True)
class TurnTimes:
    """When one answered utterance went through each stage (monotonic seconds)."""

    speech_ended: float  # the VAD heard the pause its answer started at (short, or the end)
    transcribed: float  # Whisper's text was ready
    answer_started: float | None  # its first synthesised sentence went to the call
    early: bool = False  # answered from its first short pause


TIMES_KEPT = 100  # recent turns' stage times, for the logs and the benchmark


class VoiceConversation:
    """The bot in one voice channel, talking with whoever is there, one answer at a time."""

    def __init__(
        self,
        session: VoiceSession,
        *,
        guild: discord.Guild,
        text_channel: discord.abc.Messageable,
        text_channel_id: int,
        deps: VoiceTurnDeps,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.guild = guild
        self.text_channel = text_channel
        self.text_channel_id = text_channel_id
        self._deps = deps
        self._clock = clock
        self._heard: asyncio.Queue[_Heard | None] = asyncio.Queue()
        self._current: VoiceTurnTarget | None = None
        self._busy = False  # the answering loop is on an utterance
        self._wake_open: dict[int, float] = {}  # user -> until when a follow-up is addressed
        # The language Whisper transcribes this channel in (its setting, read at each utterance):
        # the wake word is matched in its spellings.
        self.language = "en"
        self._closing = False
        self.left_because: str | None = None  # set by whoever makes the bot leave
        self.last_activity = clock()
        self.turns = 0  # answered so far (for tests and logs)
        self.times: deque[TurnTimes] = deque(maxlen=TIMES_KEPT)
        self.ignored = 0  # utterances not answered (not addressed, not heard, not allowed)
        # Per SSRC: the transcription started at a pause, for the utterance if the pause lasts.
        self._early: dict[int, tuple[Utterance, asyncio.Task[str | None]]] = {}
        self.early_used = 0  # utterances whose transcript was ready from their pause
        self._guess: _Guess | None = None  # the early answer under way (one at a time)
        self._drafts: dict[int, _Guess] = {}  # per SSRC: a withdrawn guess; the rest amends it
        self.withdrawn = 0  # early answers dropped because the speaker went on
        self._warming: asyncio.Task[None] | None = None
        session.on_speech_start(self._speech_started)
        session.on_speech_pause(self._paused)
        session.on_speech_resume(self._resumed)

    @property
    def voice_channel(self) -> VocalGuildChannel:
        """Where the bot is (a moderator may have moved it)."""
        channel = self.session.client.channel
        assert isinstance(channel, VocalGuildChannel)
        return channel

    @property
    def answering(self) -> bool:
        """A turn is under way (transcribed, being answered or spoken)."""
        return self._current is not None

    @property
    def early_answer_held(self) -> bool:
        """An early answer is ready and waits to be heard (its turn is not confirmed yet)."""
        guess = self._guess
        return guess is not None and guess.target is not None and guess.target.held

    @property
    def quiet_s(self) -> float:
        """Seconds since anyone (the bot included) last spoke."""
        return self._clock() - self.last_activity

    def relink(self, channel: discord.abc.Messageable, channel_id: int) -> None:
        """Turns from now on belong to `channel` (a /join from another text channel)."""
        self.text_channel, self.text_channel_id = channel, channel_id

    async def run(self) -> None:
        """Listen and answer until the session ends (left, disconnected for good)."""
        answering = asyncio.create_task(self._answer_in_order(), name="voice-turns")
        try:
            async for utterance in self.session.utterances():
                self.last_activity = self._clock()
                if self._closing:
                    continue
                heard = _Heard(utterance, self._transcription(utterance))
                heard.transcript.add_done_callback(partial(_stamp, heard, self._clock))
                heard.guess = self._confirm(utterance)
                self._heard.put_nowait(heard)
        finally:
            for _, early in self._early.values():
                early.cancel()
            self._early.clear()
            guess = self._guess
            if guess is not None and not guess.confirmed.is_set():
                self._withdraw(guess)
            self._heard.put_nowait(None)
            await answering

    def hush(self) -> None:
        """Stop the answer being spoken now (what barge-in does); its text goes on."""
        if self._current is not None:
            self._current.interrupt()
        self.session.stop_speaking()

    async def leave(self) -> None:
        """Stop answering (the turn in progress finishes its text) and leave the channel."""
        self._closing = True
        if self._current is not None:
            self._current.interrupt()
        await self.session.leave()

    # -- hearing ---------------------------------------------------------------------------

    def _speech_started(self, user_id: int) -> None:
        self.last_activity = self._clock()
        current = self._current
        if self._deps.barge_in and current is not None:
            current.interrupt()
        self._warm(user_id)

    def _paused(self, utterance: Utterance) -> None:
        """A speaker paused: transcribe what they said so far, in case the pause lasts, and
        with early answers answer it already when nothing else is being answered.

        The pause ends the utterance only after `voice_pause_ms`; by then Whisper is (mostly)
        done, and the transcript is used if the utterance is this same speech.
        """
        if self._closing:
            return
        early = self._early.get(utterance.ssrc)
        if early is not None and early[0].speech == utterance.speech:
            transcript = early[1]  # the same pause, grown longer
        else:
            if early is not None:
                early[1].cancel()  # they spoke on after that pause
            transcript = asyncio.create_task(self._transcribe(utterance))
            self._early[utterance.ssrc] = (utterance, transcript)
        answer_at = self._deps.early_pause_ms
        if answer_at is not None and utterance.pause_ms >= answer_at and self._idle():
            self._start_guess(utterance, transcript)

    def _resumed(self, ssrc: int) -> None:
        """A speaker went on after a pause: an answer to what they said before it is void."""
        guess = self._guess
        if guess is not None and guess.utterance.ssrc == ssrc and not guess.confirmed.is_set():
            self._withdraw(guess)

    def _idle(self) -> bool:
        """Nothing is being answered, heard and waiting, or guessed."""
        return (
            self._current is None
            and not self._busy
            and self._heard.empty()
            and self._guess is None
            and not self._closing
        )

    def _transcription(self, utterance: Utterance) -> asyncio.Task[str | None]:
        """The utterance's transcription: the one its pause started, or a new one."""
        early = self._early.pop(utterance.ssrc, None)
        if early is not None:
            paused, task = early
            if paused.speech == utterance.speech and not task.cancelled():
                self.early_used += 1
                return task
            task.cancel()
        return asyncio.create_task(self._transcribe(utterance))

    def _allowed(self, user_id: int) -> bool:
        """The speaker may talk to the bot in the linked channel (and is not a bot)."""
        member = self.guild.get_member(user_id)
        parent_id = getattr(self.text_channel, "parent_id", None)
        return not (member is not None and member.bot) and self._deps.access.allowed(
            user_id, self.text_channel_id, parent_id
        )

    async def _transcribe(self, utterance: Utterance) -> str | None:
        """The utterance's words, or None when it is not for us or nothing was heard."""
        if not self._allowed(utterance.user_id):
            return None
        if utterance.cut_off and utterance.user_id not in self.session.client.members:
            return None  # the speaker left mid-sentence: nobody to answer
        started = time.perf_counter()
        try:
            language = self.language = await self._deps.language(str(self.text_channel_id))
            text = await self._deps.transcriber.transcribe_pcm(
                utterance.pcm, OPUS_RATE, language=language, speech_only=True
            )
        except AudioError as exc:  # nothing heard, or longer than stt.max_seconds
            log.debug("voice: utterance of user %d not transcribed: %s", utterance.user_id, exc)
            return None
        metrics.STT_SECONDS.observe(time.perf_counter() - started)
        if sum(ch.isalpha() for ch in text) < MIN_TRANSCRIPT_LETTERS:
            return None
        return text

    def _addressed(self, user_id: int, text: str, *, peek: bool = False) -> str | None:
        """The text to answer, or None when wake-word mode says it was not said to us.

        `peek`: only look (an early answer's guess); the confirmed utterance opens or uses a
        speaker's follow-up window.
        """
        if not self._deps.wake_word:
            return text
        rest = wake_word_rest(text, self._deps.bot_name, self.language)
        now = self._clock()
        if rest is None:
            until = self._wake_open.get(user_id, 0.0) if peek else self._wake_open.pop(user_id, 0.0)
            return text if until > now else None  # the follow-up to a bare "Parley?"
        if not rest:
            if not peek:
                self._wake_open[user_id] = now + WAKE_FOLLOW_UP_S
            return None
        return rest

    def _message(self, user_id: int, text: str, message_id: str | None = None) -> IncomingMessage:
        """`user_id`'s words as a message of the linked text channel."""
        member = self.guild.get_member(user_id)
        name = (
            member.display_name
            if member is not None
            else say(Msg.VOICE_SOMEONE, lang=self.guild.preferred_locale.value, user_id=user_id)
        )
        return IncomingMessage(
            platform="discord",
            channel_key=str(self.text_channel_id),
            user_id=str(user_id),
            user_name=name,
            text=text,
            is_admin=member is not None
            and self._deps.access.is_admin(
                member, manage_guild=member.guild_permissions.manage_guild
            ),
            message_id=message_id,
            language=self.guild.preferred_locale.value,  # a call has no per-user locale
        )

    def _warm(self, user_id: int) -> None:
        """Someone started speaking: have the LLM cache the chat's prompt prefix meanwhile."""
        warming = self._warming
        if (
            self._deps.warm is None
            or not self._idle()
            or (warming is not None and not warming.done())
            or not self._allowed(user_id)
        ):
            return
        self._warming = asyncio.create_task(
            self._deps.warm(self._message(user_id, "")), name="voice-warm"
        )

    # -- early answers ---------------------------------------------------------------------

    def _start_guess(self, utterance: Utterance, transcript: asyncio.Task[str | None]) -> None:
        draft = self._drafts.pop(utterance.ssrc, None)
        guess = _Guess(utterance, transcript, AmendableTurn())
        if draft is not None:
            guess.amend, guess.after = draft.amend, draft.ending()
        transcript.add_done_callback(lambda _: setattr(guess, "transcribed_at", self._clock()))
        guess.task = asyncio.create_task(self._answer_guess(guess), name="voice-early-answer")
        self._guess = guess

    async def _answer_guess(self, guess: _Guess) -> None:
        """Answer what was said up to the pause, as an amendable turn."""
        try:
            if guess.after:
                await asyncio.wait(guess.after)  # their rows are stored and marked first
            warming = self._warming
            if warming is not None:
                await asyncio.wait([warming])  # the reply then finds its prompt cached
            transcript = await guess.transcript
            utterance = guess.utterance
            text = self._addressed(utterance.user_id, transcript, peek=True) if transcript else None
            if text is None or self._closing:
                return
            guess.answered = True
            transcribed = guess.transcribed_at or self._clock()
            await self._turn(utterance, text, transcribed, guess=guess)
        except Exception:
            log.exception("voice: an early answer in %s failed", self.voice_channel)
        finally:
            if self._guess is guess:
                self._guess = None

    def _confirm(self, utterance: Utterance) -> _Guess | None:
        """The utterance ended: the early answer to this same speech is the answer."""
        guess = self._guess
        if guess is None or guess.utterance.ssrc != utterance.ssrc or guess.confirmed.is_set():
            return None
        if guess.utterance.speech != utterance.speech:
            self._withdraw(guess)  # e.g. cut off by the speaker leaving: not what was answered
            return None
        guess.confirmed.set()
        if guess.target is not None:
            guess.target.speak()
        return guess

    def _withdraw(self, guess: _Guess) -> None:
        """The speaker went on: drop the early answer; the turn it stored waits for the rest."""
        self._guess = None
        guess.amend.withdraw()
        if guess.target is not None:
            guess.target.withdraw()
        assert guess.task is not None
        guess.task.cancel()
        self._drafts[guess.utterance.ssrc] = guess
        self.withdrawn += 1
        log.debug("voice: user %d went on: early answer withdrawn", guess.utterance.user_id)

    async def _show_when_confirmed(
        self, guess: _Guess, target: VoiceTurnTarget, msg: IncomingMessage, text: str
    ) -> None:
        await guess.confirmed.wait()
        target.speak()
        mirrored = await self._mirror(msg.user_name, text) if self._deps.mirror_text else None
        target.show(self._deps.reply_target(mirrored) if mirrored is not None else None)

    # -- answering -------------------------------------------------------------------------

    async def _answer_in_order(self) -> None:
        while (heard := await self._heard.get()) is not None:
            self._busy = True
            try:
                await self._answer(heard)
            # One turn's error boundary: the conversation goes on with the next utterance.
            except Exception:
                log.exception("voice: a turn in %s failed", self.voice_channel)
            finally:
                self._busy = False
        # Leaving: what was heard but not answered is dropped.
        while not self._heard.empty():
            left = self._heard.get_nowait()
            if left is not None:
                left.transcript.cancel()

    async def _answer(self, heard: _Heard) -> None:
        guess = self._guess
        if guess is not None and guess.task is not None:
            await asyncio.wait([guess.task])  # an answer started at a pause goes first
        if heard.guess is not None and heard.guess.task is not None:
            await asyncio.wait([heard.guess.task])
            if heard.guess.answered:
                return
        utterance = heard.utterance
        transcript = await heard.transcript
        text = self._addressed(utterance.user_id, transcript) if transcript else None
        draft = self._drafts.pop(utterance.ssrc, None)
        ending = draft.ending() if draft is not None else ()
        if ending:
            await asyncio.wait(ending)
        if text is None or self._closing:
            self.ignored += 1
            return
        transcribed = heard.transcribed_at or utterance.ended_at
        await self._turn(
            utterance, text, transcribed, amend=draft.amend if draft is not None else None
        )

    async def _turn(
        self,
        utterance: Utterance,
        text: str,
        transcribed: float,
        *,
        amend: AmendableTurn | None = None,
        guess: _Guess | None = None,
    ) -> None:
        """Answer `text`: a turn that is over, or (`guess`) one answered at its first pause."""
        user_id = utterance.user_id
        target = VoiceTurnTarget(
            self.session,
            channel=self.text_channel,
            channel_id=self.text_channel_id,
            limits=self._deps.limits,
        )
        msg = self._message(user_id, text)
        showing: asyncio.Task[None] | None = None
        if guess is None:
            mirrored = await self._mirror(msg.user_name, text) if self._deps.mirror_text else None
            target.show(self._deps.reply_target(mirrored) if mirrored is not None else None)
            if mirrored is not None:
                msg = self._message(user_id, text, str(mirrored.id))
        else:
            amend, guess.target = guess.amend, target
            if sounds_finished(text, self.language) or guess.confirmed.is_set():
                target.speak()
            showing = asyncio.create_task(self._show_when_confirmed(guess, target, msg, text))
        self._current = target
        try:
            await self._deps.handle(msg, target, amend=amend)
            if showing is not None:
                await showing  # the turn is confirmed and its words are written
            await target.finished()
        finally:
            if showing is not None:
                showing.cancel()
            if self._current is target:
                self._current = None
            self.last_activity = self._clock()
            if amend is None or not amend.withdrawn:
                self.turns += 1
        times = TurnTimes(utterance.ended_at, transcribed, target.first_audio_at, guess is not None)
        self.times.append(times)
        if times.answer_started is not None:
            log.debug(
                "voice: user %d: pause heard -> text %.2f s -> first sound sent %.2f s",
                user_id,
                times.transcribed - times.speech_ended,
                times.answer_started - times.speech_ended,
            )

    async def _mirror(self, name: str, text: str) -> discord.Message | None:
        """Write the speaker's words in the linked channel; None if the channel refuses."""
        content = (
            f"{MIRROR_PREFIX} **{discord.utils.escape_markdown(name)}**: "
            f"{discord.utils.escape_markdown(text)}"
        )
        try:
            return await self.text_channel.send(content, allowed_mentions=NOTICE_MENTIONS)
        except discord.HTTPException as exc:
            log.warning("voice: the transcript could not be written: %s", exc)
            return None


def _stamp(heard: _Heard, clock: Callable[[], float], _task: object) -> None:
    heard.transcribed_at = clock()
