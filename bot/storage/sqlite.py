"""SQLite: one process, one file. Migrations, the driver of the `Database` seam, SQLiteStore.

WAL mode with one writer connection and one reader connection, so history reads never wait behind
a write. Every write is one `BEGIN IMMEDIATE` transaction on the writer, one at a time, which
also keeps a channel's rows in id order. Several bot processes share a PostgreSQL database
instead (bot/storage/postgres.py).
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from bot.errors import StorageError, StorageProblem
from bot.storage.base import (
    Dialect,
    LocalLocks,
    Migration,
    WriteHealth,
    migration_set,
    pending_migrations,
)
from bot.storage.database import Database, FullText, Row, Searchable, Tx, storable_params
from bot.storage.store import Store

T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=1024)
def sqlite_sql(sql: str) -> str:
    """A statement with `$n` placeholders in SQLite's spelling, `?n` (translated once)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


async def _connect(path: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


async def migrate(path: str, migrations: list[Migration] | None = None) -> tuple[int, int]:
    """Apply pending migrations; return (version before, after). Refuses a newer database."""
    migrations = migration_set("sqlite", migrations)
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await _connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"the database {path} cannot be opened: {exc}") from exc
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        before = await _user_version(conn)
        instead = "point storage.path at another file"
        for migration in pending_migrations(migrations, before, path, instead):
            # One transaction per migration: the schema change and its version land together.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{migration.sql}\nPRAGMA user_version = {migration.version};\n"
                "COMMIT;"
            )
        return before, await _user_version(conn)
    finally:
        await conn.close()


async def _user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _fetchall(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    """All rows of one statement, in one trip to the connection's thread (plain tuples: the
    connections have no row factory)."""
    rows = await conn.execute_fetchall(sqlite_sql(sql), storable_params(params))
    return cast(list[Row], rows)


class _SQLiteTx:
    """The statements of one transaction on the writer connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        cursor = await self._conn.execute(sqlite_sql(sql), storable_params(params))
        count = cursor.rowcount
        await cursor.close()
        return max(count, 0)

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        return await _fetchall(self._conn, sql, params)

    async def fetchval(self, sql: str, *params: Any) -> Any:
        rows = await self.fetch(sql, *params)
        return rows[0][0] if rows else None


class SQLiteDatabase(Database):
    """One SQLite file: a writer connection (one transaction at a time) and a reader."""

    dialect: Dialect = "sqlite"
    like = "LIKE"  # SQLite's LIKE ignores case for ASCII

    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, path: str = ""
    ) -> None:
        self.path = path
        self.health = WriteHealth(f"SQLite at {path}")
        self._writer = writer
        self._reader = reader
        # One writer connection: transactions from concurrent turns must not interleave.
        self._write_lock = asyncio.Lock()
        self._turns = LocalLocks()

    @classmethod
    async def open(cls, path: str) -> SQLiteDatabase:
        """Migrate the database at `path` and open it."""
        await migrate(path)
        try:
            writer = await _connect(path)
            await writer.execute("PRAGMA synchronous = NORMAL")  # durable in WAL across app crashes
            reader = await _connect(path)
        except sqlite3.Error as exc:
            raise StorageError(f"the database {path} cannot be opened: {exc}") from exc
        return cls(writer, reader, path)

    async def close(self) -> None:
        """Close both connections."""
        await self._writer.close()
        await self._reader.close()

    @property
    def owner(self) -> None:
        """No owner is recorded: one process owns the file."""
        return None

    @property
    def abandoned(self) -> str:
        """Every pending reply: one process owns the file, and it asks only at start."""
        return "TRUE"

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """On the reader connection: under WAL it never waits behind a write."""
        return await _fetchall(self._reader, sql, params)

    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one BEGIN IMMEDIATE transaction on the writer connection.

        A transaction, once begun, runs to its end even when the caller is cancelled (a reply
        stopped at its time limit): torn between BEGIN and COMMIT, it would leave the one writer
        connection inside a transaction and every later write refused.
        """
        task = asyncio.ensure_future(self._transaction(work))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    result = await work(_SQLiteTx(self._writer))
                    await self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                error = write_error(self.path, exc)
                self.health.failed(error)
                raise error from exc
        self.health.succeeded()
        return result

    @asynccontextmanager
    async def channel_turn(self, channel_id: int, reply_row: int | None) -> AsyncIterator[None]:
        """One turn at a time per channel; in one process an asyncio lock (FIFO) is enough.

        `reply_row` needs no wait here: in one process, FIFO order is row order.
        """
        async with self._turns.hold(channel_id):
            yield

    async def order_rows(self, tx: Tx, channel_id: int) -> None:
        """Nothing to do: one writer at a time, so rows commit in id order."""

    def indexed_by(self, index: str) -> str:
        """SQLite's planner may pick the wrong one of two indexes on channel_id: name it."""
        return f" INDEXED BY {index}"

    def full_text(self, table: Searchable, query: str) -> FullText:
        """FTS5 (bot.migrations sqlite 0002): the `<table>_fts` index joined to its table,
        best BM25 score first."""
        fts = f"{table}_fts"
        # A message's chat column only scopes the search: it weighs nothing in the score.
        weights = ", 1.0, 0.0" if table == "messages" else ""
        return FullText(
            source=f"{fts} JOIN {table} t ON t.id = {fts}.rowid",
            match=f"{fts} MATCH {query}",
            rank=f"bm25({fts}{weights})",
        )

    def text_query(self, terms: Sequence[str], channel_id: int | None = None) -> str:
        """An FTS5 query; messages are indexed with their chat ("c<id>") as a second column,
        so one chat's search intersects its doclist inside the index."""
        if not terms:
            return ""
        query = fts_query(terms)
        return query if channel_id is None else f'chat : "c{int(channel_id)}" AND ({query})'


class SQLiteStore(Store):
    """The store on one SQLite file."""

    db: SQLiteDatabase

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        """Migrate the database at `path` and open it."""
        return cls(await SQLiteDatabase.open(path))


def fts_query(terms: Sequence[str]) -> str:
    """An FTS5 query matching any of `terms`, each quoted (a term is never query syntax)."""
    return " OR ".join('"{}"'.format(term.replace('"', '""')) for term in terms)


# SQLite's primary result codes (https://sqlite.org/rescode.html) and what they mean here.
_PROBLEMS: dict[int, StorageProblem] = {
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_CANTOPEN: "unavailable",
}


def write_error(path: str, exc: sqlite3.Error) -> StorageError:
    """A StorageError for a failed write, with the kind of problem."""
    code = getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_ERROR) & 0xFF
    return StorageError(f"SQLite at {path}: {exc}", problem=_PROBLEMS.get(code, "error"))


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A shielded write whose caller was cancelled: its error is still looked at (and logged)."""
    if not task.cancelled():
        task.exception()
