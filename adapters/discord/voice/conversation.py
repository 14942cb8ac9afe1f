"""A conversation in a voice channel: utterances become turns, answers are spoken as they stream.

Each utterance the `VoiceSession` hears is transcribed by the speech module (Whisper, in its
worker pool) and becomes a turn of the engine in the conversation of the *linked text channel*:
the text channel `/join` was called from (which may be the voice channel's own chat). The turn
uses that channel's history, persona and settings; its answer is spoken into the call sentence
by sentence as the LLM writes it (`VoiceTurnTarget` is a `LiveSpeechTarget`), and, unless
`discord.voice_mirror_text` is off, both sides' words are written there too: the transcript as a
message of the bot ("🎙️ **Alice**: ..."), the answer as a reply to it, streamed through the
normal Discord reply target and its rate budgets.

Turn-taking: utterances are answered one at a time, in the order they ended, whoever spoke
them; transcription of the next one runs while the current answer is spoken. In wake-word mode
(`discord.voice_listen = "wake_word"`) only utterances that start with the bot's name
(`engine.bot_name`) are answered. Barge-in: someone starting to speak while the bot talks stops
its speech (the session does that within a frame; the rest of the answer's sentences are not
synthesised), unless `discord.voice_barge_in` is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import discord
from discord.channel import VocalGuildChannel

from adapters.discord.errors import delivery_error
from adapters.discord.rules import AccessRules
from adapters.discord.targets import NOTICE_MENTIONS, ChannelTarget
from adapters.discord.voice.opus import OPUS_RATE
from adapters.discord.voice.receiver import Utterance
from adapters.discord.voice.speaker import VoiceNotReady
from adapters.discord.voice.vad import Pcm
from adapters.discord.voice.wake import wake_word_rest
from bot import metrics
from bot.errors import AudioError, SpeechSynthesisError
from bot.languages import ENGLISH
from bot.messages import Msg, say
from bot.types import IncomingMessage, OutgoingFile, SpokenSentence, TargetLimits, VoiceClip

if TYPE_CHECKING:
    from adapters.discord.voice.session import VoiceSession
    from bot.speech.stt import Transcriber

log = logging.getLogger(__name__)

# Saying only the name ("Parley?") opens this window for that speaker's next utterance.
WAKE_FOLLOW_UP_S = 8.0
MIN_TRANSCRIPT_LETTERS = 2  # "Uh." or a lone "I": Whisper's reading of a cough or a breath
MIRROR_PREFIX = "🎙️"

Reply = Callable[[discord.Message], ChannelTarget]


class VoiceTurnTarget:
    """Where one voice turn's answer goes: spoken into the call, its text to the linked channel.

    Without a mirrored transcript (`text` None) the answer's text goes nowhere; notices (errors,
    refusals) still go to the linked channel, where someone can read them.
    """

    def __init__(
        self,
        session: VoiceSession,
        *,
        text: ChannelTarget | None,
        channel: discord.abc.Messageable,
        channel_id: int,
        limits: TargetLimits,
        interrupted: asyncio.Event,
    ) -> None:
        self._session = session
        self._text = text
        self._channel = channel
        self._channel_id = channel_id
        self._limits = limits
        self._interrupted = interrupted
        self._unsent = itertools.count(1)
        self._playback: asyncio.Task[bool] | None = None
        self.playing = False  # the answer's speech is under way (barge-in applies)
        self.first_audio_at: float | None = None  # monotonic: first sentence handed to the call

    # -- TextTarget: the mirrored answer -------------------------------------------------

    @property
    def chat_key(self) -> str:
        return self._text.chat_key if self._text is not None else f"discord:{self._channel_id}"

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    async def send(self, text: str) -> str:
        if self._text is None:
            return f"voice-{next(self._unsent)}"  # not mirrored: said, not written
        return await self._text.send(text)

    async def edit(self, message_id: str, text: str) -> None:
        if self._text is not None:
            await self._text.edit(message_id, text)

    async def finalize(self, message_id: str, text: str) -> str:
        if self._text is None:
            return message_id
        return await self._text.finalize(message_id, text)

    async def delete(self, message_id: str) -> None:
        if self._text is not None:
            await self._text.delete(message_id)

    # -- ReplyTarget ----------------------------------------------------------------------

    async def typing(self) -> None:
        if self._text is not None:
            await self._text.typing()

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        if self._text is not None:
            await self._text.queued(position, lang)

    async def notice(self, text: str) -> None:
        if self._text is not None:
            await self._text.notice(text)
            return
        try:
            await self._channel.send(text, allowed_mentions=NOTICE_MENTIONS)
        except discord.HTTPException as exc:
            raise delivery_error("notice not delivered", exc) from exc

    async def send_voice(self, clip: VoiceClip) -> None:
        """Not used: a voice channel's answer is spoken live (`speak_live`), not uploaded."""
        log.debug("voice: a voice note for a live turn was not sent (%.1f s)", clip.duration_s)

    async def send_file(self, file: OutgoingFile) -> None:
        """A file for the conversation goes to its text channel (a voice channel cannot show it)."""
        if self._text is not None:
            await self._text.send_file(file)
            return
        upload = discord.File(io.BytesIO(file.data), filename=file.name)
        try:
            await self._channel.send(file.caption or None, file=upload)
        except discord.HTTPException as exc:
            raise delivery_error("file not delivered", exc) from exc

    # -- LiveSpeechTarget -----------------------------------------------------------------

    def speak_live(self, sentences: AsyncGenerator[SpokenSentence, None]) -> None:
        """Say the answer's sentences as they are synthesised (the engine calls this)."""
        self._playback = asyncio.create_task(self._play(sentences), name="voice-answer")

    async def finished(self) -> bool:
        """Wait until the answer has been said; False when it was cut short or not said."""
        if self._playback is None:
            return True
        return await self._playback

    def interrupt(self) -> None:
        """Barge-in: no more of this answer (the session already stopped the sound)."""
        if self.playing:
            self._interrupted.set()

    async def _play(self, sentences: AsyncGenerator[SpokenSentence, None]) -> bool:
        try:
            first = await anext(sentences, None)
            if first is None or self._interrupted.is_set():
                return first is None
            self.playing = True
            self.first_audio_at = time.monotonic()
            return await self._session.speak(self._then(first, sentences))
        except SpeechSynthesisError as exc:
            log.warning("voice: the answer could not be spoken: %s", exc)
            return False
        except VoiceNotReady as exc:
            log.warning("voice: %s; the answer was not spoken", exc)
            return False
        finally:
            self.playing = False
            await sentences.aclose()  # stops synthesising what nobody will hear

    async def _then(
        self, first: SpokenSentence, sentences: AsyncGenerator[SpokenSentence, None]
    ) -> AsyncIterator[Pcm]:
        yield first.pcm
        while not self._interrupted.is_set():
            sentence = await self._next_unless_interrupted(sentences)
            if sentence is None:
                return
            yield sentence.pcm

    async def _next_unless_interrupted(
        self, sentences: AsyncGenerator[SpokenSentence, None]
    ) -> SpokenSentence | None:
        """The next sentence, or None at the end or as soon as the bot is interrupted."""
        upcoming: asyncio.Future[SpokenSentence | None] = asyncio.ensure_future(
            anext(sentences, None)
        )
        stop = asyncio.ensure_future(self._interrupted.wait())
        waiting: set[asyncio.Future[Any]] = {upcoming, stop}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if upcoming.done():
            return upcoming.result()
        upcoming.cancel()  # the sentence generator ends, and with it the synthesis
        with contextlib.suppress(asyncio.CancelledError):
            await upcoming
        return None


