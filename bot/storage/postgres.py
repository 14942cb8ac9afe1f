"""PostgreSQL storage (asyncpg): the store contract for several bot processes sharing one database.

Queries go through a connection pool. Each store also keeps one dedicated connection, its
"coordinator", which
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
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from bot.errors import StorageError, StorageProblem
from bot.storage.base import (
    BACKGROUND_KEPT,
    MAIN_SESSION,
    PENDING,
    VISIBLE,
    LocalLocks,
    Memory,
    Migration,
    Session,
    Status,
    StoredMessage,
    Turn,
    WriteHealth,
    load_migrations,
    session_list,
)

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_PORT = 5432
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0  # one statement; a turn's writes take milliseconds
ORDER_WAIT_S = 600.0  # how long a turn waits for earlier turns of other processes (a stuck peer)
_POLL_S = 0.5  # waiters re-check this often: a crashed process sends no notification

# Advisory lock keys are (namespace, key) pairs of int4: these namespaces keep Parley's locks
# apart from each other and from other applications' locks in the same database.
_NAMESPACE = 0x50524C59  # "PRLY"
NS_MIGRATE = _NAMESPACE  # key 0: one process migrates at a time
NS_INSTANCE = _NAMESPACE + 1  # key: a store's instance number, held while the store lives
NS_CHANNEL = _NAMESPACE + 2  # key: the channel's turn lock (session level, on the coordinator)
NS_RECORD = _NAMESPACE + 3  # key: held while a turn's rows are inserted (transaction level)
NOTIFY_CHANNEL = "parley_turn_ended"

# The instance numbers of running stores: their advisory locks, granted, in this database.
_LIVE_INSTANCES = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
    f" AND classid = {NS_INSTANCE} AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_PENDING_SQL = "status IN ('queued', 'streaming')"  # matches the messages_pending index
# A pending row's owner is gone: no owner recorded, or its instance lock is not held.
_GONE_OWNER_SQL = f"(owner IS NULL OR owner NOT IN ({_LIVE_INSTANCES}))"
assert set(PENDING) == {"queued", "streaming"}
_MESSAGE_COLUMNS = "id, role, author_id, author_name, content, status, token_count, created_at"
# English stemming, as the generated `search` columns (migration 0002) index the text.
TEXT_SEARCH_CONFIG = "english"
_TSQUERY = f"to_tsquery('{TEXT_SEARCH_CONFIG}', $QUERY)"


def _session_of_row(row: str, channel: str) -> str:
    """SQL for the session of message `row` (the chat's current one if there is no such row)."""
    return (
        f"COALESCE((SELECT session_id FROM messages WHERE id = {row}),"
        f" (SELECT session_id FROM channels WHERE id = {channel}))"
    )


# A prompt's history: an index range scan of one session, newest first (params: channel, row,
# visible statuses, limit). tests/test_migrations.py checks its plan.
HISTORY_SQL = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
    f" WHERE channel_id = $1 AND session_id = {_session_of_row('$2', '$1')}"
    " AND id < $2 AND status = ANY($3::text[]) AND content <> ''"
    " ORDER BY id DESC LIMIT $4"
)


def tsquery(terms: Sequence[str]) -> str:
    """A tsquery matching any of `terms`; only word characters go in, so never query syntax."""
    words = ("".join(ch for ch in term if ch.isalnum() or ch == "_") for term in terms)
    return " | ".join(word for word in words if word)


def lock_key(channel_id: int) -> int:
    """The int4 advisory-lock key of a channel (ids past 2**31 share keys: that only serialises)."""
    return channel_id & 0x7FFFFFFF


