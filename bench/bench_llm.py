"""LLM slots and servers, on real llama-servers with the bundled model.

(a) affinity: 8 channels at once, 5 turns each, one llama-server -np 4: time to first token of
    the later turns / of the first turn, with and without slot affinity; with llama-server's
    host-memory prompt cache (--cache-ram, on by default) and without it (--cache-ram 0).
(b) delivered: tokens/s through the whole bot (engine, store, streamer, a platform target) /
    tokens/s straight from llama-server, same prompt, same server, alternating; and where the
    difference goes (start lag, decoding through the engine, the tail to the final text).
(c) servers: replies' tokens/s through the bot with one llama-server and with two (same
    machine), alternating.

Everything is a ratio taken within one run: the machine is shared and its speed drifts.
Run: .venv/bin/python bench/bench_llm.py [affinity] [delivered] [servers]   (default: all)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import REGISTRY

from bot.app import ParleyApp
from bot.channel_config import ChannelSettings
from bot.config import Settings
from bot.llama_server import ManagedLlamaServer
from bot.llm import LLMClient, LLMRequest, StreamEvent
from bot.llm_settings import LLMServerSettings, LLMSettings
from bot.prompt import build_request, system_prompt
from bot.queue import TurnQueue
from bot.types import IncomingMessage
from tests.fakes.targets import RecordingTarget

CHANNELS = 8
TURNS = 5
SLOTS = 4
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Server:
    """A llama-server with the bundled model, started for one part of the benchmark."""

    name: str
    parallel: int
    ctx_size: int
    extra_args: list[str] = field(default_factory=list)
    threads: int = 0

    async def __aenter__(self) -> ManagedLlamaServer:
        settings = LLMServerSettings(
            parallel=self.parallel,
            ctx_size=self.ctx_size,
            extra_args=self.extra_args,
            threads=self.threads,
        )
        log = Path(tempfile.gettempdir()) / f"bench-llm-{self.name}-{os.getpid()}.log"
        self._server = ManagedLlamaServer(settings, log_path=log)
        await self._server.start()
        return self._server

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop()


# -- (a) prompt-cache affinity ---------------------------------------------------------------


def seeded_history(channel: str) -> str:
    """A long history only this channel has (~550 tokens): what a cache hit saves."""
    lines = [
        f"User: tell me about the {channel} garden, bed {i}.\n"
        f"Parley: Bed {i} of the {channel} garden grows {channel}-beans and {i} tulips.\n"
        for i in range(12)
    ]
    return "This is a conversation between User and Parley.\n\n" + "".join(lines)


@dataclass
class AffinityResult:
    first: list[float] = field(default_factory=list)  # time to first token, turn 1
    later: list[float] = field(default_factory=list)  # turns 2..5
    cached: int = 0  # prompt tokens taken from a cache (llama.cpp timings cache_n), later turns
    processed: int = 0  # prompt tokens processed anew, later turns
    landed: str = ""  # hit / moved / new / shared counts of the pool

    @property
    def ratio(self) -> float:
        return median(self.later) / median(self.first)


async def affinity_run(url: str, *, affinity: bool, tag: str, channels: int) -> AffinityResult:
    """Channels at once, 5 turns each, through the same LLM client and queue as the bot."""
    settings = LLMSettings(timeout_s=600.0, retries=0)
    llm = LLMClient(settings, [url], "completion", known_slots={url: SLOTS}, affinity=affinity)
    await llm.discover()
    queue = TurnQueue(SLOTS)
    result = AffinityResult()

    async def nothing(position: int) -> None:
        return None

    async def channel(name: str) -> None:
        history = seeded_history(name)
        for turn in range(TURNS):
            prompt = f"{history}User: and bed {turn + 30}?\nParley:"
            request = LLMRequest(prompt=prompt, max_tokens=8, temperature=0.0)
            usage: dict[str, Any] = {}
            answer = ""
            async with queue.turn(name, nothing):
                started = time.perf_counter()
                first = 0.0
                async for event in llm.stream(request, affinity=name):
                    first = first or time.perf_counter() - started
                    answer += event.text
                    usage |= event.usage
            (result.first if turn == 0 else result.later).append(first)
            if turn:
                result.cached += int(usage.get("cache_n", 0))
                result.processed += int(usage.get("prompt_n", 0))
            history = f"{prompt}{answer.splitlines()[0] if answer.strip() else ' ok'}\n"

    await asyncio.gather(*(channel(f"{tag}{i}") for i in range(channels)))
    stats = llm.pool.stats
    result.landed = f"{stats['hit']} / {stats['moved']} / {stats['new']} / {stats['shared']}"
    await llm.close()
    return result


async def bench_affinity() -> None:
    print(f"## (a) affinity: channels at once, {TURNS} turns each, one llama-server -np {SLOTS}")
    print()
    print(
        "| llama-server | channels | affinity | TTFT turn 1 (median) | TTFT turns 2-5 (median) "
        "| ratio | cached / processed prompt tokens, turns 2-5 | slot hit / moved / new / shared |"
    )
    print("|---|---|---|---|---|---|---|---|")
    run = 0
    for label, extra in (("default (--cache-ram 8192)", []), ("--cache-ram 0", ["-cram", "0"])):
        async with Server("affinity", SLOTS, 8192, extra) as server:
            for channels in (CHANNELS, SLOTS):
                # Each run with its own channels, so none inherits another's cache.
                for affinity in (False, True):
                    run += 1
                    result = await affinity_run(
                        server.url, affinity=affinity, tag=f"r{run}c", channels=channels
                    )
                    print(
                        f"| {label} | {channels} | {'on' if affinity else 'off'} "
                        f"| {median(result.first):.3f} s | {median(result.later):.3f} s "
                        f"| {result.ratio:.2f} | {result.cached} / {result.processed} "
                        f"| {result.landed if affinity else '-'} |",
                        flush=True,
                    )
    print()


# -- (b) tokens/s through the whole bot vs straight from llama-server --------------------------


class TimedTarget(RecordingTarget):
    """A platform target that notes when the first text and the final text are shown."""

    def __init__(self) -> None:
        super().__init__()
        self.first_at = 0.0
        self.final_at = 0.0

    async def send(self, text: str) -> str:
        self.first_at = self.first_at or time.perf_counter()
        return await super().send(text)

    async def finalize(self, message_id: str, text: str) -> str:
        self.final_at = time.perf_counter()
        return await super().finalize(message_id, text)


@dataclass
class TokenTimes:
    """When the engine's LLM client yielded its first and last answer token."""

    first: float = 0.0
    last: float = 0.0
    tokens: int = 0


