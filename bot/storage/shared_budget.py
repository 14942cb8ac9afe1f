"""A request budget shared by several bot processes through PostgreSQL (a GCRA row per budget).

Why: Discord's global limit (50 requests/s) is per bot token, not per connection, so the
processes that split a bot's shards must split that one budget. They already share PostgreSQL
(`storage.url`), so the budget lives there rather than in another service (nirn-proxy, Redis).

How: one row per budget in an UNLOGGED table holds the "theoretical arrival time" (`tat`) of the
generic cell rate algorithm: a request is granted when `tat - now <= tolerance`, and then
`tat = max(tat, now) + 1/rate`. One statement does the check and the update, so the row lock
orders concurrent processes and a grant is one round trip. `now` is the database's
`clock_timestamp()`: every process reads the same clock, so skew between bot hosts does not
matter (only durations are compared). With `burst = 1` the grants are spaced 1/rate apart: any
one-second window holds at most `rate` of them.

Limits, by design:
- A round trip to PostgreSQL per request (~0.3-1 ms on one host, a network RTT otherwise), and
  a request waits in steps of the returned wait when the budget is spent.
- Grants are spaced, arrivals are not: a request delayed between its grant and Discord (a
  stalled process, a slow network) can land closer to the next one. Keep `rate` a little under
  the real limit (Parley's default 50/s is Discord's; lower `discord.global_rate` for margin).
- Every process must use the same rate and burst for a budget (they share one row).
- When PostgreSQL cannot be reached (or answers slower than `timeout_s`) a process falls back to
  a local budget of `rate * share` (its shards' part), so the processes together still stay
  within the limit, and it tries PostgreSQL again after `retry_s`. A process killed mid-request
  leaves nothing held: a grant is only a time in the row.
- The table is UNLOGGED: a PostgreSQL crash empties it, which only means a full budget again.
  It is created by the PostgreSQL migrations (0003), which `open()` applies if the store has not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from bot.errors import StorageError
from bot.storage.postgres import migrate

log = logging.getLogger(__name__)

TABLE = "parley_shared_budgets"
TIMEOUT_S = 1.0  # one grant; slower than this counts as PostgreSQL being unreachable
RETRY_S = 5.0  # after a failure, the local budget is used this long before PostgreSQL again
_ADD = f"INSERT INTO {TABLE} (name, tat) VALUES ($1, 0) ON CONFLICT DO NOTHING"  # a full budget
# $1 name, $2 interval (1/rate), $3 tolerance ((burst - 1) * interval). Returns whether the
# request is granted and, when not, how long until it would be. The UPDATE in the CTE takes the
# row lock; a concurrent grant re-evaluates its WHERE against the committed row.
_GRANT = f"""
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
granted AS (
    UPDATE {TABLE} AS b SET tat = greatest(b.tat, clock.now) + $2
    FROM clock
    WHERE b.name = $1 AND greatest(b.tat, clock.now) - clock.now <= $3
    RETURNING b.tat
)
SELECT EXISTS (SELECT 1 FROM granted) AS granted,
       (SELECT tat FROM {TABLE} WHERE name = $1) - clock.now - $3 AS wait
FROM clock
"""
_PAUSE = f"""
UPDATE {TABLE} SET tat = greatest(tat, extract(epoch FROM clock_timestamp())::float8 + $2 + $3)
WHERE name = $1
"""
_MAX_WAIT_S = 5.0  # a wait the database reports is re-asked after at most this long


class LocalBudget:
    """The same algorithm in one process: `rate` grants a second, bursts of `burst`."""

    def __init__(
        self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self._clock = clock
        self._tat = 0.0
        self._lock = asyncio.Lock()  # grants in arrival order

    async def acquire(self) -> None:
        """Wait until a request may go out."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = max(self._tat, now) - now - self.tolerance
                if wait <= 0:
                    self._tat = max(self._tat, now) + self.interval
                    return
                await asyncio.sleep(wait)

    async def pause(self, seconds: float) -> None:
        """Grant nothing for `seconds` (the platform said so: a global 429)."""
        self._tat = max(self._tat, self._clock() + seconds + self.tolerance)


class SharedBudget:
    """A budget of `rate` requests a second shared by every process using `name` in one database.

    `await open()` first (migrates the database and adds the row if missing), `await close()` at
    the end.
    `share` is this process's part of `rate` when PostgreSQL is unreachable.
    """

    def __init__(
        self,
        url: str,
        name: str,
        rate: float,
        *,
        burst: int = 1,
        share: float = 1.0,
        timeout_s: float = TIMEOUT_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self._url = url
        self.name = name
        self.interval = 1.0 / rate
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self.fallback = LocalBudget(rate * share, burst)
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._pool: asyncpg.Pool | None = None
        self._down_until = 0.0  # monotonic time before which the local budget is used
        self.shared_grants = 0  # counters for logs, tests and benches
        self.local_grants = 0

    async def open(self) -> None:
        """Connect (a small pool of its own: grants never queue behind history queries)."""
        try:
            await migrate(self._url)  # the table is in the migrations; a no-op once applied
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=2, timeout=10.0, command_timeout=self._timeout_s
            )
            await self._pool.execute(_ADD, self.name)
        except (
            StorageError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            TimeoutError,
        ) as exc:
            # Started while PostgreSQL is away: run on the local share until it is back.
            self._went_down(exc)

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def shared(self) -> bool:
        """Whether grants currently come from PostgreSQL (not the local fallback)."""
        return self._pool is not None and time.monotonic() >= self._down_until

    async def acquire(self) -> None:
        """Wait until a request may go out, within the budget every process shares."""
        while True:
            if not self.shared:
                if self._pool is None and time.monotonic() >= self._down_until:
                    await self.open()  # never connected: try again
                    continue
                await self.fallback.acquire()
                self.local_grants += 1
                return
            try:
                wait = await self._grant()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self._went_down(exc)
                continue
            if wait is None:
                self.shared_grants += 1
                return
            await asyncio.sleep(min(max(wait, 0.001), _MAX_WAIT_S))

    async def pause(self, seconds: float) -> None:
        """Grant nothing to any process for `seconds` (Discord answered a global 429)."""
        await self.fallback.pause(seconds)
        if not self.shared:
            return
        assert self._pool is not None
        try:
            await asyncio.wait_for(
                self._pool.execute(_PAUSE, self.name, seconds, self.tolerance), self._timeout_s
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._went_down(exc)

    async def _grant(self) -> float | None:
        """None when granted, else the seconds until a grant would be due."""
        assert self._pool is not None
        row = await asyncio.wait_for(
            self._pool.fetchrow(_GRANT, self.name, self.interval, self.tolerance),
            self._timeout_s,
        )
        if row is None or row["wait"] is None:  # the row is gone (a PostgreSQL crash emptied
            await self._pool.execute(_ADD, self.name)  # the UNLOGGED table): put it back, full
            return 0.0
        return None if row["granted"] else float(row["wait"])

    def _went_down(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "shared budget %s: PostgreSQL unreachable (%s); using this process's share "
                "(%.1f requests/s) for %.0f s",
                self.name,
                type(exc).__name__,
                1.0 / self.fallback.interval,
                self._retry_s,
            )
        self._down_until = time.monotonic() + self._retry_s