def location(url: str) -> str:
    """`host:port/database` of a PostgreSQL URL: what messages name, never the password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    if ":" in host and not host.startswith("/"):
        host = f"[{host}]"  # an IPv6 literal
    try:
        port: int | str = parts.port or int(query.get("port", [DEFAULT_PORT])[0])
    except ValueError:
        port = "?"
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "")
    return f"{host}:{port}/{database}"


def url_secrets(url: str) -> list[str]:
    """The URL and its password (as written and decoded), for log redaction."""
    if not url:
        return []
    secrets = [url]
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            secrets += [password, unquote(password)]
    return secrets


def _reason(exc: BaseException) -> str:
    """Why a connection or a query failed, in words that never include the URL."""
    if isinstance(exc, socket.gaierror):
        return "the host name cannot be resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"{exc} (check the user and password in storage.url)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return str(exc)
    # Anything else (e.g. a ValueError from parsing the URL) may quote the URL: say less.
    return f"{type(exc).__name__}: storage.url is not a valid PostgreSQL URL"


def storage_error(url: str, doing: str, exc: BaseException) -> StorageError:
    """A StorageError naming host:port/database and what failed, with the password scrubbed."""
    text = f"PostgreSQL at {location(url)}: {doing}: {_reason(exc)}"
    for secret in url_secrets(url):
        if len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return StorageError(text, problem=_problem(exc))


# SQLSTATE codes and classes (https://www.postgresql.org/docs/15/errcodes-appendix.html).
_SQLSTATE_PROBLEMS: dict[str, StorageProblem] = {
    "53100": "full",  # disk_full
    "25006": "read_only",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "58030": "io",  # io_error
    "53300": "busy",  # too_many_connections
    "40001": "busy",  # serialization_failure
    "40P01": "busy",  # deadlock_detected
}
_SQLSTATE_CLASS_PROBLEMS: dict[str, StorageProblem] = {
    "08": "unavailable",  # connection exception
    "57": "unavailable",  # operator intervention: shutdown, crash recovery
    "53": "full",  # insufficient resources
}


def _problem(exc: BaseException) -> StorageProblem:
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str):
        return _SQLSTATE_PROBLEMS.get(code) or _SQLSTATE_CLASS_PROBLEMS.get(code[:2], "error")
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return "unavailable"
    return "error"


_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def connect(url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> asyncpg.Connection:
    """One connection, errors as StorageError (never chained: a parse error may quote the URL)."""
    try:
        return await asyncpg.connect(
            url, timeout=connect_timeout, command_timeout=COMMAND_TIMEOUT_S
        )
    except (*_DB_ERRORS, ValueError) as exc:
        raise storage_error(url, "cannot connect", exc) from None


async def schema_version(conn: asyncpg.Connection) -> int:
    """The newest applied migration (0 for a database Parley never touched)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(url: str, migrations: list[Migration] | None = None) -> tuple[int, int]:
    """Apply pending migrations under an advisory lock; return (version before, after).

    Processes starting at once take turns: the second sees the first's work and applies nothing.
    A database newer than this code is refused.
    """
    migrations = load_migrations(dialect="postgresql") if migrations is None else migrations
    if not migrations:
        raise StorageError("no migrations to apply: the installation is incomplete")
    latest = migrations[-1].version
    conn = await connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1, 0)", NS_MIGRATE)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = await schema_version(conn)
        if before > latest:
            raise StorageError(
                f"the database {location(url)} has schema version {before}, newer than this "
                f"Parley knows ({latest}): upgrade Parley, or point storage.url at another database"
            )
        for migration in migrations[before:]:
            log.info("applying migration %s", migration.name)
            # One transaction per migration: the schema change and its version land together.
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        return before, await schema_version(conn)
    except _DB_ERRORS as exc:
        raise storage_error(url, "migration failed", exc) from exc
    finally:
        # Closing the session also ends its advisory lock.
        with contextlib.suppress(*_DB_ERRORS):
            await conn.close(timeout=5)


async def inspect(url: str) -> tuple[Literal["ok", "fail"], str]:
    """The doctor's read-only check: reachable, schema not newer than the code, writable."""
    latest = len(load_migrations(dialect="postgresql"))
    where = location(url)
    try:
        conn = await connect(url, connect_timeout=5.0)
    except StorageError as exc:
        return "fail", str(exc)
    try:
        version = await schema_version(conn)
        if version > latest:
            return "fail", f"{where}: schema version {version} is newer than this Parley ({latest})"
        if version == 0:
            may_create = await conn.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
            if not may_create:
                return "fail", f"{where}: this user may not create tables in schema public"
            return "ok", f"{where}: empty; the first start creates the tables"
        if not await conn.fetchval("SELECT has_table_privilege('messages', 'INSERT, DELETE')"):
            return "fail", f"{where}: this user may not write the messages table"
        if version < latest:
            return (
                "ok",
                f"{where}: schema version {version}; the next start migrates it to {latest}",
            )
        return "ok", f"{where}: schema version {version}"
    except _DB_ERRORS as exc:
        return "fail", str(storage_error(url, "query failed", exc))
    finally:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.close(timeout=5)


