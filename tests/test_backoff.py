"""The one backoff policy every retry loop uses (LLM, streamer, Telegram sends, llama-server)."""

from __future__ import annotations

import random

from bot.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_jitter_spreads_delays_within_bounds_and_never_past_the_cap() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.5, rng=random.Random(3))
    delays = [backoff.delay(attempt) for attempt in range(4) for _ in range(50)]
    for attempt in range(4):
        chunk = delays[attempt * 50 : (attempt + 1) * 50]
        base = min(8.0, 2.0**attempt)
        assert all(0.5 * base <= d <= min(8.0, 1.5 * base) for d in chunk)
        if 1.5 * base <= 8.0:  # below the cap: spread out, so many clients do not stampede
            assert len(set(chunk)) > 40