def observe_stream(llm: LLMClient, times: TokenTimes) -> None:
    """Wrap the client's stream to note token times (the bot's own path, only observed)."""
    real = llm.stream

    async def stream(
        request: LLMRequest, *, affinity: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        async for event in real(request, affinity=affinity):
            if event.text:
                now = time.perf_counter()
                times.first = times.first or now
                times.last = now
            if "completion_tokens" in event.usage:
                times.tokens = int(event.usage["completion_tokens"])
            yield event

    llm.stream = stream  # type: ignore[method-assign]


async def bench_delivered() -> None:
    print("## (b) tokens/s delivered through the whole bot / straight from llama-server")
    print()
    # With the gemma turn format the base model never stops early: every run decodes
    # max_tokens, a long equal stretch of decoding for both paths.
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            storage={"path": str(Path(tmp) / "d.db")},
            llm={"prompt_format": "gemma"},
            engine={"temperature": 0.0, "max_tokens": 256, "history_tokens": 0},
        )
        question = "Write a long story about a dragon who learns to cook."
        async with ParleyApp(settings, speech=False) as app:
            # Straight from the server, through the bot's own LLM client (its slot bookkeeping
            # then covers both requests) but not through the engine.
            raw = app.llm
            channel = ChannelSettings.resolve(settings, {})
            request = build_request(
                api=app.llm.api,
                prompt_format=settings.llm.prompt_format,
                system=system_prompt(channel, settings.engine.bot_name),
                history=[],
                user_text=question,
                settings=channel,
                bot_name=settings.engine.bot_name,
            )
            ratios, lags, tails, decode = [], [], [], []
            raw_rates, bot_rates = [], []

            async def direct() -> tuple[float, int]:
                first = last = 0.0
                tokens = 0
                async for event in LLMClient.stream(raw, request):  # not the observed one
                    if event.text:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                    tokens = int(event.usage.get("completion_tokens", tokens))
                return (tokens - 1) / (last - first), tokens

            times = TokenTimes()
            observe_stream(app.engine.llm, times)
            for i in range(ROUNDS):
                times.first = times.last = 0.0
                target = TimedTarget()
                # Both at once on the server's two slots: llama.cpp decodes them in one batch,
                # so they get the same token cadence and the same machine, whatever its load.
                (raw_rate, _), _ = await asyncio.gather(
                    direct(),
                    app.engine.handle(
                        IncomingMessage("bench", f"d{i}", "u", "u", question), target
                    ),
                )
                bot_rate = (times.tokens - 1) / (target.final_at - target.first_at)
                raw_rates.append(raw_rate)
                bot_rates.append(bot_rate)
                ratios.append(bot_rate / raw_rate)
                lags.append((target.first_at - times.first) * 1000)
                tails.append((target.final_at - times.last) * 1000)
                decode.append(((times.tokens - 1) / (times.last - times.first)) / raw_rate)
                print(
                    f"  round {i}: direct {raw_rate:.1f}, bot {bot_rate:.1f} tokens/s "
                    f"({times.tokens} tokens); decoding through the engine "
                    f"{decode[-1]:.3f} of direct, tail {tails[-1]:.1f} ms",
                    file=sys.stderr,
                )
            # The same, one after the other (as measured before): the machine's drift shows, and
            # the process's CPU time per token says what the bot costs a shared machine.
            sequential, cpu_raw, cpu_bot = [], [], []
            for i in range(ROUNDS):
                rates: dict[bool, float] = {}
                for through_bot in (False, True) if i % 2 == 0 else (True, False):
                    cpu = time.process_time()
                    if through_bot:
                        times.first = times.last = 0.0
                        target = TimedTarget()
                        message = IncomingMessage("bench", f"s{i}", "u", "u", question)
                        await app.engine.handle(message, target)
                        rates[True] = (times.tokens - 1) / (target.final_at - target.first_at)
                        cpu_bot.append((time.process_time() - cpu) * 1000 / times.tokens)
                    else:
                        rates[False], tokens = await direct()
                        cpu_raw.append((time.process_time() - cpu) * 1000 / tokens)
                sequential.append(rates[True] / rates[False])
                print(
                    f"  one after the other {i}: direct {rates[False]:.1f}, "
                    f"bot {rates[True]:.1f} tokens/s",
                    file=sys.stderr,
                )
    print(f"| measure (median of {ROUNDS} rounds, raw and bot at once) | value |")
    print("|---|---|")
    print(f"| straight from llama-server, first to last token | {median(raw_rates):.1f} tokens/s |")
    print(f"| through the bot, first text to final text shown | {median(bot_rates):.1f} tokens/s |")
    print(f"| **ratio bot / direct** (each round's own pair) | **{median(ratios):.3f}** |")
    print(f"| decoding as the engine reads it / direct | {median(decode):.3f} |")
    print(f"| first token -> first text shown | {median(lags):.1f} ms |")
    print(f"| last token -> final text shown | {median(tails):.1f} ms |")
    print(
        f"| one after the other, alternating: ratio median (min-max) | {median(sequential):.3f}"
        f" ({min(sequential):.2f}-{max(sequential):.2f}) |"
    )
    print(
        f"| CPU of this process per token: direct client / whole bot | {median(cpu_raw):.2f} ms"
        f" / {median(cpu_bot):.2f} ms |"
    )
    print()