class _Coordinator:
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


class PostgresStore:
    """Conversation history, channel settings and the audit log in one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        pool: asyncpg.Pool,
        coordinator: _Coordinator,
        *,
        order_wait_s: float = ORDER_WAIT_S,
    ) -> None:
        self._url = url
        self._pool = pool
        self._coordinator = coordinator
        self.order_wait_s = order_wait_s
        # Channel rows are never deleted, so a key's id never changes: safe to keep per process.
        self._channel_ids: dict[tuple[str, str], int] = {}
        self._turns = LocalLocks()
        self.health = WriteHealth(f"PostgreSQL at {location(url)}")

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = 10, order_wait_s: float = ORDER_WAIT_S
    ) -> PostgresStore:
        """Migrate the database at `url`, then open a pool of up to `pool_size` connections."""
        await migrate(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
            )
        except (*_DB_ERRORS, ValueError) as exc:
            raise storage_error(url, "cannot connect", exc) from None
        coordinator = _Coordinator(url)
        try:
            await coordinator.start()
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool, coordinator, order_wait_s=order_wait_s)

    @property
    def instance(self) -> int:
        """This store's instance number (the owner recorded on the reply rows it reserves)."""
        return self._coordinator.instance

    @property
    def location(self) -> str:
        """host:port/database, for messages."""
        return location(self._url)

    async def close(self) -> None:
        """Close the pool and the coordinator's session (which releases its locks)."""
        with contextlib.suppress(*_DB_ERRORS):
            await self._coordinator.close()
        with contextlib.suppress(*_DB_ERRORS):
            await asyncio.wait_for(self._pool.close(), 10)

    @asynccontextmanager
    async def _conn(
        self, doing: str = "query failed", *, write: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database errors leave as StorageError (writes: in `health`)."""
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except _DB_ERRORS as exc:
            error = storage_error(self._url, doing, exc)
            if write:
                self.health.failed(error)
            raise error from exc
        if write:
            self.health.succeeded()

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query written for SQLite: `?` parameters, LIKE.

        The placeholders become $1, $2...; LIKE becomes ILIKE, which is case-insensitive like
        SQLite's LIKE (for ASCII). For reports such as the admin console's.
        """
        numbered = iter(range(1, sql.count("?") + 1))
        pg_sql = re.sub(r"\?", lambda _: f"${next(numbered)}", sql.replace(" LIKE ", " ILIKE "))
        async with self._conn("query failed") as conn:
            return [tuple(row) for row in await conn.fetch(pg_sql, *params)]

    async def probe_write(self) -> None:
        """Commit a write that leaves nothing behind: a row inserted and deleted again."""
        await self._execute(
            [
                (
                    "INSERT INTO audit_log (actor_id, action, created_at)"
                    " VALUES ('parley', 'probe', 0)",
                    (),
                ),
                ("DELETE FROM audit_log WHERE action = 'probe' AND actor_id = 'parley'", ()),
            ]
        )

    async def _execute(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run statements in one transaction; each one's affected row count."""
        counts = []
        async with self._conn("write failed", write=True) as conn, conn.transaction():
            for sql, params in statements:
                status = await conn.execute(sql, *params)
                counts.append(int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0)
        return counts

    # ----------------------------------------------------------------- turns across processes

    @asynccontextmanager
    async def channel_turn(
        self, channel_id: int, reply_row: int | None = None
    ) -> AsyncIterator[None]:
        """Hold the channel's turn lock across processes; with `reply_row`, in row order.

        In this process a FIFO asyncio lock comes first, so one waiter per channel reaches the
        database. Then, with `reply_row`: wait until no earlier reply of the channel is pending
        in another live process (replies of dead processes become 'interrupted'), at most
        `order_wait_s`. Then take the session advisory lock; released (and announced) on exit.
        """
        key = lock_key(channel_id)
        async with self._turns.hold(key):
            await self._acquire_turn(channel_id, key, reply_row)
            try:
                yield
            finally:
                # Shielded: a cancelled turn (shutdown) must still hand the channel on.
                with contextlib.suppress(*_DB_ERRORS, StorageError):
                    await asyncio.shield(self._coordinator.unlock(key))

    async def _acquire_turn(self, channel_id: int, key: int, reply_row: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.order_wait_s
        in_order = reply_row is None
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
                    if in_order and await self._coordinator.try_lock(key):
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_POLL_S):
                            await woken.wait()
        except _DB_ERRORS as exc:
            raise storage_error(self._url, "channel turn lock failed", exc) from exc

    async def _earlier_pending(self, channel_id: int, reply_row: int) -> bool:
        """Whether another live process still answers an earlier turn of the channel.

        Earlier pending replies of processes that are gone are marked 'interrupted' on the way.
        """
        me = self.instance
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = $3"
                f" WHERE channel_id = $1 AND id < $2 AND {_PENDING_SQL}"
                f" AND owner IS DISTINCT FROM $4 AND {_GONE_OWNER_SQL}",
                channel_id,
                reply_row,
                time.time(),
                me,
            )
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM messages"
                    f" WHERE channel_id = $1 AND id < $2 AND {_PENDING_SQL} AND owner <> $3)",
                    channel_id,
                    reply_row,
                    me,
                )
            )

    # ----------------------------------------------------------------- the contract

    async def channel_id(self, platform: str, channel_key: str) -> int:
        """The id of a channel, created on first use (by whichever process sees it first)."""
        key = (platform, channel_key)
        if key in self._channel_ids:
            return self._channel_ids[key]
        async with self._conn() as conn:
            # The no-op update makes RETURNING give the id when the row already exists.
            channel = await conn.fetchval(
                "INSERT INTO channels (platform, channel_key, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (platform, channel_key) DO UPDATE SET platform = excluded.platform"
                " RETURNING id",
                platform,
                channel_key,
                time.time(),
            )
        self._channel_ids[key] = int(channel)
        return self._channel_ids[key]

    async def start_turn(
        self,
        channel_id: int,
        *,
        author_id: str,
        author_name: str,
        content: str,
        token_count: int | None,
        bot_id: str = "bot",
    ) -> Turn:
        """Store the user's message and reserve its reply's row (status 'queued') in one go."""
        now = time.time()
        async with self._conn("write failed", write=True) as conn, conn.transaction():
            # Ids come from one sequence shared by every process; this lock makes a channel's
            # rows commit in id order, so an earlier id is never still invisible to a later turn.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", NS_RECORD, lock_key(channel_id)
            )
            user_row, session_id = await conn.fetchrow(
                "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                " content, status, token_count, created_at, updated_at)"
                " VALUES ($1, (SELECT session_id FROM channels WHERE id = $1), 'user', $2, $3,"
                " $4, 'complete', $5, $6, $6) RETURNING id, session_id",
                channel_id,
                author_id,
                author_name,
                content,
                token_count,
                now,
            )
            # The reply belongs to the question's session, even if the chat switches.
            reply_row = await conn.fetchval(
                "INSERT INTO messages (channel_id, session_id, role, author_id, content, status,"
                " created_at, updated_at, owner)"
                " VALUES ($1, $2, 'assistant', $3, '', 'queued', $4, $4, $5) RETURNING id",
                channel_id,
                session_id,
                bot_id,
                now,
                self.instance,
            )
        return Turn(channel_id, int(user_row), int(reply_row))

    async def record_failed_input(
        self, channel_id: int, *, author_id: str, author_name: str, note: str
    ) -> int:
        """Record a turn that cannot be answered (e.g. an unreadable voice note) as 'failed'."""
        now = time.time()
        async with self._conn("write failed", write=True) as conn:
            row = await conn.fetchval(
                "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                " content, status, created_at, updated_at)"
                " VALUES ($1, (SELECT session_id FROM channels WHERE id = $1), 'user', $2, $3,"
                " $4, 'failed', $5, $5) RETURNING id",
                channel_id,
                author_id,
                author_name,
                note,
                now,
            )
        return int(row)

    async def update_message(
        self,
        row_id: int,
        *,
        content: str | None = None,
        status: Status | None = None,
        token_count: int | None = None,
    ) -> None:
        """Update a message's content, status and token count (None leaves a field as it is)."""
        await self._execute(
            [
                (
                    "UPDATE messages SET content = COALESCE($1, content),"
                    " status = COALESCE($2, status), token_count = COALESCE($3, token_count),"
                    " updated_at = $4 WHERE id = $5",
                    (content, status, token_count, time.time(), row_id),
                )
            ]
        )

    async def history(self, channel_id: int, before_row: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` visible messages of a channel older than `before_row`, newest first.

        Only `before_row`'s session (when there is no such row: the chat's current session).
        """
        async with self._conn() as conn:
            rows = await conn.fetch(
                HISTORY_SQL,
                channel_id,
                before_row,
                list(VISIBLE),
                limit,
            )
        return [StoredMessage(*tuple(row)) for row in rows]

    async def get_message(self, row_id: int) -> StoredMessage | None:
        """One message by id, whatever its status."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", row_id
            )
        return StoredMessage(*tuple(row)) if row else None

    async def clear_channel(self, channel_id: int, *, actor_id: str, actor_name: str) -> int:
        """Delete the chat's current conversation (its settings and other sessions stay);
        audited. Returns the rows deleted."""
        deleted, _ = await self._execute(
            [
                (
                    "DELETE FROM messages WHERE channel_id = $1"
                    " AND session_id = (SELECT session_id FROM channels WHERE id = $1)",
                    (channel_id,),
                ),
                self._audit_row(channel_id, actor_id, actor_name, "reset", None, None, None),
            ]
        )
        return deleted

    async def forget_author(self, platform: str, author_id: str, *, actor_name: str) -> int:
        """Delete every message a user wrote on a platform; audited. Returns rows deleted."""
        deleted, _ = await self._execute(
            [
                (
                    "DELETE FROM messages WHERE author_id = $1 AND role = 'user' AND channel_id IN"
                    " (SELECT id FROM channels WHERE platform = $2)",
                    (author_id, platform),
                ),
                self._audit_row(None, author_id, actor_name, "forget", None, None, None),
            ]
        )
        return deleted

    async def channel_settings(self, channel_id: int) -> dict[str, Any]:
        """A channel's overrides, read from the database every time: another process may have
        changed them since the last message."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT key, value::text FROM channel_settings WHERE channel_id = $1", channel_id
            )
        return {row[0]: json.loads(row[1]) for row in rows}

    async def set_channel_setting(
        self, channel_id: int, key: str, value: Any, *, actor_id: str, actor_name: str, old: Any
    ) -> None:
        """Change one channel setting and write its audit row in the same transaction."""
        encoded = json.dumps(value)
        await self._execute(
            [
                (
                    "INSERT INTO channel_settings (channel_id, key, value, updated_at)"
                    " VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (channel_id, key)"
                    " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (channel_id, key, encoded, time.time()),
                ),
                self._audit_row(
                    channel_id, actor_id, actor_name, "config.set", key, json.dumps(old), encoded
                ),
            ]
        )

    async def audit(
        self,
        channel_id: int | None,
        *,
        actor_id: str,
        actor_name: str,
        action: str,
        key: str | None = None,
        old_value: str | None = None,
        new_value: str | None = None,
    ) -> None:
        """Write one audit row (refusals, resets, forgets): one log for every process."""
        await self._execute(
            [self._audit_row(channel_id, actor_id, actor_name, action, key, old_value, new_value)]
        )

    @staticmethod
    def _audit_row(
        channel_id: int | None,
        actor_id: str,
        actor_name: str,
        action: str,
        key: str | None,
        old_value: str | None,
        new_value: str | None,
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO audit_log (channel_id, actor_id, actor_name, action, key, old_value,"
            " new_value, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            (channel_id, actor_id, actor_name, action, key, old_value, new_value, time.time()),
        )

    async def audit_rows(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (all channels when channel_id is None)."""
        sql = "SELECT * FROM audit_log"
        params: tuple[Any, ...] = ()
        if channel_id is not None:
            sql += " WHERE channel_id = $1"
            params = (channel_id,)
        async with self._conn() as conn:
            rows = await conn.fetch(sql + " ORDER BY id", *params)
        return [dict(row) for row in rows]

    # -- memory ----------------------------------------------------------------------------

    async def remember(
        self, platform: str, user_id: str, content: str, *, token_count: int, actor_name: str
    ) -> int:
        """Store a fact for a user, private (`shared` false) to begin with. Returns its id."""
        async with self._conn("write failed", write=True) as conn:
            row = await conn.fetchval(
                "INSERT INTO memories (platform, user_id, content, token_count, created_at)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                platform,
                user_id,
                content,
                token_count,
                time.time(),
            )
        return int(row)

    async def memories(self, platform: str, user_id: str) -> list[Memory]:
        """A user's facts, oldest first."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT id, content, shared, token_count, created_at FROM memories"
                " WHERE platform = $1 AND user_id = $2 ORDER BY id",
                platform,
                user_id,
            )
        return [_memory(row) for row in rows]

    async def forget_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, actor_name: str
    ) -> int:
        """Delete one of a user's facts (None: all of them); audited. Returns how many went."""
        sql = "DELETE FROM memories WHERE platform = $1 AND user_id = $2"
        params: tuple[Any, ...] = (platform, user_id)
        if memory_id is not None:
            sql, params = sql + " AND id = $3", (*params, memory_id)
        which = "all" if memory_id is None else str(memory_id)
        deleted, _ = await self._execute(
            [
                (sql, params),
                self._audit_row(None, user_id, actor_name, "memory.forget", which, None, None),
            ]
        )
        return deleted

    async def share_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, shared: bool
    ) -> int:
        """Let one fact (None: all) be used in groups too, or not; returns how many changed."""
        sql = "UPDATE memories SET shared = $1 WHERE platform = $2 AND user_id = $3"
        params: tuple[Any, ...] = (shared, platform, user_id)
        if memory_id is not None:
            sql, params = sql + " AND id = $4", (*params, memory_id)
        (changed,) = await self._execute([(sql, params)])
        return changed

    async def search_memories(
        self,
        platform: str,
        user_id: str,
        terms: Sequence[str],
        *,
        shared_only: bool,
        limit: int,
    ) -> list[Memory]:
        """A user's facts matching any of `terms` (tsvector @@ tsquery), best ts_rank first."""
        query = tsquery(terms)
        if not query:
            return []
        q = _TSQUERY.replace("$QUERY", "$4")
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT id, content, shared, token_count, created_at FROM memories"
                " WHERE platform = $1 AND user_id = $2 AND (NOT $3 OR shared)"
                f" AND search @@ {q} ORDER BY ts_rank(search, {q}) DESC, id DESC LIMIT $5",
                platform,
                user_id,
                shared_only,
                query,
                limit,
            )
        return [_memory(row) for row in rows]

    async def search_history(
        self, channel_id: int, turn_row: int, before_row: int, terms: Sequence[str], limit: int
    ) -> list[StoredMessage]:
        """Visible messages of `turn_row`'s session older than `before_row` that match any of
        `terms` (tsvector @@ tsquery), best ts_rank first."""
        query = tsquery(terms)
        if not query:
            return []
        q = _TSQUERY.replace("$QUERY", "$5")
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                f" WHERE channel_id = $1 AND session_id = {_session_of_row('$2', '$1')}"
                " AND id < $3 AND status = ANY($4::text[]) AND content <> ''"
                f" AND search @@ {q} ORDER BY ts_rank(search, {q}) DESC, id DESC LIMIT $6",
                channel_id,
                turn_row,
                before_row,
                list(VISIBLE),
                query,
                limit,
            )
        return [StoredMessage(*tuple(row)) for row in rows]

    # -- group background ------------------------------------------------------------------

    async def record_background(
        self,
        channel_id: int,
        *,
        author_id: str,
        author_name: str,
        content: str,
        token_count: int,
    ) -> int:
        """Store a group message the bot was not addressed to (status 'background'); only the
        newest BACKGROUND_KEPT of a chat are kept. Returns its row id."""
        now = time.time()
        async with self._conn("write failed", write=True) as conn, conn.transaction():
            # Rows of a channel commit in id order (as in start_turn).
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", NS_RECORD, lock_key(channel_id)
            )
            row = await conn.fetchval(
                "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                " content, status, token_count, created_at, updated_at)"
                " VALUES ($1, (SELECT session_id FROM channels WHERE id = $1), 'user', $2, $3,"
                " $4, 'background', $5, $6, $6) RETURNING id",
                channel_id,
                author_id,
                author_name,
                content,
                token_count,
                now,
            )
            await conn.execute(
                "DELETE FROM messages WHERE channel_id = $1 AND status = 'background'"
                " AND id <= (SELECT id FROM messages WHERE channel_id = $1"
                " AND status = 'background' ORDER BY id DESC LIMIT 1 OFFSET $2)",
                channel_id,
                BACKGROUND_KEPT,
            )
        return int(row)

    async def background(
        self, channel_id: int, turn_row: int, after_row: int, limit: int
    ) -> list[StoredMessage]:
        """Background messages of `turn_row`'s session between `after_row` and `turn_row`
        (both excluded), newest first."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                " WHERE channel_id = $1 AND status = 'background' AND id < $2 AND id > $3"
                f" AND session_id = {_session_of_row('$2', '$1')} ORDER BY id DESC LIMIT $4",
                channel_id,
                turn_row,
                after_row,
                limit,
            )
        return [StoredMessage(*tuple(row)) for row in rows]

    # -- sessions --------------------------------------------------------------------------

    async def sessions(self, channel_id: int) -> list[Session]:
        """A chat's conversations: "main" first, then by creation."""
        async with self._conn() as conn:
            channel = await conn.fetchrow(
                "SELECT session_id, created_at FROM channels WHERE id = $1", channel_id
            )
            if channel is None:
                return []
            named = await conn.fetch(
                "SELECT id, name, created_at FROM sessions WHERE channel_id = $1 ORDER BY id",
                channel_id,
            )
            counted = await conn.fetch(
                "SELECT session_id, COUNT(*), MAX(created_at) FROM messages"
                " WHERE channel_id = $1 AND status = ANY($2::text[]) GROUP BY session_id",
                channel_id,
                list(VISIBLE),
            )
        counts = {int(row[0]): (int(row[1]), row[2]) for row in counted}
        return session_list(
            int(channel[0]), float(channel[1]), [tuple(row) for row in named], counts
        )

    async def new_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Start a conversation called `name` and make it current; audited. None if the name is
        taken. The conversation before it is kept."""
        if name == MAIN_SESSION:
            return None
        now = time.time()
        async with self._conn("write failed", write=True) as conn, conn.transaction():
            session_id = await conn.fetchval(
                "INSERT INTO sessions (channel_id, name, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (channel_id, name) DO NOTHING RETURNING id",
                channel_id,
                name,
                now,
            )
            if session_id is None:
                return None
            await conn.execute(
                "UPDATE channels SET session_id = $1 WHERE id = $2", session_id, channel_id
            )
            sql, params = self._audit_row(
                channel_id, actor_id, actor_name, "session.new", None, None, name
            )
            await conn.execute(sql, *params)
        return Session(int(session_id), name, now, messages=0, last_at=None, current=True)

    async def switch_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Make the conversation called `name` current again; audited. None if there is none."""
        session_id: int | None = 0
        if name != MAIN_SESSION:
            async with self._conn() as conn:
                session_id = await conn.fetchval(
                    "SELECT id FROM sessions WHERE channel_id = $1 AND name = $2",
                    channel_id,
                    name,
                )
        if session_id is None:
            return None
        await self._execute(
            [
                ("UPDATE channels SET session_id = $1 WHERE id = $2", (session_id, channel_id)),
                self._audit_row(
                    channel_id, actor_id, actor_name, "session.resume", None, None, name
                ),
            ]
        )
        return next(s for s in await self.sessions(channel_id) if s.id == session_id)

    async def session_messages(
        self, channel_id: int, session_id: int, limit: int
    ) -> list[StoredMessage]:
        """The last `limit` visible messages of one of a chat's conversations, oldest first."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE channel_id = $1"
                " AND session_id = $2 AND status = ANY($3::text[]) AND content <> ''"
                " ORDER BY id DESC LIMIT $4",
                channel_id,
                session_id,
                list(VISIBLE),
                limit,
            )
        return [StoredMessage(*tuple(row)) for row in reversed(rows)]

    async def mark_interrupted(self) -> int:
        """Replies pending in processes that are gone become 'interrupted'.

        Safe while other processes run (their replies stay theirs), so it may run at any time.
        """
        (count,) = await self._execute(
            [
                (
                    "UPDATE messages SET status = 'interrupted', updated_at = $1"
                    f" WHERE {_PENDING_SQL} AND owner IS DISTINCT FROM $2 AND {_GONE_OWNER_SQL}",
                    (time.time(), self.instance),
                )
            ]
        )
        return count

    async def purge_older_than(self, days: int) -> int:
        """Delete messages older than `days` days (storage.retention_days)."""
        (count,) = await self._execute(
            [("DELETE FROM messages WHERE created_at < $1", (time.time() - days * 86400,))]
        )
        return count


def _memory(row: Any) -> Memory:
    return Memory(int(row[0]), row[1], bool(row[2]), int(row[3]), float(row[4]))
