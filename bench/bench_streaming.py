"""Reply streaming: Parley's shared token buckets against one global edit per second (llmcord).

Both approaches stream the same replies to the same simulated platform, which enforces the
platform's documented limits and answers 429 beyond them (the baseline then sleeps retry_after
and retries, as discord.py does). Time is virtual: the run takes seconds however long the
simulated minutes, and every run prints the same numbers.

    python bench/bench_streaming.py

Per chat: visible updates per second while tokens arrive, time from the first token to the first
visible text, and time from the last token to the final text being visible (median, p95).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from adapters.telegram.config import TelegramSettings
from adapters.telegram.targets import chat_limits as telegram_limits
from bot.delivery.scheduler import EditScheduler
from bot.errors import RetryAfter
from bot.types import TargetLimits
from tests.fakes.streaming import FakePlatform, FakeTarget, Window, run_virtual

T = TypeVar("T")

CHAT_COUNTS = (1, 10, 200)
TOKENS_PER_REPLY = 240
TOKENS_PER_S = 30.0  # one llama-server slot on a small model (see NOTES.md: 33-40 tokens/s)
START_SPREAD_S = 1.0  # replies start within this window
LATENCY_S = (0.08, 0.15)  # one REST round trip
BASELINE_EDIT_INTERVAL_S = 1.0  # llmcord's EDIT_DELAY_SECONDS, shared by the whole bot
MARKER = " ▌"
_WORDS = ("the", "model", "streams", "a", "reply,", "token", "by", "token.", "`code`", "and")


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    limits: TargetLimits
    windows: tuple[Window, ...]  # what the simulated platform enforces


PLATFORMS = (
    Platform(
        "Discord",
        discord_limits(DiscordSettings()),
        (Window("chat", 5, 5.0), Window("global", 50, 1.0)),
    ),
    Platform(
        "Telegram group",
        telegram_limits(TelegramSettings(), is_private=False),
        (Window("chat", 20, 60.0), Window("global", 30, 1.0)),
    ),
)


@dataclass(slots=True)
class Timeline:
    """What one chat saw."""

    first_token: float = 0.0
    last_token: float = 0.0
    final_text: str = ""


def reply_tokens(rng: random.Random) -> list[str]:
    return [rng.choice(_WORDS) + " " for _ in range(TOKENS_PER_REPLY)]


async def produce(
    tokens: list[str], sink: Callable[[str], Awaitable[None]], line: Timeline
) -> None:
    """Hand `tokens` to `sink` as the model generates them.

    The model keeps its own pace: a sink that blocks (the baseline awaits its first message)
    gets the tokens generated meanwhile all at once, as from a buffered HTTP stream.
    """
    loop = asyncio.get_running_loop()
    line.first_token = loop.time()
    line.last_token = line.first_token + (len(tokens) - 1) / TOKENS_PER_S
    for index, token in enumerate(tokens):
        delay = line.first_token + index / TOKENS_PER_S - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await sink(token)
    line.final_text = "".join(tokens)


async def parley_reply(
    scheduler: EditScheduler, target: FakeTarget, tokens: list[str], line: Timeline
) -> None:
    stream = scheduler.open(target, marker=MARKER)

    async def sink(token: str) -> None:
        stream.append(token)

    await produce(tokens, sink, line)
    await stream.finish()


class GlobalThrottle:
    """llmcord's pacing: an interim edit only if no reply edited in the last second."""

    def __init__(self) -> None:
        self.last_edit = -BASELINE_EDIT_INTERVAL_S


async def with_retries(call: Callable[[], Awaitable[T]]) -> T:
    """discord.py's behaviour on a 429: sleep retry_after, then try again."""
    while True:
        try:
            return await call()
        except RetryAfter as exc:
            await asyncio.sleep(exc.retry_after)


async def baseline_reply(
    throttle: GlobalThrottle, target: FakeTarget, tokens: list[str], line: Timeline
) -> None:
    loop = asyncio.get_running_loop()
    text = ""
    message_id: str | None = None
    edit: asyncio.Task[None] | None = None

    async def sink(token: str) -> None:
        nonlocal text, message_id, edit
        text += token
        if message_id is None:  # the first message goes out at once, awaited in the token loop
            message_id = await with_retries(lambda: target.send(text + MARKER))
            return
        idle = edit is None or edit.done()
        if idle and loop.time() - throttle.last_edit >= BASELINE_EDIT_INTERVAL_S:
            shown, mid = text + MARKER, message_id
            edit = asyncio.create_task(with_retries(lambda: target.edit(mid, shown)))
            throttle.last_edit = loop.time()

    await produce(tokens, sink, line)
    if edit is not None:
        await edit
    assert message_id is not None
    final_id = message_id
    await with_retries(lambda: target.finalize(final_id, text))


async def run(platform: Platform, chats: int, approach: str) -> tuple[FakePlatform, list[Timeline]]:
    fake = FakePlatform(latency_s=LATENCY_S, windows=platform.windows, seed=chats)
    rng = random.Random(chats)
    lines = [Timeline() for _ in range(chats)]
    scheduler = EditScheduler()
    throttle = GlobalThrottle()

    async def one(i: int) -> None:
        await asyncio.sleep(rng.uniform(0.0, START_SPREAD_S))
        target = fake.target(f"chat-{i}", platform.limits)
        tokens = reply_tokens(rng)
        if approach == "parley":
            await parley_reply(scheduler, target, tokens, lines[i])
        else:
            await baseline_reply(throttle, target, tokens, lines[i])

    await asyncio.gather(*(one(i) for i in range(chats)))
    return fake, lines


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True, slots=True)
class Result:
    updates: list[float]  # visible updates per second of each chat while its tokens arrive
    first: float  # median delay from the first token to the first visible text
    final: float  # median delay from the last token to the final text being visible
    final_p95: float


def measure(fake: FakePlatform, lines: list[Timeline]) -> Result:
    """What the users of all chats saw."""
    rates, firsts, finals = [], [], []
    for i, line in enumerate(lines):
        shown = fake.ok_calls(f"chat-{i}")
        during = [c for c in shown if line.first_token <= c.done_at <= line.last_token]
        rates.append(len(during) / (line.last_token - line.first_token))
        firsts.append(shown[0].done_at - line.first_token)
        final = next(c for c in shown if c.text == line.final_text)
        finals.append(final.done_at - line.last_token)
    return Result(
        rates, statistics.median(firsts), statistics.median(finals), percentile(finals, 0.95)
    )


def main() -> None:
    print(
        f"Each chat gets one reply of {TOKENS_PER_REPLY} tokens at {TOKENS_PER_S:g} tokens/s; "
        f"REST latency {LATENCY_S[0]:g}-{LATENCY_S[1]:g} s; virtual time.\n"
    )
    print(
        "| platform | chats | approach | updates/s per chat, median (min–max) "
        "| first text visible (s) | last token → final visible (s), median / p95 | 429s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for platform in PLATFORMS:
        for chats in CHAT_COUNTS:
            for approach, label in (("parley", "Parley"), ("baseline", "global 1 edit/s")):
                fake, lines = run_virtual(run(platform, chats, approach))
                result = measure(fake, lines)
                rates = result.updates
                spread = f"{statistics.median(rates):.2f} ({min(rates):.2f}–{max(rates):.2f})"
                limited = sum(c.outcome == "429" for c in fake.calls)
                print(
                    f"| {platform.name} | {chats} | {label} | {spread} | {result.first:.2f} "
                    f"| {result.final:.2f} / {result.final_p95:.2f} | {limited} |"
                )


if __name__ == "__main__":
    main()