# -- (c) one llama-server vs two ------------------------------------------------------------


def tokens_out() -> float:
    return REGISTRY.get_sample_value("parley_tokens_out_total") or 0.0


async def pool_throughput(urls: list[str], tmp: Path, run: int) -> float:
    """Tokens/s over 8 chats at once, each asking for 64 tokens, through the whole bot."""
    settings = Settings(
        storage={"path": str(tmp / f"s{run}.db")},
        llm={"backends": urls, "api": "completion", "prompt_format": "gemma", "timeout_s": 300},
        engine={"temperature": 0.0, "max_tokens": 64, "history_tokens": 0},
    )
    async with ParleyApp(settings, speech=False) as app:
        before = tokens_out()
        started = time.perf_counter()
        await asyncio.gather(
            *(
                app.engine.handle(
                    IncomingMessage("bench", f"s{run}-{i}", "u", "u", f"Tell story {i}."),
                    RecordingTarget(key=f"bench:{i}"),
                )
                for i in range(CHANNELS)
            )
        )
        elapsed = time.perf_counter() - started
        return (tokens_out() - before) / elapsed


async def bench_servers() -> None:
    print(f"## (c) throughput, {CHANNELS} chats at once: one llama-server vs two (same machine)")
    print()
    print("| servers (-np 4 each) | threads | one: tokens/s | two: tokens/s | **two / one** |")
    print("|---|---|---|---|---|")
    cores = os.cpu_count() or 1
    # Default threads (each server takes every core), then the cores split between the two.
    for label, one_threads, two_threads in (
        ("default", 0, 0),
        (f"{cores} / {max(1, cores // 2)} + {max(1, cores // 2)}", cores, max(1, cores // 2)),
    ):
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            one, two = [], []
            async with (
                Server("one", SLOTS, 4096, threads=one_threads) as single,
                Server("a", SLOTS, 4096, threads=two_threads) as a,
                Server("b", SLOTS, 4096, threads=two_threads) as b,
            ):
                for run in range(3):  # alternating, medians of 3
                    one.append(await pool_throughput([single.url], tmp, 2 * run))
                    two.append(await pool_throughput([a.url, b.url], tmp, 2 * run + 1))
        print(
            f"| {label} | {'llama-server decides' if not one_threads else 'set with -t'} "
            f"| {median(one):.1f} | {median(two):.1f} | **{median(two) / median(one):.2f}** |",
            flush=True,
        )
    print()


async def main(parts: list[str]) -> None:
    if "affinity" in parts:
        await bench_affinity()
    if "delivered" in parts:
        await bench_delivered()
    if "servers" in parts:
        await bench_servers()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["affinity", "delivered", "servers"]))
