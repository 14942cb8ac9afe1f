"""The attempt throttle: attempts per key (e.g. a client address) in a scope (e.g. the console's
sign-in), counted in the database BEFORE the check they guard.

So every process sharing the database counts the same attempts, and attempts arriving at once
cannot all find the count below the limit: each is one write transaction whose first statement
locks the key's row (an upsert), so they are counted one after another, and only an attempt that
was counted may go on to its check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bot.storage.database import Database, Tx

# Doublings of the wait after which it stops growing (also keeps 2**n small).
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How many attempts a key gets before it waits, and how long it waits then."""

    free: int = 5
    """Attempts that go ahead one after another; the last of them starts the first wait."""
    first_wait_s: float = 30.0
    """The first wait; every attempt after it doubles the wait."""
    max_wait_s: float = 15 * 60.0
    """The longest wait."""
    memory_s: float = 15 * 60.0
    """A key without an attempt for this long (and not waiting) starts again from nothing."""

    def wait_after(self, attempts: int) -> float:
        """The wait the `attempts`-th attempt starts (0 before the `free`-th)."""
        if attempts < self.free:
            return 0.0
        doublings = min(attempts - self.free, _MAX_DOUBLINGS)
        return min(self.max_wait_s, self.first_wait_s * 2**doublings)


class Throttles:
    """The store's attempt throttle (any scope: the console's sign-in, API keys...)."""

    db: Database

    async def throttle_attempt(
        self, scope: str, key: str, policy: ThrottlePolicy, *, now: float | None = None
    ) -> float:
        """Count an attempt of `key`: 0.0 when it may go ahead (it is counted), else the
        seconds it must wait (nothing counted). Call it before the check it guards."""
        at = time.time() if now is None else now

        async def attempt(tx: Tx) -> float:
            # The upsert locks the key's row until the transaction ends: attempts of the same key
            # from any process wait here and then see this one's count.
            rows = await tx.fetch(
                "INSERT INTO throttle (scope, key, attempts, last_at, locked_until)"
                " VALUES ($1, $2, 0, $3, 0) ON CONFLICT (scope, key)"
                " DO UPDATE SET attempts = throttle.attempts"
                " RETURNING attempts, last_at, locked_until",
                scope,
                key,
                at,
            )
            attempts, last_at, locked_until = int(rows[0][0]), float(rows[0][1]), rows[0][2]
            if float(locked_until) > at:
                return float(locked_until) - at
            if at - last_at > policy.memory_s:
                attempts = 0
            attempts += 1
            wait = policy.wait_after(attempts)
            await tx.execute(
                "UPDATE throttle SET attempts = $3, last_at = $4, locked_until = $5"
                " WHERE scope = $1 AND key = $2",
                scope,
                key,
                attempts,
                at,
                at + wait if wait else 0.0,
            )
            return 0.0

        wait = await self.db.write(attempt)
        if not wait:
            # Keys long quiet are forgotten, in a transaction of its own: inside the attempt's,
            # two attempts could each wait for the other's locked row.
            await self.db.write(
                lambda tx: tx.execute(
                    "DELETE FROM throttle WHERE scope = $1 AND last_at < $2 AND locked_until < $3",
                    scope,
                    at - policy.memory_s,
                    at,
                )
            )
        return wait

    async def throttle_clear(self, scope: str, key: str) -> None:
        """Forget `key`'s attempts (its check succeeded)."""
        await self.db.write(
            lambda tx: tx.execute("DELETE FROM throttle WHERE scope = $1 AND key = $2", scope, key)
        )
