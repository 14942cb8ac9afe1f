"""A reply's voice note, synthesised sentence by sentence while the text still streams.

How long replies are cut: the voice note speaks the reply's speakable text (Markdown stripped,
code blocks dropped) up to `max_chars` characters (`tts.max_chars`), ending with the last whole
sentence that fits; the rest of the reply is only in the text. A first sentence longer than
`max_chars` is cut at a word boundary.
"""

from __future__ import annotations

import asyncio

import numpy as np

from bot.speech.audio import Pcm, make_clip, silence
from bot.speech.text import SentenceSplitter
from bot.speech.tts import SpeechSynthesizer
from bot.types import VoiceClip

SENTENCE_GAP_S = 0.15  # pause between two separately synthesised sentences


def _cut_at_word(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: max(limit - 1, 0)]  # room for the ellipsis
    return (head.rsplit(" ", 1)[0] if " " in head else head).rstrip(" ,;:") + "…"


class VoiceReply:
    """Synthesises sentence by sentence while the text still streams.

    Sentences are spoken in order, one at a time, starting at the first complete sentence; by
    the time the text ends most of the voice note is ready.
    """

    def __init__(self, synthesizer: SpeechSynthesizer, *, max_chars: int) -> None:
        self._synthesizer = synthesizer
        self._max_chars = max_chars
        self._splitter = SentenceSplitter()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._spoken: list[str] = []
        self._chars = 0
        self._full = False
        self._pieces: list[Pcm] = []
        self._closed = False

    def feed(self, delta: str) -> None:
        """Add streamed reply text; never blocks. Each completed sentence starts synthesis."""
        if self._closed:
            raise RuntimeError("VoiceReply.feed() after finish() or cancel()")
        for sentence in self._splitter.feed(delta):
            self._accept(sentence)

    async def finish(self) -> VoiceClip | None:
        """The whole reply's voice clip (sentences concatenated); None if nothing speakable.

        Raises SpeechSynthesisError when a sentence could not be spoken by any backend.
        """
        if self._closed:
            raise RuntimeError("VoiceReply.finish() called twice or after cancel()")
        self._closed = True
        for sentence in self._splitter.flush():
            self._accept(sentence)
        if self._worker is None:
            return None
        self._queue.put_nowait(None)
        await self._worker
        gap = silence(SENTENCE_GAP_S)
        pieces = [part for piece in self._pieces for part in (gap, piece)][1:]
        return await asyncio.to_thread(make_clip, np.concatenate(pieces), " ".join(self._spoken))

    async def cancel(self) -> None:
        """Stop synthesising (the reply was cancelled); safe to call more than once."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.cancel()
        await asyncio.wait([worker])
        if not worker.cancelled():
            worker.exception()  # retrieved: a failure no longer matters

    def _accept(self, sentence: str) -> None:
        if self._full:
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
        while (sentence := await self._queue.get()) is not None:
            self._pieces.append(await self._synthesizer.synthesize_pcm(sentence))
