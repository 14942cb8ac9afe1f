"""What the delivery tests share: small budgets, feeding a stream, checking what the platform saw.

Every scenario runs on `run_virtual`: sleeping jumps the clock, so seconds of platform time cost
nothing, and the same seed always gives the same run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from bot.delivery.stream import ReplyStream
from bot.types import RateBudget, TargetLimits
from tests.fakes.streaming import FakePlatform, run_virtual

LIMITS = TargetLimits(
    max_chars=80,
    chat=RateBudget(rate=1.0, burst=2.0),
    platform=RateBudget(rate=30.0, burst=2.0),
    platform_key="fake",
)

NO_BURST = TargetLimits(
    max_chars=80,
    chat=RateBudget(rate=1.0, burst=1.0),
    platform=RateBudget(rate=30.0, burst=2.0),
    platform_key="fake",
)


def now() -> float:
    return asyncio.get_running_loop().time()


def over_budget(times: Iterable[float], budget: RateBudget) -> list[float]:
    """The calls a token bucket of `budget`, full at the first call, would not have allowed."""
    tokens, last, refused = budget.burst, None, []
    for at in sorted(times):
        if last is not None:
            tokens = min(budget.burst, tokens + (at - last) * budget.rate)
        last = at
        if tokens < 1.0 - 1e-6:
            refused.append(at)
        tokens -= 1.0
    return refused


def final_parts(platform: FakePlatform, ids: list[str]) -> list[str]:
    """The text each returned message was finalized with: exactly once, and still shown."""
    parts = []
    for message_id in ids:
        message = platform.messages[message_id]
        assert len(message.finalized) == 1, f"message {message_id} finalized {message.finalized}"
        assert not message.deleted
        assert message.text == message.finalized[0]
        parts.append(message.text)
    return parts


async def feed(stream: ReplyStream, pieces: Iterable[str], gap_s: float) -> float:
    """Append `pieces` one every `gap_s`; return when the last one arrived."""
    for piece in pieces:
        stream.append(piece)
        await asyncio.sleep(gap_s)
    return now()


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def simulate(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_virtual(scenario())
