"""Speech benchmarks: transcription and synthesis speed, streamed voice latency, memory.

Run: `.venv/bin/python bench/bench_speech.py` (about a minute; prints a Markdown table).
Real-time factor (RTF) = processing time / audio duration: 0.1 means 10 s of audio in 1 s.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import STTSettings, TTSSettings
from bot.languages import ENGLISH
from bot.speech.audio import Pcm
from bot.speech.stt import Transcriber
from bot.speech.tts import SpeechSynthesizer
from bot.speech.voice_reply import VoiceReply

PARAGRAPH = (
    "Parley is a small chat bot that runs on your own machine. It listens to voice notes and "
    "answers them. The weather today is sunny with a light breeze from the west. Tomorrow we "
    "expect some rain in the afternoon. Please remember to water the plants and feed the cat "
    "before you leave the house."
)
RUNS = 3  # best of: the machine may be shared
LLM_TOKENS_PER_S = 36.0  # the bundled model on 2 cores (see NOTES.md)
CHARS_PER_TOKEN = 4


def rss_mib() -> float:
    """Resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def best_of(runs: int, work: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        best = min(best, time.perf_counter() - started)
    return best


class TimedSynthesizer(SpeechSynthesizer):
    """Notes when each sentence's audio is ready."""

    def __init__(self, settings: TTSSettings) -> None:
        super().__init__(settings)
        self.ready_at: list[float] = []
        self.first_ready = asyncio.Event()

    async def synthesize_pcm(self, text: str, lang: str = ENGLISH) -> Pcm:
        pcm = await super().synthesize_pcm(text, lang)
        self.ready_at.append(time.perf_counter())
        self.first_ready.set()
        return pcm

    def reset(self) -> None:
        self.ready_at.clear()
        self.first_ready.clear()


async def streamed_reply(synthesizer: TimedSynthesizer) -> tuple[float, float]:
    """Feed PARAGRAPH at LLM speed; return (first sentence -> its audio, text end -> note)."""
    synthesizer.reset()
    reply = VoiceReply(synthesizer, max_chars=1500)
    first_sentence_at = None
    for start in range(0, len(PARAGRAPH), CHARS_PER_TOKEN):
        chunk = PARAGRAPH[start : start + CHARS_PER_TOKEN]
        reply.feed(chunk)
        if first_sentence_at is None and ". " in PARAGRAPH[: start + len(chunk)]:
            first_sentence_at = time.perf_counter()
        await asyncio.sleep(1 / LLM_TOKENS_PER_S)
    text_end = time.perf_counter()
    clip = await reply.finish()
    note_ready = time.perf_counter()
    assert clip is not None and first_sentence_at is not None
    return synthesizer.ready_at[0] - first_sentence_at, note_ready - text_end


async def first_sentence_latency(synthesizer: TimedSynthesizer) -> None:
    """A complete first sentence fed at once, until its audio is ready."""
    synthesizer.reset()
    reply = VoiceReply(synthesizer, max_chars=1500)
    reply.feed(PARAGRAPH.split(". ")[0] + ". And")
    await synthesizer.first_ready.wait()
    await reply.cancel()


async def main() -> None:
    rows: list[tuple[str, str]] = []
    rows.append(("CPU cores", str(os.cpu_count())))
    baseline = rss_mib()

    synthesizer = TimedSynthesizer(TTSSettings(backends=["piper"]))
    started = time.perf_counter()
    await synthesizer.warm_up()
    rows.append(("piper voice load", f"{time.perf_counter() - started:.2f} s"))
    clip = await synthesizer.synthesize(PARAGRAPH)
    piper_s = await best_of(RUNS, lambda: synthesizer.synthesize(PARAGRAPH))
    rows.append(
        (
            f"synthesis RTF, piper ({clip.duration_s:.1f} s of speech, incl. Opus)",
            f"{piper_s / clip.duration_s:.3f}",
        )
    )
    sentence_s = await best_of(RUNS, lambda: first_sentence_latency(synthesizer))
    rows.append(("first complete sentence -> its audio ready (piper)", f"{sentence_s:.2f} s"))
    to_first, after_text = await streamed_reply(synthesizer)
    rows.append(
        (
            f"streamed reply at {LLM_TOKENS_PER_S:.0f} tok/s: first sentence -> audio",
            f"{to_first:.2f} s",
        )
    )
    rows.append(("streamed reply: text end -> whole voice note ready", f"{after_text:.2f} s"))
    if shutil.which("espeak-ng"):
        espeak = SpeechSynthesizer(TTSSettings(backends=["espeak"]))
        espeak_clip = await espeak.synthesize(PARAGRAPH)
        espeak_s = await best_of(RUNS, lambda: espeak.synthesize(PARAGRAPH))
        rows.append(("synthesis RTF, espeak-ng", f"{espeak_s / espeak_clip.duration_s:.3f}"))
    else:
        rows.append(("synthesis RTF, espeak-ng", "not installed"))
    after_piper = rss_mib()

    with tempfile.TemporaryDirectory() as cache:
        transcribers = []
        memory = [("RSS: process before speech", baseline), ("RSS: + piper voice", after_piper)]
        for model in ("base", "tiny.en"):
            transcriber = Transcriber(STTSettings(model=model, cache_dir=cache))
            transcribers.append(transcriber)
            started = time.perf_counter()
            await transcriber.warm_up()
            rows.append((f"Whisper {model}: first load", f"{time.perf_counter() - started:.2f} s"))
            await transcriber.transcribe(clip.ogg_opus)  # warm: VAD model, caches
            seconds = await best_of(RUNS, functools.partial(transcriber.transcribe, clip.ogg_opus))
            rows.append(
                (
                    f"transcription RTF, {model} ({clip.duration_s:.1f} s voice note)",
                    f"{seconds / clip.duration_s:.3f}",
                )
            )
            memory.append((f"RSS: + Whisper {model} (after transcribing)", rss_mib()))
        rows.extend((name, f"{mib:.0f} MiB") for name, mib in memory)
        for transcriber in transcribers:
            await transcriber.close()
    await synthesizer.close()

    print("| Speech measure | Value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    asyncio.run(main())
