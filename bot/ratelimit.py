"""Per-user message rate: a token bucket per user, refilled continuously."""

from __future__ import annotations

import time
from collections.abc import Callable


class UserRateLimiter:
    """Allows `per_minute` messages a minute per key, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may send again (0: now); takes nothing."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * self.per_minute / 60.0)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / self.per_minute

    def allow(self, key: str) -> bool:
        """Take one token for `key`; False when the user is over the rate."""
        if self.per_minute <= 0:
            return True
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - at) * self.per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget users whose buckets are full again
            self._buckets = {
                k: v
                for k, v in self._buckets.items()
                if v[0] + (now - v[1]) * self.per_minute / 60.0 < self.per_minute
            }
        return True
