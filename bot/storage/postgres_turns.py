"""Turns across processes on PostgreSQL: one answer at a time per channel, in row order.

Each store keeps one dedicated connection, its "coordinator", which
- holds an advisory lock on the store's instance number for as long as the store lives, so any
  process can tell from pg_locks whether the owner of a pending reply is still running;
- holds the per-channel turn locks (session advisory locks, taken with pg_try_advisory_lock, so a
  waiting turn never blocks a connection);
- LISTENs for "a turn of channel N ended" notifications, which wake the waiting turns at once
  (a crashed process sends none: waiters also re-check every `_POLL_S`).

Session advisory locks and LISTEN need a real session: connect to PostgreSQL directly, or through
a pooler in session mode (pgbouncer's transaction mode would hand the locks to strangers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg

from bot.errors import StorageError
from bot.storage.base import LocalLocks
from bot.storage.postgres_connect import (
    DB_ERRORS,
    NS_CHANNEL,
    NS_INSTANCE,
    connect,
    location,
    storage_error,
)
from bot.storage.turns import PENDING_SQL

log = logging.getLogger(__name__)

ORDER_WAIT_S = 600.0  # how long a turn waits for earlier turns of other processes (a stuck peer)
# How long a turn waits for the channel's lock once it is next: a reply takes at most
# llm.reply_timeout_s (300 s) and its final edits, so a holder past this is stuck (a process that
# hangs; a dead host's session ends within a minute: postgres_connect.SESSION_SETTINGS). The
# turn is answered without the lock then, rather than the channel stalling.
LOCK_WAIT_S = 600.0
LOCK_WAIT_LOG_S = 30.0  # a wait this long is logged with who holds the lock
_POLL_S = 0.5  # waiters re-check this often: a crashed process sends no notification
NOTIFY_CHANNEL = "parley_turn_ended"

# The instance numbers of running stores: their advisory locks, granted, in this database.
LIVE_INSTANCES = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
    f" AND classid = {NS_INSTANCE} AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# A pending row's owner is gone: no owner recorded, or its instance lock is not held.
GONE_OWNER_SQL = f"(owner IS NULL OR owner NOT IN ({LIVE_INSTANCES}))"
# Who holds a channel's turn lock ($1: its key): the session, where from, what it does since
# when, and whether it is a running Parley store (it holds an instance lock too).
LOCK_HOLDER = (
    "SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'a local socket'),"
    " coalesce(a.state, '?'),"
    " coalesce(extract(epoch FROM clock_timestamp() - a.state_change), 0)::float8,"
    " EXISTS (SELECT 1 FROM pg_locks i WHERE i.pid = a.pid AND i.locktype = 'advisory'"
    f"  AND i.granted AND i.classid = {NS_INSTANCE} AND i.objsubid = 2)"
    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    f" WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {NS_CHANNEL}"
    " AND l.objid::bigint = $1 AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def lock_key(channel_id: int) -> int:
    """The int4 advisory-lock key of a channel (ids past 2**31 share keys: that only serialises)."""
    return channel_id & 0x7FFFFFFF


class Coordinator:
    """The store's own session: its instance lock, the channel turn locks, turn notifications."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None
        self._pid = 0  # the coordinator's backend pid: its own notifications are ignored
        # asyncpg runs one operation at a time on a connection.
        self._busy = asyncio.Lock()
        self.instance = 0
        # Channel keys whose lock this session holds; a lost session loses them all.
        self._held: set[int] = set()
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, take an instance number and its lock, and listen for turn notifications."""
        async with self._busy:
            await self._connect()

    async def _connect(self) -> asyncpg.Connection:
        conn = await connect(self._url)
        try:
            if not self.instance:
                self.instance = int(await conn.fetchval("SELECT nextval('parley_instances')"))
            # Same number after a reconnect: our pending replies stay ours.
            await conn.execute("SELECT pg_advisory_lock($1, $2)", NS_INSTANCE, self.instance)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except BaseException:
            await conn.close(timeout=5)
            raise
        conn.add_termination_listener(self._lost)
        self._conn, self._pid = conn, conn.get_server_pid()
        return conn

    def _lost(self, conn: object) -> None:
        """The session ended: win the instance lock back soon, before anyone takes us for dead."""
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                async with self._busy:
                    await self._session()
                return
            except StorageError as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> asyncpg.Connection:
        if self._closed:
            raise StorageError(f"PostgreSQL at {location(self._url)}: the store is closed")
        if self._conn is None or self._conn.is_closed():
            if self._held:
                # The server dropped the locks with the session: the turns holding them go on.
                log.warning("lost the PostgreSQL session holding %d turn locks", len(self._held))
                self._held.clear()
            await self._connect()
        assert self._conn is not None
        return self._conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if pid == self._pid:
            return
        with contextlib.suppress(ValueError):
            for event in self._waiters.get(int(payload), ()):
                event.set()

    @contextlib.contextmanager
    def wake_ups(self, key: int) -> Iterator[asyncio.Event]:
        """An event set whenever another process ends a turn of channel `key`."""
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                del self._waiters[key]

    async def try_lock(self, key: int) -> bool:
        """Take channel `key`'s turn lock if no other session holds it."""
        async with self._busy:
            conn = await self._session()
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NS_CHANNEL, key))
        if got:
            self._held.add(key)
        return got

    async def unlock(self, key: int) -> None:
        """Release channel `key`'s turn lock and tell the other processes."""
        async with self._busy:
            if key not in self._held:
                return  # lost with a dropped session: nothing to release
            self._held.discard(key)
            conn = await self._session()
            await conn.execute(
                "SELECT pg_advisory_unlock($1, $2), pg_notify($3, $2::text)",
                NS_CHANNEL,
                key,
                NOTIFY_CHANNEL,
            )

    async def close(self) -> None:
        """End the session: the server releases its locks, so other processes see us gone."""
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        async with self._busy:
            self._held.clear()
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close(timeout=5)