@dataclass(frozen=True, slots=True)
class VoiceTurnDeps:
    """What a voice conversation needs from the adapter and the core."""

    handle: Callable[[IncomingMessage, VoiceTurnTarget], Coroutine[Any, Any, None]]
    transcriber: Transcriber
    language: Callable[[str], Coroutine[Any, Any, str]]  # Whisper's language for a channel key
    reply_target: Reply  # the normal Discord reply target for a mirrored transcript
    access: AccessRules  # who may talk to the bot where (the text channel's rules apply)
    bot_name: str
    limits: TargetLimits
    wake_word: bool
    barge_in: bool
    mirror_text: bool


@dataclass(slots=True)
class _Heard:
    utterance: Utterance
    transcript: asyncio.Task[str | None]
    transcribed_at: float | None = None  # monotonic


@dataclass(frozen=True, slots=True)
class TurnTimes:
    """When one answered utterance went through each stage (monotonic seconds)."""

    speech_ended: float  # the VAD heard the pause that ends it
    transcribed: float  # Whisper's text was ready
    answer_started: float | None  # its first synthesised sentence went to the call


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
        session.on_speech_start(self._speech_started)
        session.on_speech_pause(self._paused)

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
                self._heard.put_nowait(heard)
        finally:
            for _, early in self._early.values():
                early.cancel()
            self._early.clear()
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

    def _paused(self, utterance: Utterance) -> None:
        """A speaker paused: transcribe what they said so far, in case the pause lasts.

        The pause ends the utterance only after `voice_pause_ms`; by then Whisper is (mostly)
        done, and the transcript is used if the utterance is exactly this audio.
        """
        if self._closing:
            return
        stale = self._early.pop(utterance.ssrc, None)
        if stale is not None:
            stale[1].cancel()  # they spoke on after that pause
        self._early[utterance.ssrc] = (utterance, asyncio.create_task(self._transcribe(utterance)))

    def _transcription(self, utterance: Utterance) -> asyncio.Task[str | None]:
        """The utterance's transcription: the one its pause started, or a new one."""
        early = self._early.pop(utterance.ssrc, None)
        if early is not None:
            paused, task = early
            same = (paused.user_id, paused.start, paused.end) == (
                utterance.user_id,
                utterance.start,
                utterance.end,
            )
            if same and not task.cancelled():
                self.early_used += 1
                return task
            task.cancel()
        return asyncio.create_task(self._transcribe(utterance))

    async def _transcribe(self, utterance: Utterance) -> str | None:
        """The utterance's words, or None when it is not for us or nothing was heard."""
        member = self.guild.get_member(utterance.user_id)
        parent_id = getattr(self.text_channel, "parent_id", None)
        if (member is not None and member.bot) or not self._deps.access.allowed(
            utterance.user_id, self.text_channel_id, parent_id
        ):
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

    def _addressed(self, user_id: int, text: str) -> str | None:
        """The text to answer, or None when wake-word mode says it was not said to us."""
        if not self._deps.wake_word:
            return text
        rest = wake_word_rest(text, self._deps.bot_name, self.language)
        now = self._clock()
        if rest is None:
            if self._wake_open.pop(user_id, 0.0) > now:
                return text  # the follow-up to a bare "Parley?"
            return None
        if not rest:
            self._wake_open[user_id] = now + WAKE_FOLLOW_UP_S
            return None
        return rest

    # -- answering -------------------------------------------------------------------------

    async def _answer_in_order(self) -> None:
        while (heard := await self._heard.get()) is not None:
            try:
                transcript = await heard.transcript
                text = self._addressed(heard.utterance.user_id, transcript) if transcript else None
                if text is None or self._closing:
                    self.ignored += 1
                    continue
                await self._turn(heard, text)
            # One turn's error boundary: the conversation goes on with the next utterance.
            except Exception:
                log.exception("voice: a turn in %s failed", self.voice_channel)
        # Leaving: what was heard but not answered is dropped.
        while not self._heard.empty():
            left = self._heard.get_nowait()
            if left is not None:
                left.transcript.cancel()

    async def _turn(self, heard: _Heard, text: str) -> None:
        utterance = heard.utterance
        user_id = utterance.user_id
        member = self.guild.get_member(user_id)
        name = (
            member.display_name
            if member is not None
            else say(Msg.VOICE_SOMEONE, lang=self.guild.preferred_locale.value, user_id=user_id)
        )
        mirrored = await self._mirror(name, text) if self._deps.mirror_text else None
        interrupted = asyncio.Event()
        target = VoiceTurnTarget(
            self.session,
            text=self._deps.reply_target(mirrored) if mirrored is not None else None,
            channel=self.text_channel,
            channel_id=self.text_channel_id,
            limits=self._deps.limits,
            interrupted=interrupted,
        )
        msg = IncomingMessage(
            platform="discord",
            channel_key=str(self.text_channel_id),
            user_id=str(user_id),
            user_name=name,
            text=text,
            is_admin=member is not None
            and self._deps.access.is_admin(
                member, manage_guild=member.guild_permissions.manage_guild
            ),
            message_id=str(mirrored.id) if mirrored is not None else None,
            language=self.guild.preferred_locale.value,  # a call has no per-user locale
        )
        self._current = target
        try:
            await self._deps.handle(msg, target)
            await target.finished()
        finally:
            self._current = None
            self.turns += 1
            self.last_activity = self._clock()
        times = TurnTimes(
            speech_ended=utterance.ended_at,
            transcribed=heard.transcribed_at or utterance.ended_at,
            answer_started=target.first_audio_at,
        )
        self.times.append(times)
        if times.answer_started is not None:
            log.debug(
                "voice: user %d: pause heard -> text %.2f s -> first sentence %.2f s",
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
