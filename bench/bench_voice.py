"""Voice channel benchmarks: receive CPU per listened speaker, barge-in stop time.

Run: `.venv/bin/python bench/bench_voice.py` (about a minute; prints a Markdown table). The real
discord.py client joins the fake voice server (tests/fakes/discord_voice) with DAVE; fake humans
speak real (piper) speech at real time, all at once.

- CPU per speaker: thread CPU time of the receive worker (RTP parse, transport and DAVE
  decryption, Opus decoding, VAD) plus discord.py's UDP reader thread, per second of audio and
  listened speaker, as a percentage of one core. The fake humans run in the same process (their
  encoding is not counted).
- Event-loop lag: how late a 10 ms timer fires while those speakers are decoded (the fake's
  own work shares the loop, so this is an upper bound for the bot's share).
- Stop time: `stop_speaking()` -> the last packet with sound arriving at the fake listener.
- Barge-in: a listener's speech (its first frame after silence) -> the last packet of the
  bot's speech with sound, through Silero VAD onset detection and the stop.
End of speech -> first audio packet of the answer needs the engine: phase B.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.discord_voice.tls import trust_test_authority

trust_test_authority()  # before anything imports aiohttp (it reads the trust store once)

import numpy as np  # noqa: E402

from tests.fakes import audio_samples  # noqa: E402
from tests.fakes.discord_voice.harness import Call, voice_call  # noqa: E402
from tests.fakes.discord_voice.server import FakeHuman, speech  # noqa: E402
from tests.fakes.discord_world import DiscordWorld, FakeUser, snowflake  # noqa: E402

PARAGRAPH = (
    "Parley is a small chat bot that runs on your own machine. It listens to voice notes and "
    "answers them. The weather today is sunny with a light breeze from the west."
)
SPEAKER_COUNTS = (1, 2, 4, 8)
LISTEN_S = 8.0  # seconds of speech per speaker per run
STOP_TRIALS = 20
BARGE_IN_TRIALS = 10
TICK_S = 0.01
BOT_ID = DiscordWorld.BOT.id


def thread_cpu(ident: int | None) -> float:
    """CPU seconds a thread has used (Linux: its pthread CPU clock)."""
    if ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(max(0.0, loop.time() - due))


async def idle_lag() -> tuple[float, float]:
    """(p99, max) loop lag in ms with the bot in a call where nobody speaks: the baseline."""
    async with voice_call(FakeUser(snowflake(), "Quiet")):
        stop, lags = asyncio.Event(), list[float]()
        ticker = asyncio.create_task(loop_lag(stop, lags))
        await asyncio.sleep(LISTEN_S)
        stop.set()
        await ticker
    return 1000 * percentile(lags, 99), 1000 * max(lags)


async def receive_cpu(speakers: int) -> tuple[float, float, float]:
    """(CPU % of a core per speaker, loop lag p99 ms, loop lag max ms)."""
    users = [FakeUser(snowflake(), f"Speaker{i}") for i in range(speakers)]
    pcm = (await speech(PARAGRAPH))[: int(LISTEN_S * 48_000)]
    async with voice_call(*users) as call:
        session = call.session
        reader = session.client.connection._socket_reader.ident
        worker0, reader0 = session.receive_cpu_seconds, thread_cpu(reader)
        stop, lags = asyncio.Event(), list[float]()
        ticker = asyncio.create_task(loop_lag(stop, lags))
        await asyncio.gather(*(human.say(pcm, lead_in_s=0.0) for human in call.humans))
        expected = sum(human.frames_sent for human in call.humans)
        await call.voice.wait_for(lambda: session.stats.frames >= expected)
        stop.set()
        await ticker
        used = (session.receive_cpu_seconds - worker0) + (thread_cpu(reader) - reader0)
        audio_s = pcm.size / 48_000
        return (
            100 * used / audio_s / speakers,
            1000 * percentile(lags, 99),
            1000 * max(lags),
        )


def heard(human: FakeHuman) -> int:
    listened = human.heard.get(BOT_ID)
    return listened.speech_frames if listened is not None else 0


async def stop_times(call: Call) -> tuple[list[float], list[float]]:
    """(stop -> last sound packet at the listener, stop -> speak() returned), per run."""
    (alice,) = call.humans
    tone = audio_samples.tone(3.0, 48_000)
    silent, returned = [], []
    for _ in range(STOP_TRIALS):
        alice.heard.clear()
        answer = asyncio.create_task(call.session.speak(tone))
        await call.voice.wait_for(lambda: heard(alice) >= 10)
        asked = time.monotonic()
        call.session.stop_speaking()
        await answer
        returned.append(time.monotonic() - asked)
        await call.voice.wait_for(lambda: alice.heard[BOT_ID].silence_frames >= 5)
        last = alice.heard[BOT_ID].last_speech_arrival() or asked
        silent.append(max(0.0, last - asked))
    return silent, returned


def spread(values: list[float]) -> str:
    return (
        f"p50 {1000 * statistics.median(values):.0f} ms, p95 {1000 * percentile(values, 95):.0f}"
        f" ms, max {1000 * max(values):.0f} ms"
    )


async def barge_in_times(call: Call) -> list[float]:
    (alice,) = call.humans
    tone = audio_samples.tone(4.0, 48_000)
    question = await speech("what is the capital of France")
    times = []
    for _ in range(BARGE_IN_TRIALS):
        alice.heard.clear()
        answer = asyncio.create_task(call.session.speak(tone))
        await call.voice.wait_for(lambda: heard(alice) >= 10)
        await alice.say(question, lead_in_s=0.1)
        if await answer:
            raise RuntimeError("barge-in did not stop the answer")
        await call.next_utterance()  # drain what Alice said
        last = alice.heard[BOT_ID].last_speech_arrival()
        assert last is not None and alice.speech_sent_at is not None
        times.append(max(0.0, last - alice.speech_sent_at))
    return times


async def main() -> None:
    rows: list[tuple[str, str]] = []
    await receive_cpu(1)  # warm-up run, not counted (piper's first synthesis, caches)
    lag_p99, lag_max = await idle_lag()
    rows.append(
        ("loop lag, in a call, nobody speaking", f"p99 {lag_p99:.1f} ms, max {lag_max:.1f} ms")
    )
    for speakers in SPEAKER_COUNTS:
        cpu, lag_p99, lag_max = await receive_cpu(speakers)
        rows.append(
            (
                f"receive CPU per speaker, {speakers} speaking at once",
                f"{cpu:.2f} % of a core (loop lag p99 {lag_p99:.1f} ms, max {lag_max:.1f} ms)",
            )
        )
    async with voice_call(DiscordWorld.ALICE) as call:
        silent, returned = await stop_times(call)
        barge = await barge_in_times(call)
    rows.append(
        (f"stop_speaking() -> last sound packet arrives ({STOP_TRIALS} runs)", spread(silent))
    )
    rows.append((f"stop_speaking() -> speak() returns ({STOP_TRIALS} runs)", spread(returned)))
    rows.append(
        (
            f"barge-in: listener speaks -> bot's last sound packet ({BARGE_IN_TRIALS} runs)",
            spread(barge),
        )
    )
    print("| Voice channel measure | Value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    asyncio.run(main())
