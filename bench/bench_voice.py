"""Voice channel benchmarks: answer latency, receive CPU per listened speaker, barge-in.

Run: `.venv/bin/python bench/bench_voice.py` (several minutes; prints a Markdown table), or
`bench/bench_voice.py latency` for the answer-latency rows alone. The real discord.py client joins
the fake voice server (tests/fakes/discord_voice) with DAVE; fake humans speak real (piper)
speech at real time.

- Answer latency: the whole bot (ParleyApp with Whisper and piper, the Discord adapter, /join)
  in a call with one fake human who asks a question; from the end of their speech (the last
  frame with sound leaving the fake human) to the first packet with sound of the answer at
  the fake human, through VAD end of turn, Whisper, the LLM's first clause, piper and the
  Opus/DAVE send path. With the fake LLM (instant) and with the bundled model on the real
  llama-server (started by the app, as `parley run` does). Each with the pipelining on
  (`discord.voice_early_answer`: the answer starts at the first short pause) and off (it starts
  when the pause reaches `voice_pause_ms`), back to back; the load average at the start of each
  is shown. The bot's own stage times split it: "VAD end of turn" is the pause the answer
  started from (the short one when pipelined).

- CPU per speaker: thread CPU time of the receive worker (RTP parse, transport and DAVE
  decryption, Opus decoding, VAD) plus discord.py's UDP reader thread, per second of audio and
  listened speaker, as a percentage of one core. The fake humans run in the same process (their
  encoding is not counted).
- Event-loop lag: how late a 10 ms timer fires while those speakers are decoded (the fake's
  own work shares the loop, so this is an upper bound for the bot's share).
- Stop time: `stop_speaking()` -> the last packet with sound arriving at the fake listener.
- Barge-in: a listener's speech (its first frame after silence) -> the last packet of the
  bot's speech with sound, through Silero VAD onset detection and the stop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.discord_voice.tls import trust_test_authority

trust_test_authority()  # before anything imports aiohttp (it reads the trust store once)

import numpy as np  # noqa: E402

from adapters.discord.voice.conversation import VoiceConversation  # noqa: E402
from tests.fakes import audio_samples  # noqa: E402
from tests.fakes.discord_voice.harness import Call, voice_bot, voice_call  # noqa: E402
from tests.fakes.discord_voice.server import FakeHuman, speech  # noqa: E402
from tests.fakes.discord_world import DiscordWorld, FakeUser, snowflake  # noqa: E402
from tests.fakes.llm_server import Behaviour, FakeLLMServer  # noqa: E402

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
QUESTION = "what is the capital of France"
FAKE_ANSWER = "Paris is the capital of France. It is a big city on the river Seine."
LATENCY_TRIALS = 15
LATENCY_TRIALS_REAL = 10
REAL_MAX_TOKENS = 40  # the bundled model's answers, cut short: only their start is measured
SOUND_RMS = 0.01  # a frame of the answer's speech (piper's speech: ~0.1)
QUIET = 0.01  # |sample| below this is the end of speech (piper's output ends in near-silence)


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


# The stages of one answer: end of speech -> VAD end of turn, -> transcript, -> first
# sentence sent to the call, -> its first packet with sound at the listener (seconds).
Stages = tuple[float, float, float, float]


def trimmed(pcm: np.ndarray) -> np.ndarray:
    """`pcm` without its trailing near-silence: its end is the end of speech."""
    loud = np.flatnonzero(np.abs(pcm) > QUIET)
    return pcm[: loud[-1] + 1] if loud.size else pcm


def turn_done(call: VoiceConversation, turns: int) -> bool:
    return call.turns >= turns and not call.answering


def first_speech_arrival(human: FakeHuman) -> float | None:
    listened = human.heard.get(BOT_ID)
    if listened is None:
        return None
    # Louder than the fake's "speech" mark: the encoder's tail of an interrupted answer can leave
    # faint sound in the silent lead-in of the next one.
    return next(
        (f.arrival for f in listened.frames if np.sqrt(np.mean(np.square(f.pcm))) > SOUND_RMS),
        None,
    )


async def answer_latency(
    llm: FakeLLMServer | str, trials: int, **settings: Any
) -> tuple[list[float], list[Stages]]:
    """End of speech -> first sound of the answer, per trial, and the stage split of each:
    (end of speech -> VAD end of turn, -> transcript, -> first clause sent, -> first sound)."""
    latencies: list[float] = []
    stages: list[Stages] = []
    question = trimmed(await speech(QUESTION))
    with tempfile.TemporaryDirectory() as tmp:
        async with voice_bot(Path(tmp), llm, DiscordWorld.ALICE, join=DiscordWorld.ALICE,
                             **settings) as bot:  # fmt: skip
            (alice,) = bot.humans
            for trial in range(trials + 1):  # the first one warms up, not counted
                alice.heard.clear()
                await alice.say(question, lead_in_s=0.3)
                ended = time.monotonic()
                await bot.voice.wait_for(lambda: first_speech_arrival(alice) is not None)
                arrival = first_speech_arrival(alice)
                call = bot.conversation
                call.hush()  # only the start of the answer is measured
                await bot.voice.wait_for(functools.partial(turn_done, call, trial + 1))
                # This question's turn (a misheard question may have been cut in two).
                times = next(t for t in call.times if t.speech_ended > ended)
                assert arrival is not None and times.answer_started is not None
                if trial == 0:
                    continue
                latencies.append(arrival - ended)
                stages.append(
                    (
                        times.speech_ended - ended,
                        times.transcribed - times.speech_ended,
                        times.answer_started - times.transcribed,
                        arrival - times.answer_started,
                    )
                )
    return latencies, stages


def latency_rows(label: str, latencies: list[float], stages: list[Stages]) -> list[tuple[str, str]]:
    names = ("VAD end of turn", "Whisper", "LLM + TTS to first audio", "send + first packet")
    split = ", ".join(
        f"{name} {1000 * statistics.median(s[i] for s in stages):.0f}"
        for i, name in enumerate(names)
    )
    return [
        (
            f"end of speech -> first answer audio, {label} ({len(latencies)} runs)",
            spread(latencies),
        ),
        (f"... median split, ms ({label})", split),
    ]


async def latency_on_and_off(
    label: str, llm: str | None, trials: int, **settings: Any
) -> list[tuple[str, str]]:
    """The latency rows of one setup, pipelining on then off, and the ratio of their medians.

    `llm`: a real server's URL ("": the managed llama-server), or None for the fake LLM.
    """
    rows: list[tuple[str, str]] = []
    medians = []
    for early in (True, False):
        load = os.getloadavg()[0]
        settings["voice_early_answer"] = early
        if llm is None:
            async with FakeLLMServer(behaviour=Behaviour(reply=FAKE_ANSWER)) as fake_llm:
                latencies, stages = await answer_latency(fake_llm, trials, **settings)
        else:
            latencies, stages = await answer_latency(llm, trials, **settings)
        name = f"{label}, pipelining {'on' if early else 'off'}, load {load:.1f}"
        rows += latency_rows(name, latencies, stages)
        medians.append(statistics.median(latencies))
    rows.append((f"... p50 pipelining on / off ({label})", f"{medians[0] / medians[1]:.2f}"))
    return rows


async def main() -> None:
    rows: list[tuple[str, str]] = []
    rows += await latency_on_and_off("fake LLM, Whisper tiny.en", None, LATENCY_TRIALS)
    rows += await latency_on_and_off(
        "fake LLM, Whisper base (the default)",
        None,
        LATENCY_TRIALS,
        stt_settings={"model": "base"},
    )
    rows += await latency_on_and_off(
        "bundled model, Whisper tiny.en",
        "",  # the managed llama-server with the bundled model
        LATENCY_TRIALS_REAL,
        llm_settings={"base_url": ""},
        engine={"max_tokens": REAL_MAX_TOKENS},
    )
    if sys.argv[1:] == ["latency"]:
        print_table(rows)
        return
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
    print_table(rows)


def print_table(rows: list[tuple[str, str]]) -> None:
    print("| Voice channel measure | Value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    asyncio.run(main())