class TurnLocks:
    """The channel turn locks of one store: FIFO in this process, then across processes."""

    def __init__(
        self,
        url: str,
        coordinator: Coordinator,
        connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
        *,
        order_wait_s: float = ORDER_WAIT_S,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self._url = url
        self._coordinator = coordinator
        self._connection = connection
        self.order_wait_s = order_wait_s
        self.lock_wait_s = lock_wait_s
        self._turns = LocalLocks()

    @asynccontextmanager
    async def hold(self, channel_id: int, reply_row: int | None) -> AsyncIterator[None]:
        """Hold the channel's turn lock across processes; with `reply_row`, in row order.

        In this process a FIFO asyncio lock comes first, so one waiter per channel reaches the
        database. Then, with `reply_row`: wait until no earlier reply of the channel is pending
        in another live process (replies of dead processes become 'interrupted'), at most
        `order_wait_s`. Then take the session advisory lock, waiting at most `lock_wait_s` for
        whoever holds it (logged with who it is); released (and announced) on exit.
        """
        key = lock_key(channel_id)
        async with self._turns.hold(key):
            locked = await self._acquire_turn(channel_id, key, reply_row)
            try:
                yield
            finally:
                if locked:
                    # Shielded: a cancelled turn (shutdown) must still hand the channel on.
                    with contextlib.suppress(*DB_ERRORS, StorageError):
                        await asyncio.shield(self._coordinator.unlock(key))

    async def _acquire_turn(self, channel_id: int, key: int, reply_row: int | None) -> bool:
        """Wait for the channel's turn; whether its lock was taken (False: waited too long)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.order_wait_s
        in_order = reply_row is None
        next_since: float | None = None  # when this turn became next: its wait for the lock
        logged = False
        try:
            with self._coordinator.wake_ups(key) as woken:
                while True:
                    woken.clear()
                    if not in_order:
                        assert reply_row is not None
                        in_order = not await self._earlier_pending(channel_id, reply_row)
                        if not in_order and loop.time() >= deadline:
                            log.warning(
                                "channel %d: earlier turns in other processes are still pending "
                                "after %g s; answering anyway",
                                channel_id,
                                self.order_wait_s,
                            )
                            in_order = True
                    # Earlier replies can finish but never appear: once in order, it stays so.
                    if in_order:
                        if await self._coordinator.try_lock(key):
                            return True
                        now = loop.time()
                        next_since = now if next_since is None else next_since
                        waited = now - next_since
                        if waited >= self.lock_wait_s:
                            log.warning(
                                "channel %d: its turn lock is still held after %g s, by %s; "
                                "answering without it",
                                channel_id,
                                self.lock_wait_s,
                                await self._holder(key),
                            )
                            return False
                        if not logged and waited >= min(LOCK_WAIT_LOG_S, self.lock_wait_s / 2):
                            logged = True
                            log.warning(
                                "channel %d: waiting %.0f s for its turn lock, held by %s "
                                "(at most %g s)",
                                channel_id,
                                waited,
                                await self._holder(key),
                                self.lock_wait_s,
                            )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_POLL_S):
                            await woken.wait()
        except DB_ERRORS as exc:
            raise storage_error(self._url, "channel turn lock failed", exc) from exc

    async def _holder(self, key: int) -> str:
        """Who holds channel `key`'s turn lock, in words for a log line."""
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(LOCK_HOLDER, key)
        except StorageError as exc:  # only a log line's detail is missing
            return f"a session that cannot be named ({exc})"
        if row is None:
            return "nobody any more"
        pid, name, client, state, seconds, parley = row
        what = "a running Parley store" if parley else "no running Parley store"
        return (
            f"PostgreSQL session {pid} ({name or 'unnamed'}, from {client}, {state} for "
            f"{seconds:.0f} s, {what})"
        )

    async def _earlier_pending(self, channel_id: int, reply_row: int) -> bool:
        """Whether another live process still answers an earlier turn of the channel.

        Earlier pending replies of processes that are gone are marked 'interrupted' on the way.
        """
        me = self._coordinator.instance
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = $3"
                f" WHERE channel_id = $1 AND id < $2 AND {PENDING_SQL}"
                f" AND owner IS DISTINCT FROM $4 AND {GONE_OWNER_SQL}",
                channel_id,
                reply_row,
                time.time(),
                me,
            )
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM messages"
                    f" WHERE channel_id = $1 AND id < $2 AND {PENDING_SQL} AND owner <> $3)",
                    channel_id,
                    reply_row,
                    me,
                )
            )
