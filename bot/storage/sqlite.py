"""SQLite storage: versioned migrations, conversation history, channel settings, audit log.

WAL mode with one writer connection and one reader connection, so history reads never wait behind a
write. Every multi-statement write is one `BEGIN IMMEDIATE` transaction. One process owns the file:
several bot processes share a PostgreSQL database instead (bot/storage/postgres.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from bot.errors import StorageError, StorageProblem
from bot.storage.base import (
    BACKGROUND_KEPT,
    MAIN_SESSION,
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

_MESSAGE_COLUMNS = "id, role, author_id, author_name, content, status, token_count, created_at"
_VISIBLE_SQL = "status IN ({})".format(", ".join(f"'{status}'" for status in VISIBLE))
_CURRENT_SESSION = "(SELECT session_id FROM channels WHERE id = ?)"
# The session of a message row (params: row, channel): the chat's current one if there is no row.
_SESSION_OF_ROW = f"COALESCE((SELECT session_id FROM messages WHERE id = ?), {_CURRENT_SESSION})"
# A prompt's history: an index range scan of one session, newest first (params: channel, row,
# channel, row, limit). tests/test_migrations.py checks its plan.
HISTORY_SQL = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_session_recent"
    f" WHERE channel_id = ? AND session_id = {_SESSION_OF_ROW}"
    f" AND id < ? AND {_VISIBLE_SQL} AND content != ''"
    " ORDER BY id DESC LIMIT ?"
)


async def _connect(path: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


async def migrate(path: str, migrations: list[Migration] | None = None) -> tuple[int, int]:
    """Apply pending migrations; return (version before, after). Refuses a newer database."""
    migrations = load_migrations(dialect="sqlite") if migrations is None else migrations
    if not migrations:
        raise StorageError("no migrations to apply: the installation is incomplete")
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await _connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"the database {path} cannot be opened: {exc}") from exc
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        before = await _user_version(conn)
        latest = migrations[-1].version
        if before > latest:
            raise StorageError(
                f"the database {path} has schema version {before}, newer than this Parley knows "
                f"({latest}): upgrade Parley, or point storage.path at another file"
            )
        for migration in migrations[before:]:
            log.info("applying migration %s", migration.name)
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


class SQLiteStore:
    """Conversation history, channel settings and the audit log of one SQLite database."""

    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, path: str = ""
    ) -> None:
        self.path = path
        self.health = WriteHealth(f"SQLite at {path}")
        self._writer = writer
        self._reader = reader
        # Channel rows are never deleted, so a key's id never changes: safe to keep.
        self._channel_ids: dict[tuple[str, str], int] = {}
        # One writer connection: transactions from concurrent turns must not interleave.
        self._write_lock = asyncio.Lock()
        self._turns = LocalLocks()

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
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

    @asynccontextmanager
    async def channel_turn(
        self, channel_id: int, reply_row: int | None = None
    ) -> AsyncIterator[None]:
        """One turn at a time per channel; in one process an asyncio lock (FIFO) is enough.

        `reply_row` is accepted for the contract: in one process, FIFO order is row order.
        """
        async with self._turns.hold(channel_id):
            yield

    async def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run statements in one transaction; return each statement's lastrowid or rowcount.

        A transaction, once begun, runs to its end even when the caller is cancelled (a reply
        stopped at its time limit): torn between BEGIN and COMMIT, it would leave the one writer
        connection inside a transaction and every later write refused.
        """
        task = asyncio.ensure_future(self._transaction(list(statements)))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        results = []
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements:
                        cur = await self._writer.execute(sql, params)
                        is_insert = sql.lstrip().upper().startswith("INSERT")
                        results.append(cur.lastrowid if is_insert else cur.rowcount)
                        await cur.close()
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
        return [r or 0 for r in results]

    async def probe_write(self) -> None:
        """Commit a write that leaves nothing behind: a row inserted and deleted again.

        It must reach the disk: a rolled-back write never leaves SQLite's page cache, so it
        would succeed on a full disk.
        """
        await self._write(
            [
                (
                    "INSERT INTO audit_log (id, actor_id, action, created_at)"
                    " VALUES (-1, 'parley', 'probe', 0)",
                    (),
                ),
                ("DELETE FROM audit_log WHERE id = -1", ()),
            ]
        )

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query, `?` parameters (reports such as the admin console's).

        On the reader connection: under WAL it never waits behind a write.
        """
        async with self._reader.execute(sql, params) as cur:
            return [tuple(row) for row in await cur.fetchall()]

    async def channel_id(self, platform: str, channel_key: str) -> int:
        """The id of a channel, created on first use."""
        key = (platform, channel_key)
        if key in self._channel_ids:
            return self._channel_ids[key]
        await self._write(
            [
                (
                    "INSERT INTO channels (platform, channel_key, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (platform, channel_key) DO NOTHING",
                    (platform, channel_key, time.time()),
                )
            ]
        )
        async with self._writer.execute(
            "SELECT id FROM channels WHERE platform = ? AND channel_key = ?", key
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self._channel_ids[key] = int(row[0])
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
        user_row, reply_row = await self._write(
            [
                (
                    "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                    " content, status, token_count, created_at, updated_at)"
                    f" VALUES (?, {_CURRENT_SESSION}, 'user', ?, ?, ?, 'complete', ?, ?, ?)",
                    (
                        channel_id,
                        channel_id,
                        author_id,
                        author_name,
                        content,
                        token_count,
                        now,
                        now,
                    ),
                ),
                (
                    # The reply belongs to the question's session, even if the chat switches.
                    "INSERT INTO messages (channel_id, session_id, role, author_id, content,"
                    " status, created_at, updated_at)"
                    " VALUES (?, (SELECT session_id FROM messages WHERE id = last_insert_rowid()),"
                    " 'assistant', ?, '', 'queued', ?, ?)",
                    (channel_id, bot_id, now, now),
                ),
            ]
        )
        return Turn(channel_id, user_row, reply_row)

    async def record_failed_input(
        self, channel_id: int, *, author_id: str, author_name: str, note: str
    ) -> int:
        """Record a turn that cannot be answered (e.g. an unreadable voice note) as 'failed'."""
        now = time.time()
        (row,) = await self._write(
            [
                (
                    "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                    f" content, status, created_at, updated_at) VALUES (?, {_CURRENT_SESSION},"
                    " 'user', ?, ?, ?, 'failed', ?, ?)",
                    (channel_id, channel_id, author_id, author_name, note, now, now),
                )
            ]
        )
        return row

    async def update_message(
        self,
        row_id: int,
        *,
        content: str | None = None,
        status: Status | None = None,
        token_count: int | None = None,
    ) -> None:
        """Update a message's content, status and token count (None leaves a field as it is)."""
        await self._write(
            [
                (
                    "UPDATE messages SET content = COALESCE(?, content),"
                    " status = COALESCE(?, status),"
                    " token_count = COALESCE(?, token_count), updated_at = ? WHERE id = ?",
                    (content, status, token_count, time.time(), row_id),
                )
            ]
        )

    async def history(self, channel_id: int, before_row: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` visible messages of a channel older than `before_row`, newest first.

        Only `before_row`'s session (when there is no such row: the chat's current session).
        """
        async with self._reader.execute(
            HISTORY_SQL, (channel_id, before_row, channel_id, before_row, limit)
        ) as cur:
            rows = await cur.fetchall()
        return [StoredMessage(*tuple(row)) for row in rows]

    async def get_message(self, row_id: int) -> StoredMessage | None:
        """One message by id, whatever its status."""
        async with self._reader.execute(
            "SELECT id, role, author_id, author_name, content, status, token_count, created_at"
            " FROM messages WHERE id = ?",
            (row_id,),
        ) as cur:
            row = await cur.fetchone()
        return StoredMessage(*tuple(row)) if row else None

    async def clear_channel(self, channel_id: int, *, actor_id: str, actor_name: str) -> int:
        """Delete the chat's current conversation (its settings and other sessions stay);
        audited. Returns the rows deleted."""
        deleted, _ = await self._write(
            [
                (
                    "DELETE FROM messages WHERE channel_id = ?"
                    f" AND session_id = {_CURRENT_SESSION}",
                    (channel_id, channel_id),
                ),
                self._audit_row(channel_id, actor_id, actor_name, "reset", None, None, None),
            ]
        )
        return deleted

    async def forget_author(self, platform: str, author_id: str, *, actor_name: str) -> int:
        """Delete every message a user wrote on a platform; audited. Returns rows deleted."""
        deleted, _ = await self._write(
            [
                (
                    "DELETE FROM messages WHERE author_id = ? AND role = 'user' AND channel_id IN"
                    " (SELECT id FROM channels WHERE platform = ?)",
                    (author_id, platform),
                ),
                self._audit_row(None, author_id, actor_name, "forget", None, None, None),
            ]
        )
        return deleted

    async def channel_settings(self, channel_id: int) -> dict[str, Any]:
        """A channel's overrides, read from the database every time (no cache)."""
        async with self._reader.execute(
            "SELECT key, value FROM channel_settings WHERE channel_id = ?", (channel_id,)
        ) as cur:
            rows = await cur.fetchall()
        return {row[0]: json.loads(row[1]) for row in rows}

    async def set_channel_setting(
        self, channel_id: int, key: str, value: Any, *, actor_id: str, actor_name: str, old: Any
    ) -> None:
        """Change one channel setting and write its audit row in the same transaction."""
        encoded = json.dumps(value)
        await self._write(
            [
                (
                    "INSERT INTO channel_settings (channel_id, key, value, updated_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (channel_id, key)"
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
        """Write one audit row (refusals, resets, forgets)."""
        await self._write(
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
            " new_value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (channel_id, actor_id, actor_name, action, key, old_value, new_value, time.time()),
        )

    async def audit_rows(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (all channels when channel_id is None)."""
        sql = "SELECT * FROM audit_log"
        params: tuple[Any, ...] = ()
        if channel_id is not None:
            sql += " WHERE channel_id = ?"
            params = (channel_id,)
        async with self._reader.execute(sql + " ORDER BY id", params) as cur:
            return [dict(row) for row in await cur.fetchall()]

    # -- memory ----------------------------------------------------------------------------

    async def remember(
        self, platform: str, user_id: str, content: str, *, token_count: int, actor_name: str
    ) -> int:
        """Store a fact for a user, private (`shared` false) to begin with. Returns its id."""
        (row,) = await self._write(
            [
                (
                    "INSERT INTO memories (platform, user_id, content, token_count, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (platform, user_id, content, token_count, time.time()),
                )
            ]
        )
        return row

    async def memories(self, platform: str, user_id: str) -> list[Memory]:
        """A user's facts, oldest first."""
        async with self._reader.execute(
            "SELECT id, content, shared, token_count, created_at FROM memories"
            " WHERE platform = ? AND user_id = ? ORDER BY id",
            (platform, user_id),
        ) as cur:
            return [_memory(row) for row in await cur.fetchall()]

    async def forget_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, actor_name: str
    ) -> int:
        """Delete one of a user's facts (None: all of them); audited. Returns how many went."""
        sql = "DELETE FROM memories WHERE platform = ? AND user_id = ?"
        params: tuple[Any, ...] = (platform, user_id)
        if memory_id is not None:
            sql, params = sql + " AND id = ?", (*params, memory_id)
        which = "all" if memory_id is None else str(memory_id)
        deleted, _ = await self._write(
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
        sql = "UPDATE memories SET shared = ? WHERE platform = ? AND user_id = ?"
        params: tuple[Any, ...] = (int(shared), platform, user_id)
        if memory_id is not None:
            sql, params = sql + " AND id = ?", (*params, memory_id)
        (changed,) = await self._write([(sql, params)])
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
        """A user's facts matching any of `terms` (FTS5), best BM25 score first."""
        if not terms:
            return []
        async with self._reader.execute(
            "SELECT m.id, m.content, m.shared, m.token_count, m.created_at"
            " FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid"
            " WHERE memories_fts MATCH ? AND m.platform = ? AND m.user_id = ?"
            " AND (? = 0 OR m.shared = 1)"
            " ORDER BY bm25(memories_fts), m.id DESC LIMIT ?",
            (fts_query(terms), platform, user_id, int(shared_only), limit),
        ) as cur:
            return [_memory(row) for row in await cur.fetchall()]

    async def search_history(
        self, channel_id: int, turn_row: int, before_row: int, terms: Sequence[str], limit: int
    ) -> list[StoredMessage]:
        """Visible messages of `turn_row`'s session older than `before_row` that match any of
        `terms` (FTS5), best BM25 score first."""
        if not terms:
            return []
        columns = ", ".join(f"m.{name}" for name in _MESSAGE_COLUMNS.split(", "))
        async with self._reader.execute(
            f"SELECT {columns} FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " WHERE messages_fts MATCH ? AND m.channel_id = ?"
            f" AND m.session_id = {_SESSION_OF_ROW} AND m.id < ?"
            f" AND m.{_VISIBLE_SQL} AND m.content != ''"
            # The chat column only scopes the search: it weighs nothing in the score.
            " ORDER BY bm25(messages_fts, 1.0, 0.0), m.id DESC LIMIT ?",
            (
                f'chat : "c{int(channel_id)}" AND ({fts_query(terms)})',
                channel_id,
                turn_row,
                channel_id,
                before_row,
                limit,
            ),
        ) as cur:
            rows = await cur.fetchall()
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
        row, _ = await self._write(
            [
                (
                    "INSERT INTO messages (channel_id, session_id, role, author_id, author_name,"
                    " content, status, token_count, created_at, updated_at)"
                    f" VALUES (?, {_CURRENT_SESSION}, 'user', ?, ?, ?, 'background', ?, ?, ?)",
                    (
                        channel_id,
                        channel_id,
                        author_id,
                        author_name,
                        content,
                        token_count,
                        now,
                        now,
                    ),
                ),
                (
                    "DELETE FROM messages WHERE channel_id = ? AND status = 'background'"
                    " AND id <= (SELECT id FROM messages WHERE channel_id = ?"
                    " AND status = 'background' ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (channel_id, channel_id, BACKGROUND_KEPT),
                ),
            ]
        )
        return row

    async def background(
        self, channel_id: int, turn_row: int, after_row: int, limit: int
    ) -> list[StoredMessage]:
        """Background messages of `turn_row`'s session between `after_row` and `turn_row`
        (both excluded), newest first."""
        async with self._reader.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_background"
            " WHERE channel_id = ? AND status = 'background' AND id < ? AND id > ?"
            f" AND session_id = {_SESSION_OF_ROW} ORDER BY id DESC LIMIT ?",
            (channel_id, turn_row, after_row, turn_row, channel_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [StoredMessage(*tuple(row)) for row in rows]

    # -- sessions --------------------------------------------------------------------------

    async def sessions(self, channel_id: int) -> list[Session]:
        """A chat's conversations: "main" first, then by creation."""
        async with self._reader.execute(
            "SELECT session_id, created_at FROM channels WHERE id = ?", (channel_id,)
        ) as cur:
            channel = await cur.fetchone()
        if channel is None:
            return []
        async with self._reader.execute(
            "SELECT id, name, created_at FROM sessions WHERE channel_id = ? ORDER BY id",
            (channel_id,),
        ) as cur:
            named = [tuple(row) for row in await cur.fetchall()]
        async with self._reader.execute(
            "SELECT session_id, COUNT(*), MAX(created_at) FROM messages"
            f" WHERE channel_id = ? AND {_VISIBLE_SQL} GROUP BY session_id",
            (channel_id,),
        ) as cur:
            counts = {int(row[0]): (int(row[1]), row[2]) for row in await cur.fetchall()}
        return session_list(int(channel[0]), float(channel[1]), named, counts)

    async def new_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Start a conversation called `name` and make it current; audited. None if the name is
        taken. The conversation before it is kept."""
        if name == MAIN_SESSION or await self._session_id(channel_id, name) is not None:
            return None
        now = time.time()
        session_id, _, _ = await self._write(
            [
                (
                    "INSERT INTO sessions (channel_id, name, created_at) VALUES (?, ?, ?)",
                    (channel_id, name, now),
                ),
                (
                    "UPDATE channels SET session_id ="
                    " (SELECT id FROM sessions WHERE channel_id = ? AND name = ?) WHERE id = ?",
                    (channel_id, name, channel_id),
                ),
                self._audit_row(channel_id, actor_id, actor_name, "session.new", None, None, name),
            ]
        )
        return Session(session_id, name, now, messages=0, last_at=None, current=True)

    async def switch_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Make the conversation called `name` current again; audited. None if there is none."""
        session_id = await self._session_id(channel_id, name)
        if session_id is None:
            return None
        await self._write(
            [
                ("UPDATE channels SET session_id = ? WHERE id = ?", (session_id, channel_id)),
                self._audit_row(
                    channel_id, actor_id, actor_name, "session.resume", None, None, name
                ),
            ]
        )
        return next(s for s in await self.sessions(channel_id) if s.id == session_id)

    async def _session_id(self, channel_id: int, name: str) -> int | None:
        if name == MAIN_SESSION:
            return 0
        async with self._writer.execute(
            "SELECT id FROM sessions WHERE channel_id = ? AND name = ?", (channel_id, name)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else None

    async def session_messages(
        self, channel_id: int, session_id: int, limit: int
    ) -> list[StoredMessage]:
        """The last `limit` visible messages of one of a chat's conversations, oldest first."""
        async with self._reader.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages INDEXED BY messages_session_recent"
            f" WHERE channel_id = ? AND session_id = ? AND {_VISIBLE_SQL} AND content != ''"
            " ORDER BY id DESC LIMIT ?",
            (channel_id, session_id, limit),
        ) as cur:
            rows = list(await cur.fetchall())
        return [StoredMessage(*tuple(row)) for row in reversed(rows)]

    async def mark_interrupted(self) -> int:
        """At start: replies a crash left 'queued' or 'streaming' become 'interrupted'.

        Only at start: the file has one process, so every pending row is the last run's.
        """
        (count,) = await self._write(
            [
                (
                    "UPDATE messages SET status = 'interrupted', updated_at = ?"
                    " WHERE status IN ('queued', 'streaming')",
                    (time.time(),),
                )
            ]
        )
        return count

    async def purge_older_than(self, days: int) -> int:
        """Delete messages older than `days` days (storage.retention_days)."""
        (count,) = await self._write(
            [("DELETE FROM messages WHERE created_at < ?", (time.time() - days * 86400,))]
        )
        return count


def fts_query(terms: Sequence[str]) -> str:
    """An FTS5 query matching any of `terms`, each quoted (a term is never query syntax)."""
    return " OR ".join('"{}"'.format(term.replace('"', '""')) for term in terms)


def _memory(row: Any) -> Memory:
    return Memory(int(row[0]), row[1], bool(row[2]), int(row[3]), float(row[4]))


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


def _retrieve(task: asyncio.Task[list[int]]) -> None:
    """A shielded write whose caller was cancelled: its error is still looked at (and logged)."""
    if not task.cancelled():
        task.exception()
