"""A platform's window: its whole count at once, and never more than its count in any window.

The property test drives the scheduler with random calls on virtual time: calls of every
priority, typing indicators, grants given back unmade, waiting calls cancelled, 429s (global and
per chat) and network failures, each call reaching the platform after a random delay and
answered after another. However the delays fall, no window of the platform's length holds more
of its calls than the budget's count, on the platform's side (when they arrive) as on ours (when
they are granted), and none arrives during a global 429's pause.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from bot.delivery.budgets import Priority, platform_windows
from bot.delivery.scheduler import EditScheduler
from bot.errors import RetryAfter
from bot.types import RateBudget, TargetLimits
from tests.fakes.simulation import now, simulate
from tests.fakes.streaming import FakePlatform, Window

_EPS = 1e-9  # float error of a moment computed as a sum of two others


@dataclass(frozen=True)
class Job:
    """One caller: what it does, when, and how its first attempt goes."""

    start: float
    kind: str  # "call", "typing", "refund" (granted, then given back), "cancel" (gives up waiting)
    priority: Priority
    forward_s: float  # grant -> the platform counts it
    back_s: float  # the platform counts it -> its answer
    failure: str | None  # "global", "chat", "network" or None, on the first attempt only
    chat: int


@dataclass
class Seen:
    """What happened, by the platform's clock and by ours."""

    grants: list[float] = field(default_factory=list)  # a call started: tokens granted
    arrivals: list[float] = field(default_factory=list)  # the platform counted it
    pauses: list[tuple[float, float]] = field(default_factory=list)  # global 429s


class Where:
    """A chat of the simulated platform, as the scheduler sees it."""

    def __init__(self, chat: int, limits: TargetLimits) -> None:
        self._chat_key = f"c{chat}"
        self._limits = limits

    @property
    def chat_key(self) -> str:
        return self._chat_key

    @property
    def limits(self) -> TargetLimits:
        return self._limits


jobs = st.builds(
    Job,
    start=st.floats(0.0, 3.0),
    kind=st.sampled_from(["call", "call", "call", "typing", "refund", "cancel"]),
    priority=st.sampled_from([p for p in Priority if p is not Priority.TYPING]),
    forward_s=st.floats(0.0, 0.4),
    back_s=st.floats(0.0, 0.4),
    failure=st.sampled_from([None, None, None, "global", "chat", "network"]),
    chat=st.integers(0, 4),
)


def most_in_a_window(moments: list[float], window_s: float) -> int:
    """The most of `moments` in any half-open window of `window_s` (as the platforms count)."""
    ordered, most, first = sorted(moments), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= window_s - _EPS:
            first += 1
        most = max(most, last - first + 1)
    return most


async def run_job(scheduler: EditScheduler, where: Where, job: Job, seen: Seen) -> None:
    await asyncio.sleep(job.start)
    failures = [job.failure]

    async def make() -> None:
        seen.grants.append(now())
        await asyncio.sleep(job.forward_s)
        arrived = now()
        seen.arrivals.append(arrived)
        await asyncio.sleep(job.back_s)
        failure = failures.pop() if failures else None
        if failure in ("global", "chat"):
            retry_after = 0.3 + job.forward_s
            if failure == "global":
                seen.pauses.append((now(), now() + retry_after))
            raise RetryAfter(retry_after, is_global=failure == "global")
        if failure == "network":
            raise ConnectionError("reset")

    if job.kind == "call":
        await scheduler.call(where, make, priority=job.priority)
    elif job.kind == "typing":
        with contextlib.suppress(ConnectionError):  # an indicator is not retried
            await scheduler.offer(where, make)
    else:
        lane = scheduler.lane(where)
        request = scheduler.request(lane, job.priority, float("inf"))
        waiting = asyncio.ensure_future(scheduler.acquire(request))
        if job.kind == "cancel":
            await asyncio.sleep(job.forward_s)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            if not waiting.cancelled():  # granted before it gave up: it gives the grant back
                scheduler.refund(lane)
        else:
            await waiting
            await asyncio.sleep(job.forward_s)  # the stream found nothing left to write
            scheduler.refund(lane)


@settings(max_examples=300, deadline=None)
@given(
    calls=st.integers(3, 12),
    window_s=st.sampled_from([0.25, 1.0, 2.0]),
    work=st.lists(jobs, min_size=1, max_size=60),
)
def test_no_window_ever_holds_more_than_the_platforms_count(
    calls: int, window_s: float, work: list[Job]
) -> None:
    limits = TargetLimits(
        max_chars=100,
        chat=RateBudget(rate=100.0, burst=100.0),  # the platform's window is what holds calls
        platform=RateBudget(rate=calls / window_s, burst=float(calls)),
        platform_key="fake",
    )
    seen = Seen()

    async def scenario() -> None:
        scheduler = EditScheduler()
        wheres = [Where(chat, limits) for chat in range(5)]
        await asyncio.gather(*(run_job(scheduler, wheres[j.chat], j, seen) for j in work))

    simulate(scenario)  # every job ends: a full window never strands a waiting call
    assert most_in_a_window(seen.arrivals, window_s) <= calls
    assert most_in_a_window(seen.grants, window_s) <= calls
    for start, end in seen.pauses:
        assert not [t for t in seen.grants if start + _EPS < t < end - _EPS]


def test_a_window_lets_its_whole_count_through_at_once_and_the_rest_a_window_after() -> None:
    """60 replies at once on Discord: 45 first messages at once (two places of the 47 are for
    typing), the other 15 a window after the first answers; none draws a 429."""
    limits = discord_limits(DiscordSettings())
    text_places, typing_places, window_s = platform_windows(limits.platform)
    assert (text_places, typing_places, window_s) == (45, 2, 1.0)
    platform = FakePlatform(
        latency_s=(0.05, 0.05), windows=(Window("chat", 5, 5.0), Window("global", 50, 1.0))
    )

    async def scenario() -> None:
        scheduler = EditScheduler()
        streams = [scheduler.open(platform.target(f"c{i}", limits)) for i in range(60)]
        for stream in streams:
            stream.append("Hi")
        await asyncio.gather(*(stream.finish() for stream in streams))

    simulate(scenario)
    sends = sorted(c.at for c in platform.calls if c.op == "send")
    assert sends[:45] == [0.0] * 45
    assert min(sends[45:]) >= 1.05  # the first answers came at 0.05
    assert not [c for c in platform.calls if c.outcome == "429"]
    assert platform.violations == []
