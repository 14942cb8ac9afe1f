"""Waiting on state held outside the bot (a fake's counters): a hang guard, not a timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

HANG_GUARD_S = 60.0  # long enough for a loaded 2-core machine; only a hang gets this far


async def eventually(predicate: Callable[[], object], *, limit_s: float = HANG_GUARD_S) -> None:
    """Wait until `predicate()` holds, checking every few milliseconds."""
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.01)
