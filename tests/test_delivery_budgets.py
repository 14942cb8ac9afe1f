"""The shared budgets on virtual time: replies sharing a chat, notices, typing, window budgets.

Each test runs on `run_virtual`: sleeping jumps the clock, so seconds of platform time cost
nothing, and the same seed always gives the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import defaultdict

import pytest

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from bot.delivery.budgets import windowed_budget
from bot.delivery.scheduler import EditScheduler
from bot.errors import DeliveryError, RetryAfter
from bot.types import RateBudget, TargetLimits
from tests.fakes.simulation import (
    LIMITS,
    NO_BURST,
    chunks,
    feed,
    final_parts,
    now,
    over_budget,
    simulate,
)
from tests.fakes.streaming import FakePlatform, Window

# --- sharing budgets --------------------------------------------------------------------------


def test_a_reply_that_shows_nothing_goes_before_edits_of_others() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        scheduler = EditScheduler()
        busy = scheduler.open(platform.target("c", NO_BURST, label="busy"))
        busy.append("streaming")  # sent at once: the bucket is empty until t=1
        await asyncio.sleep(0.1)
        busy.append(" more")  # asks first for the token of t=1
        await asyncio.sleep(0.1)
        new = scheduler.open(platform.target("c", NO_BURST, label="new"))
        new.append("Hi")  # asks later, but shows nothing yet
        await asyncio.sleep(5.0)
        await asyncio.gather(busy.finish(), new.finish())

    simulate(scenario)
    assert [(c.at, c.op, c.text) for c in platform.calls[:3]] == [
        (0.0, "send", "streaming ▌"),
        (1.0, "send", "Hi ▌"),
        (2.0, "edit", "streaming more ▌"),
    ]


def test_replies_in_one_chat_share_its_budget_round_robin() -> None:
    platform = FakePlatform()
    reply = "token " * 40  # 20 s of streaming
    limits = dataclasses.replace(LIMITS, max_chars=1000)

    async def scenario() -> None:
        scheduler = EditScheduler()
        streams = [scheduler.open(platform.target("c", limits, label=f"r{i}")) for i in range(4)]
        await asyncio.gather(*(feed(s, chunks(reply, 3), 0.25) for s in streams))
        results = await asyncio.gather(*(s.finish() for s in streams))
        for ids in results:
            assert final_parts(platform, ids) == [reply]

    simulate(scenario)
    assert over_budget([c.at for c in platform.calls], limits.chat) == []
    edits: dict[str, int] = defaultdict(int)
    for call in platform.calls:
        if call.op == "edit":
            edits[platform.messages[call.message_id or ""].label] += 1
    assert sorted(edits) == ["r0", "r1", "r2", "r3"]
    assert max(edits.values()) - min(edits.values()) <= 1


# --- limits from settings ---------------------------------------------------------------------


def test_window_budgets_never_exceed_the_window() -> None:
    for calls, window in [(5, 5.0), (20, 60.0), (30, 1.0), (50, 1.0), (2, 1.0)]:
        budget = windowed_budget(calls, window)
        assert budget.burst >= 1.0
        assert budget.burst + budget.rate * window <= calls + 1e-9


# --- every other call under the same budgets --------------------------------------------------


def test_a_notice_goes_after_first_text_and_before_interim_edits() -> None:
    platform = FakePlatform()
    chat = platform.target("c", NO_BURST, label="notice")

    async def scenario() -> None:
        scheduler = EditScheduler()
        busy = scheduler.open(platform.target("c", NO_BURST, label="busy"))
        busy.append("streaming")  # sent at once: the bucket is empty until t=1
        await asyncio.sleep(0.1)
        busy.append(" more")  # asks first for the token of t=1
        await asyncio.sleep(0.1)
        notice = asyncio.ensure_future(scheduler.call(chat, lambda: chat.send("A notice")))
        await asyncio.sleep(0.1)
        new = scheduler.open(platform.target("c", NO_BURST, label="new"))
        new.append("Hi")  # asks last, but shows nothing yet
        await asyncio.sleep(5.0)
        await notice
        await asyncio.gather(busy.finish(), new.finish())

    simulate(scenario)
    assert [(c.at, c.op, c.text) for c in platform.calls[:4]] == [
        (0.0, "send", "streaming ▌"),
        (1.0, "send", "Hi ▌"),
        (2.0, "send", "A notice"),
        (3.0, "edit", "streaming more ▌"),
    ]


def test_a_429_on_a_notice_pauses_the_chat_and_the_notice_goes_after_the_pause() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS, label="notice")

    async def scenario() -> None:
        scheduler = EditScheduler()
        platform.failures.append(RetryAfter(3.0))
        notice = asyncio.ensure_future(scheduler.call(chat, lambda: chat.send("Heads up")))
        await asyncio.sleep(0.1)
        stream = scheduler.open(platform.target("c", LIMITS, label="reply"))
        stream.append("Hello")  # the chat is paused from t=0.05 (the 429's answer) to 3.05
        await notice
        await stream.finish()

    simulate(scenario)
    assert platform.violations == []  # nothing went out during the pause
    assert [(c.op, c.text, c.outcome) for c in platform.calls] == [
        ("send", "Heads up", "429"),
        ("send", "Hello ▌", "ok"),  # a reply's first text goes first after the pause
        ("send", "Heads up", "ok"),  # the notice was not dropped: it came again
        ("finalize", "Hello", "ok"),
    ]
    assert platform.calls[1].at >= 3.05


def test_a_notice_that_cannot_land_in_time_raises() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler(final_deadline_s=10.0)
        platform.failures.extend(RetryAfter(4.0) for _ in range(10))
        with pytest.raises(DeliveryError, match="10 s"):
            await scheduler.call(chat, lambda: chat.send("Heads up"))
        assert 10.0 <= now() <= 10.1

    simulate(scenario)
    assert [c.outcome for c in platform.calls] == ["429"] * 3


def test_a_notice_is_retried_through_network_failures_a_few_times() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler()
        platform.failures.extend([ConnectionError("reset"), TimeoutError()])
        await scheduler.call(chat, lambda: chat.send("one"))
        platform.failures.extend([ConnectionError("reset")] * 3)
        with pytest.raises(ConnectionError):
            await scheduler.call(chat, lambda: chat.send("two"))

    simulate(scenario)
    assert [(c.text, c.outcome) for c in platform.calls] == [
        ("one", "failed"),
        ("one", "failed"),
        ("one", "ok"),
        ("two", "failed"),
        ("two", "failed"),
        ("two", "failed"),
    ]


# Two places for text and two for typing indicators in every 1/15 s.
TYPING_ROOM = TargetLimits(
    max_chars=80,
    chat=RateBudget(rate=1.0, burst=2.0),
    platform=RateBudget(rate=60.0, burst=4.0),
    platform_key="fake",
)


def test_typing_takes_none_of_texts_places_and_is_skipped_while_text_waits() -> None:
    platform = FakePlatform()
    typist = platform.target("t", TYPING_ROOM)

    async def scenario() -> None:
        scheduler = EditScheduler()
        typing = asyncio.ensure_future(scheduler.offer(typist, typist.typing))
        # The indicator has a place of its own: both of text's places are left for text.
        first = [scheduler.open(platform.target(key, TYPING_ROOM)) for key in "ab"]
        for stream in first:
            stream.append("Hi")
        assert await typing  # nothing else was going on: it went
        assert [(c.at, c.op) for c in platform.calls] == [
            (0.0, "typing"),
            (0.0, "send"),
            (0.0, "send"),
        ]
        await asyncio.sleep(1.0)  # every place is free again
        # Three first texts for text's two places: one waits, and while it does no indicator
        # goes, though the indicators' place is free.
        later = [scheduler.open(platform.target(key, TYPING_ROOM)) for key in "cde"]
        for stream in later:
            stream.append("Hello")
        await asyncio.sleep(0.06)  # two of them answered, the third waits for a place
        assert [c.op for c in platform.calls].count("send") == 4
        assert not await scheduler.offer(typist, typist.typing)  # skipped, not queued
        await asyncio.gather(*(stream.finish() for stream in first + later))

    simulate(scenario)
    assert platform.violations == []
    assert [c.op for c in platform.calls].count("typing") == 1


def _burst_timeline(chats: int, *, typing: bool) -> list[tuple[float, str, str, str]]:
    """The text calls of `chats` replies that start at once, each after a typing indicator.

    As in the engine: the reply's stream opens, typing is asked for at once and every 0.5 s
    until the first token, which comes 0.1-0.6 s later; then the reply streams for 3 s.
    """
    rng = random.Random(5)
    platform = FakePlatform(
        latency_s=(0.03, 0.12), windows=(Window("chat", 5, 5.0), Window("global", 50, 1.0))
    )
    limits = discord_limits(DiscordSettings())
    first_tokens = [rng.uniform(0.1, 0.6) for _ in range(chats)]

    async def one(i: int, scheduler: EditScheduler) -> None:
        target = platform.target(f"c{i}", limits)
        start = now()
        stream = scheduler.open(target)
        while typing and now() < start + first_tokens[i]:
            await scheduler.offer(target, target.typing)
            await asyncio.sleep(min(0.5, start + first_tokens[i] - now()))
        await asyncio.sleep(max(0.0, start + first_tokens[i] - now()))
        await feed(stream, [f"w{n} " for n in range(30)], 0.1)
        await stream.finish()

    async def scenario() -> None:
        scheduler = EditScheduler()
        await asyncio.gather(*(one(i, scheduler) for i in range(chats)))

    simulate(scenario)
    assert platform.violations == []
    assert not [c for c in platform.calls if c.outcome == "429"]
    if typing:
        assert any(c.op == "typing" for c in platform.calls)
    # Rounded: a bucket refilled at other moments adds up the same time in other float steps.
    return [(round(c.at, 9), c.op, c.chat_key, c.text) for c in platform.calls if c.op != "typing"]


def test_typing_never_delays_a_replys_text() -> None:
    """50 replies at once, each chat asking for typing until its first token: the text goes out
    at exactly the moments it would without any typing indicator."""
    assert _burst_timeline(50, typing=True) == _burst_timeline(50, typing=False)
