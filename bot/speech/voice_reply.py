"""A reply's speech, synthesised sentence by sentence while the text still streams.

Two ways to take it: `finish()` gives one voice note of the whole reply (Telegram, Discord
voice messages); `sentences()` yields each sentence's audio as soon as it is synthesised, so a
live listener (a Discord voice channel) hears the first sentence (with `first_clause`, its first
clause) while the LLM is still writing the rest, and `end()` says the text is complete.

How long replies are cut: the speech covers the reply's speakable text (Markdown stripped, code
blocks dropped) up to `max_chars` characters (`tts.max_chars`), ending with the last whole
sentence that fits; the rest of the reply is only in the text. A first sentence longer than
`max_chars` is cut at a word boundary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import numpy as np

from bot.errors import SpeechSynthesisError
from bot.languages import ENGLISH
from bot.speech.audio import Pcm, make_clip, silence
from bot.speech.text import SentenceSplitter
from bot.speech.tts import SpeechSynthesizer
from bot.types import SpokenSentence, VoiceClip

log = logging.getLogger(__name__)

SENTENCE_GAP_S = 0.15  # pause between two separately synthesised sentences
# Live speech starts with the first clause of at least this many words, not the whole first
# sentence: it is heard sooner, and the pause a comma asks for is there anyway.
FIRST_CLAUSE_WORDS = 4


class _Failed:
    """Put in the live queue when a sentence could not be spoken: `sentences()` raises it."""

    def __init__(self, error: SpeechSynthesisError) -> None:
        self.error = error


def _cut_at_word(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: max(limit - 1, 0)]  # room for the ellipsis
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(" ,;:") + "…"


class VoiceReply:
    """Synthesises sentence by sentence while the text still streams.

    Sentences are spoken in order, one at a time, starting at the first complete sentence; by
    the time the text ends most of the speech is ready.
    """

    def __init__(
        self,
        synthesizer: SpeechSynthesizer,
        *,
        max_chars: int,
        lang: str = ENGLISH,
        first_clause: bool = False,
    ) -> None:
        """`lang`: the reply's language, whose voice speaks it; `first_clause`: for a live
        listener, the first piece spoken is the first clause, not the whole first sentence."""
        self._synthesizer = synthesizer
        self._max_chars = max_chars
        self._lang = lang
        self._splitter = SentenceSplitter(
            first_clause_words=FIRST_CLAUSE_WORDS if first_clause else 0
        )
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._spoken: list[str] = []
        self._chars = 0
        self._full = False
        self._pieces: list[Pcm] = []
        self._closed = False
        # Live mode: each synthesised sentence, then None at the end (or a _Failed).
        self._live: asyncio.Queue[SpokenSentence | _Failed | None] | None = None
        self._abandoned = False  # the live listener stopped listening (barge-in)

    def feed(self, delta: str) -> None:
        """Add streamed reply text; never blocks. Each completed sentence starts synthesis."""
        if self._abandoned:
            return
        if self._closed:
            raise RuntimeError("VoiceReply.feed() after finish(), end() or cancel()")
        for sentence in self._splitter.feed(delta):
            self._accept(sentence)

    def interject(self, sentence: str) -> None:
        """Say `sentence` next, on its own (e.g. "One moment." while a tool runs): the text fed
        so far ends its sentence first."""
        if self._abandoned or self._closed:
            return
        for pending in self._splitter.feed("\n"):
            self._accept(pending)
        self._accept(sentence)

    async def finish(self) -> VoiceClip | None:
        """The whole reply's voice clip (sentences concatenated); None if nothing speakable.

        Raises SpeechSynthesisError when a sentence could not be spoken by any backend.
        """
        if self._closed:
            raise RuntimeError("VoiceReply.finish() called twice or after cancel()")
        self._close_text()
        if self._worker is None:
            return None
        await self._worker
        gap = silence(SENTENCE_GAP_S)
        pieces = [part for piece in self._pieces for part in (gap, piece)][1:]
        return await asyncio.to_thread(make_clip, np.concatenate(pieces), " ".join(self._spoken))

    # -- live ------------------------------------------------------------------------------

    def sentences(self) -> AsyncGenerator[SpokenSentence, None]:
        """Each sentence's speech as soon as it is synthesised, in order, until `end()`.

        Best called before the text streams; sentences already synthesised come first. The
        iterator raises SpeechSynthesisError when a sentence could not be spoken; leaving it
        early (the listener interrupted the bot) stops the synthesis of what is still to come.
        """
        if self._live is None:
            self._live = asyncio.Queue()
            for sentence, pcm in zip(self._spoken, self._pieces, strict=False):
                self._live.put_nowait(SpokenSentence(sentence, pcm))
            if self._closed and (self._worker is None or self._worker.done()):
                self._live.put_nowait(None)
        return self._drain(self._live)

    async def _drain(
        self, live: asyncio.Queue[SpokenSentence | _Failed | None]
    ) -> AsyncGenerator[SpokenSentence, None]:
        try:
            while (item := await live.get()) is not None:
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            if self._worker is not None and not self._worker.done():
                # Stopped early: nobody will hear the rest.
                self._abandoned = True
                await self._stop_worker()

    def end(self) -> None:
        """The text is complete: the last sentence is spoken, then `sentences()` ends."""
        if self._closed or self._abandoned:
            return
        self._close_text()
        if self._worker is None and self._live is not None:
            self._live.put_nowait(None)  # nothing was speakable

    async def cancel(self) -> None:
        """Stop synthesising (the reply was cancelled); safe to call more than once."""
        self._closed = True
        await self._stop_worker()
        if self._live is not None:
            self._live.put_nowait(None)

    # -- internals -------------------------------------------------------------------------

    def _close_text(self) -> None:
        self._closed = True
        for sentence in self._splitter.flush():
            self._accept(sentence)
        if self._worker is not None:
            self._queue.put_nowait(None)

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.cancel()
        await asyncio.wait([worker])
        if not worker.cancelled():
            worker.exception()  # retrieved: a failure no longer matters

    def _accept(self, sentence: str) -> None:
        if self._full or self._abandoned:
            return
        room = self._max_chars - self._chars
        if len(sentence) > room:
            self._full = True  # the rest of the reply stays text only
            if self._spoken:
                return
            sentence = _cut_at_word(sentence, room)
            if not any(ch.isalnum() for ch in sentence):
                return
        self._spoken.append(sentence)
        self._chars += len(sentence) + 1  # and the space that joins it to the next
        self._queue.put_nowait(sentence)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._synthesize_in_order(), name="voice-reply"
            )

    async def _synthesize_in_order(self) -> None:
        try:
            while (sentence := await self._queue.get()) is not None:
                pcm = await self._synthesizer.synthesize_pcm(sentence, self._lang)
                self._pieces.append(pcm)
                if self._live is not None:
                    self._live.put_nowait(SpokenSentence(sentence, pcm))
        except SpeechSynthesisError as exc:
            if self._live is None:
                raise
            log.warning("live speech stopped: %s", exc)
            self._live.put_nowait(_Failed(exc))
            return
        if self._live is not None:
            self._live.put_nowait(None)
