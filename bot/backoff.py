"""The one backoff policy: exponential growth, a cap, and jitter so retries do not stampede."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays `initial * factor**n` for the n-th retry, at most `cap`, each scaled by jitter.

    `jitter` = 0.5 spreads a delay over [0.5, 1.5] of its value; 0 keeps it exact (simulations
    on a virtual clock). `next()` gives the next delay, `reset()` starts over after a success.
    """

    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0 = the first retry)."""
        base = min(self.cap, self.initial * self.factor**attempt)
        if not self.jitter:
            return base
        return min(self.cap, base * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter))

    def next(self) -> float:
        """The delay before the next retry; each call counts one more attempt."""
        wait = self.delay(self.attempts)
        self.attempts += 1
        return wait

    def reset(self) -> None:
        """The call succeeded: the next failure starts from `initial` again."""
        self.attempts = 0
