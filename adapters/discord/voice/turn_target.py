"""Where one voice turn's answer goes: spoken into the call, its text to the linked channel.

An answer started at the speaker's first short pause (`discord.voice_early_answer`) is made
before anyone knows whether the turn is over, so the target holds it back: its speech waits for
`speak()` (the turn is confirmed, or its words are a whole sentence), its text for `show()` (the
turn is confirmed and its words are written in the channel). `withdraw()` drops it: nothing
held is ever heard or shown, and speech already under way stops as for a barge-in. A turn
answered only once it is over is given both at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import discord

from adapters.discord.errors import delivery_error
from adapters.discord.targets import NOTICE_MENTIONS, ChannelTarget
from adapters.discord.voice.speaker import VoiceNotReady
from adapters.discord.voice.vad import Pcm
from bot.errors import SpeechSynthesisError
from bot.languages import ENGLISH
from bot.types import OutgoingFile, SpokenSentence, TargetLimits, VoiceClip

if TYPE_CHECKING:
    from adapters.discord.voice.session import VoiceSession

log = logging.getLogger(__name__)


class VoiceTurnTarget:
    """Where one voice turn's answer goes: spoken into the call, its text to the linked channel.

    Without a mirrored transcript (`show(None)`) the answer's text goes nowhere; notices (errors,
    refusals) still go to the linked channel, where someone can read them.
    """

    def __init__(
        self,
        session: VoiceSession,
        *,
        channel: discord.abc.Messageable,
        channel_id: int,
        limits: TargetLimits,
    ) -> None:
        self._session = session
        self._text: ChannelTarget | None = None
        self._channel = channel
        self._channel_id = channel_id
        self._limits = limits
        self._spoken = asyncio.Event()  # the speech may be heard
        self._shown = asyncio.Event()  # the text may be written
        self._interrupted = asyncio.Event()
        self._unsent = itertools.count(1)
        self._playback: asyncio.Task[bool] | None = None
        self.playing = False  # the answer's speech is under way (barge-in applies)
        self.held = False  # its first sentence is ready and waits for `speak()`
        self.first_audio_at: float | None = None  # monotonic: first sentence handed to the call

    # -- the gates ------------------------------------------------------------------------

    def speak(self) -> None:
        """The answer may be heard now."""
        self._spoken.set()

    def show(self, text: ChannelTarget | None) -> None:
        """The answer may be written now, to `text` (None: nowhere); it may be heard too."""
        self._text = text
        self._shown.set()
        self._spoken.set()

    def withdraw(self) -> None:
        """The speaker went on: none of this answer is heard from now on (the engine drops
        its text)."""
        self._interrupted.set()
        if self._playback is not None:
            self._playback.cancel()  # stops the sound within a frame, and the synthesis

    async def _written(self) -> ChannelTarget | None:
        await self._shown.wait()
        return self._text

    # -- TextTarget: the mirrored answer -------------------------------------------------

    @property
    def chat_key(self) -> str:
        return f"discord:{self._channel_id}"  # as the channel's own replies (ChannelTarget)

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    async def send(self, text: str) -> str:
        target = await self._written()
        if target is None:
            return f"voice-{next(self._unsent)}"  # not mirrored: said, not written
        return await target.send(text)

    async def edit(self, message_id: str, text: str) -> None:
        target = await self._written()
        if target is not None:
            await target.edit(message_id, text)

    async def finalize(self, message_id: str, text: str) -> str:
        target = await self._written()
        if target is None:
            return message_id
        return await target.finalize(message_id, text)

    async def delete(self, message_id: str) -> None:
        target = await self._written()
        if target is not None:
            await target.delete(message_id)

    # -- ReplyTarget ----------------------------------------------------------------------

    async def typing(self) -> None:
        if self._shown.is_set() and self._text is not None:  # nothing to show before that
            await self._text.typing()

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        if self._shown.is_set() and self._text is not None:
            await self._text.queued(position, lang)

    async def notice(self, text: str) -> None:
        target = await self._written()
        if target is not None:
            await target.notice(text)
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
        target = await self._written()
        if target is not None:
            await target.send_file(file)
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
        playback = self._playback
        if playback is None:
            return True
        await asyncio.wait([playback])
        return not playback.cancelled() and playback.result()

    def interrupt(self) -> None:
        """Barge-in: no more of this answer (the session already stopped the sound)."""
        if self.playing:
            self._interrupted.set()

    async def _play(self, sentences: AsyncGenerator[SpokenSentence, None]) -> bool:
        try:
            first = await anext(sentences, None)
            if first is None or self._interrupted.is_set():
                return first is None
            if not self._spoken.is_set():
                self.held = True
                await self._spoken.wait()
                self.held = False
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
            self.playing = self.held = False
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
