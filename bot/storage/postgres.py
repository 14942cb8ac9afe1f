"""PostgreSQL (asyncpg): several bot processes sharing one database. Migrations, the doctor's
check, the driver of the `Database` seam, PostgresStore.

Queries go through a connection pool; the turn locks through each store's own session
(bot/storage/postgres_turns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

import asyncpg

from bot.errors import StorageError
from bot.storage.base import (
    Dialect,
    Migration,
    WriteHealth,
    load_migrations,
    migration_set,
    pending_migrations,
)
from bot.storage.database import Database, FullText, Row, Searchable, Tx, storable_params
from bot.storage.postgres_connect import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    DB_ERRORS,
    NS_MIGRATE,
    NS_RECORD,
    SESSION_SETTINGS,
    connect,
    location,
    storage_error,
)
from bot.storage.postgres_turns import (
    GONE_OWNER_SQL,
    LOCK_WAIT_S,
    ORDER_WAIT_S,
    Coordinator,
    TurnLocks,
    lock_key,
)
from bot.storage.store import Store

T = TypeVar("T")
# English stemming, as the generated `search` columns (migration 0002) index the text.
TEXT_SEARCH_CONFIG = "english"


def tsquery(terms: Sequence[str]) -> str:
    """A tsquery matching any of `terms`; only word characters go in, so never query syntax."""
    words = ("".join(ch for ch in term if ch.isalnum() or ch == "_") for term in terms)
    return " | ".join(word for word in words if word)


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
    migrations = migration_set("postgresql", migrations)
    conn = await connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1, 0)", NS_MIGRATE)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = await schema_version(conn)
        instead = "point storage.url at another database"
        for migration in pending_migrations(migrations, before, location(url), instead):
            # One transaction per migration: the schema change and its version land together.
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        return before, await schema_version(conn)
    except DB_ERRORS as exc:
        raise storage_error(url, "migration failed", exc) from exc
    finally:
        # Closing the session also ends its advisory lock.
        with contextlib.suppress(*DB_ERRORS):
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
    except DB_ERRORS as exc:
        return "fail", str(storage_error(url, "query failed", exc))
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.close(timeout=5)


class _PostgresTx:
    """The statements of one transaction on a pooled connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        status = await self._conn.execute(sql, *storable_params(params))
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        return [tuple(row) for row in await self._conn.fetch(sql, *storable_params(params))]

    async def fetchval(self, sql: str, *params: Any) -> Any:
        return await self._conn.fetchval(sql, *storable_params(params))


class PostgresDatabase(Database):
    """A PostgreSQL database: a connection pool, and the coordinator's session for turns."""

    dialect: Dialect = "postgresql"
    like = "ILIKE"  # PostgreSQL's LIKE is case-sensitive

    def __init__(
        self,
        url: str,
        pool: asyncpg.Pool,
        coordinator: Coordinator,
        *,
        order_wait_s: float = ORDER_WAIT_S,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self._url = url
        self._pool = pool
        self._coordinator = coordinator
        self.turns = TurnLocks(
            url, coordinator, self._conn, order_wait_s=order_wait_s, lock_wait_s=lock_wait_s
        )
        self.health = WriteHealth(f"PostgreSQL at {location(url)}")

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        order_wait_s: float = ORDER_WAIT_S,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> PostgresDatabase:
        """Migrate the database at `url`, then open a pool of up to `pool_size` connections."""
        await migrate(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings=SESSION_SETTINGS,
            )
        except (*DB_ERRORS, ValueError) as exc:
            raise storage_error(url, "cannot connect", exc) from None
        coordinator = Coordinator(url)
        try:
            await coordinator.start()
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool, coordinator, order_wait_s=order_wait_s, lock_wait_s=lock_wait_s)

    @property
    def owner(self) -> int:
        """This store's instance number, held locked while the store lives."""
        return self._coordinator.instance

    @property
    def abandoned(self) -> str:
        """Not ours, and its owner's instance lock is gone: safe while other processes run."""
        return f"owner IS DISTINCT FROM {int(self.owner)} AND {GONE_OWNER_SQL}"

    async def close(self) -> None:
        """Close the pool and the coordinator's session (which releases its locks)."""
        with contextlib.suppress(*DB_ERRORS):
            await self._coordinator.close()
        with contextlib.suppress(*DB_ERRORS):
            await asyncio.wait_for(self._pool.close(), 10)

    @asynccontextmanager
    async def _conn(
        self, doing: str = "query failed", *, write: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database errors leave as StorageError (writes: in `health`)."""
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except DB_ERRORS as exc:
            error = storage_error(self._url, doing, exc)
            if write:
                self.health.failed(error)
            raise error from exc
        if write:
            self.health.succeeded()

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """The rows of one read-only query, on a pooled connection."""
        async with self._conn() as conn:
            return [tuple(row) for row in await conn.fetch(sql, *storable_params(params))]

    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one transaction on a pooled connection."""
        async with self._conn("write failed", write=True) as conn, conn.transaction():
            return await work(_PostgresTx(conn))

    def channel_turn(
        self, channel_id: int, reply_row: int | None
    ) -> AbstractAsyncContextManager[None]:
        """The channel's turn lock across processes (bot/storage/postgres_turns.py)."""
        return self.turns.hold(channel_id, reply_row)

    async def order_rows(self, tx: Tx, channel_id: int) -> None:
        """Ids come from one sequence shared by every process: this lock makes a channel's
        rows commit in id order, so an earlier id is never still invisible to a later turn."""
        await tx.execute("SELECT pg_advisory_xact_lock($1, $2)", NS_RECORD, lock_key(channel_id))

    def indexed_by(self, index: str) -> str:
        """PostgreSQL's planner needs no hint (and has no syntax for one)."""
        return ""

    def full_text(self, table: Searchable, query: str) -> FullText:
        """The generated tsvector column `search` (migration 0002), best ts_rank first."""
        tsq = f"to_tsquery('{TEXT_SEARCH_CONFIG}', {query})"
        return FullText(
            source=f"{table} t", match=f"t.search @@ {tsq}", rank=f"ts_rank(t.search, {tsq}) DESC"
        )

    def text_query(self, terms: Sequence[str], channel_id: int | None = None) -> str:
        """A tsquery (the SQL itself keeps to the channel)."""
        return tsquery(terms)


class PostgresStore(Store):
    """The store on a PostgreSQL database shared by several processes."""

    db: PostgresDatabase

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        order_wait_s: float = ORDER_WAIT_S,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> PostgresStore:
        """Migrate the database at `url`, then open it."""
        db = await PostgresDatabase.open(
            url, pool_size=pool_size, order_wait_s=order_wait_s, lock_wait_s=lock_wait_s
        )
        return cls(db)

    @property
    def instance(self) -> int:
        """This store's instance number (the owner recorded on the reply rows it reserves)."""
        return self.db.owner
