"""Turns and history: channels, the two rows of a turn, a prompt's history, retention.

A reply gets its row (status 'queued') when the user's message arrives, right after the user's
row, so a channel's rows are in conversation order by id even when messages queue up.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from bot.storage.audit import write_audit
from bot.storage.base import PENDING, VISIBLE, Status, StoredMessage, Turn
from bot.storage.database import Database, Tx
from bot.storage.handled import HandledKey, claim_in

MESSAGE_COLUMNS = (
    "id", "role", "author_id", "author_name", "content", "status", "token_count", "created_at",
    "tool_exchange",
)  # fmt: skip
VISIBLE_SQL = "status IN ({})".format(", ".join(f"'{status}'" for status in VISIBLE))
# Matches PostgreSQL's messages_pending index.
PENDING_SQL = "status IN ({})".format(", ".join(f"'{status}'" for status in PENDING))
# The session a chat's new messages go to; its channel is parameter $1.
CURRENT_SESSION = "(SELECT session_id FROM channels WHERE id = $1)"


def columns(alias: str = "") -> str:
    """The columns of a StoredMessage, in order, each prefixed with `alias`."""
    return ", ".join(alias + name for name in MESSAGE_COLUMNS)


def session_of_row(row: str, channel: str) -> str:
    """SQL for the session of message `row` (the chat's current one if there is no such row)."""
    return (
        f"COALESCE((SELECT session_id FROM messages WHERE id = {row}),"
        f" (SELECT session_id FROM channels WHERE id = {channel}))"
    )


def stored(rows: Sequence[Sequence[Any]]) -> list[StoredMessage]:
    """Rows of `columns()` as StoredMessages."""
    return [StoredMessage(*row) for row in rows]


def history_sql(db: Database) -> str:
    """A prompt's history: an index range scan of one session, newest first.

    Parameters: channel, row, limit. tests/test_migrations.py checks its plan on both dialects.
    """
    return _history_sql(db.indexed_by("messages_session_recent"))


@functools.cache
def _history_sql(hint: str) -> str:
    # Built once per dialect: it is read before every answer.
    return (
        f"SELECT {columns()} FROM messages{hint}"
        f" WHERE channel_id = $1 AND session_id = {session_of_row('$2', '$1')}"
        f" AND id < $2 AND {VISIBLE_SQL} AND content <> '' ORDER BY id DESC LIMIT $3"
    )


async def insert_user_row(
    tx: Tx,
    channel_id: int,
    status: Status,
    author_id: str,
    author_name: str,
    content: str,
    token_count: int | None,
) -> tuple[int, int, float]:
    """A user's row in the chat's current session; (its id, that session, its time)."""
    (row,) = await tx.fetch(
        "INSERT INTO messages (channel_id, session_id, role, status, author_id, author_name,"
        f" content, token_count, created_at, updated_at) VALUES ($1, {CURRENT_SESSION},"
        " 'user', $2, $3, $4, $5, $6, $7, $7) RETURNING id, session_id, created_at",
        *(channel_id, status, author_id, author_name, content, token_count, time.time()),
    )
    return int(row[0]), int(row[1]), float(row[2])


class Turns:
    """The store's turns and history."""

    db: Database
    _channel_ids: dict[tuple[str, str], int]

    async def channel_id(self, platform: str, channel_key: str) -> int:
        """The id of a channel, created on first use (by whichever process sees it first)."""
        key = (platform, channel_key)
        if key in self._channel_ids:
            return self._channel_ids[key]
        # The no-op update makes RETURNING give the id when the row already exists.
        channel = await self.db.write(
            lambda tx: tx.fetchval(
                "INSERT INTO channels (platform, channel_key, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (platform, channel_key) DO UPDATE SET platform = excluded.platform"
                " RETURNING id",
                platform,
                channel_key,
                time.time(),
            )
        )
        # Channel rows are never deleted, so a key's id never changes: safe to keep.
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
        handled: HandledKey | None = None,
    ) -> Turn:
        """Store the user's message and reserve its reply's row (status 'queued') in one go.

        With `handled`, the platform update is claimed in the same transaction: AlreadyHandled
        (and nothing stored) when a delivery before this one was stored already.
        """

        async def rows(tx: Tx) -> Turn:
            if handled is not None:
                await claim_in(tx, handled)
            await self.db.order_rows(tx, channel_id)
            user_row, session_id, now = await insert_user_row(
                tx, channel_id, "complete", author_id, author_name, content, token_count
            )
            # The reply belongs to the question's session, even if the chat switches.
            reply_row = await tx.fetchval(
                "INSERT INTO messages (channel_id, session_id, role, author_id, content, status,"
                " created_at, updated_at, owner)"
                " VALUES ($1, $2, 'assistant', $3, '', 'queued', $4, $4, $5) RETURNING id",
                channel_id,
                session_id,
                bot_id,
                now,
                self.db.owner,
            )
            return Turn(channel_id, user_row, int(reply_row))

        return await self.db.write(rows)

    async def amend_turn(self, turn: Turn, *, content: str, token_count: int | None) -> None:
        """The user said more: their row of `turn` becomes `content`, and its reply's row is
        reserved again (empty, 'queued') for the answer to the whole of it."""

        async def rows(tx: Tx) -> None:
            now = time.time()
            await tx.execute(
                "UPDATE messages SET content = $1, token_count = $2, updated_at = $3 WHERE id = $4",
                *(content, token_count, now, turn.user_row),
            )
            await tx.execute(
                "UPDATE messages SET content = '', status = 'queued', token_count = NULL,"
                " updated_at = $1, owner = $2 WHERE id = $3",
                *(now, self.db.owner, turn.reply_row),
            )

        await self.db.write(rows)

    async def record_failed_input(
        self, channel_id: int, *, author_id: str, author_name: str, note: str
    ) -> int:
        """Record a turn that cannot be answered (e.g. an unreadable voice note) as 'failed'."""

        async def row(tx: Tx) -> int:
            user_row, _, _ = await insert_user_row(
                tx, channel_id, "failed", author_id, author_name, note, None
            )
            return user_row

        return await self.db.write(row)

    async def update_message(
        self,
        row_id: int,
        *,
        content: str | None = None,
        status: Status | None = None,
        token_count: int | None = None,
        tool_exchange: str | None = None,
    ) -> None:
        """Update a message's content, status, token count and tool exchange (None leaves a
        field as it is)."""
        await self.db.write(
            lambda tx: tx.execute(
                "UPDATE messages SET content = COALESCE($1, content),"
                " status = COALESCE($2, status), token_count = COALESCE($3, token_count),"
                " tool_exchange = COALESCE($4, tool_exchange), updated_at = $5 WHERE id = $6",
                content,
                status,
                token_count,
                tool_exchange,
                time.time(),
                row_id,
            )
        )

    async def history(self, channel_id: int, before_row: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` visible messages of a channel older than `before_row`, newest first.

        Only `before_row`'s session (when there is no such row: the chat's current session).
        """
        return stored(await self.db.fetch(history_sql(self.db), channel_id, before_row, limit))

    async def get_message(self, row_id: int) -> StoredMessage | None:
        """One message by id, whatever its status."""
        row = await self.db.fetchrow(f"SELECT {columns()} FROM messages WHERE id = $1", row_id)
        return StoredMessage(*row) if row else None

    async def search_history(
        self, channel_id: int, turn_row: int, before_row: int, terms: Sequence[str], limit: int
    ) -> list[StoredMessage]:
        """Visible messages of `turn_row`'s session older than `before_row` that match any of
        `terms` (full-text search), most relevant first."""
        rows = await self.db.search(
            "messages",
            terms,
            columns("t."),
            f"t.channel_id = $2 AND t.session_id = {session_of_row('$3', '$2')} AND t.id < $4"
            f" AND t.{VISIBLE_SQL} AND t.content <> ''",
            (channel_id, turn_row, before_row),
            limit,
            channel_id=channel_id,
        )
        return stored(rows)

    async def clear_channel(self, channel_id: int, *, actor_id: str, actor_name: str) -> int:
        """Delete the chat's current conversation (its settings and other sessions stay);
        audited. Returns the rows deleted."""

        async def clear(tx: Tx) -> int:
            deleted = await tx.execute(
                f"DELETE FROM messages WHERE channel_id = $1 AND session_id = {CURRENT_SESSION}",
                channel_id,
            )
            await write_audit(tx, channel_id, actor_id, actor_name, "reset")
            return deleted

        return await self.db.write(clear)

    async def forget_author(self, platform: str, author_id: str, *, actor_name: str) -> int:
        """Delete every message a user wrote on a platform; audited. Returns rows deleted."""

        async def forget(tx: Tx) -> int:
            deleted = await tx.execute(
                "DELETE FROM messages WHERE author_id = $1 AND role = 'user' AND channel_id IN"
                " (SELECT id FROM channels WHERE platform = $2)",
                author_id,
                platform,
            )
            await write_audit(tx, None, author_id, actor_name, "forget")
            return deleted

        return await self.db.write(forget)

    async def mark_interrupted(self) -> int:
        """Replies left 'queued' or 'streaming' by a process that is gone become 'interrupted'.

        SQLite: at start, every pending row is the last run's (one process owns the file).
        PostgreSQL: only the rows of processes that are gone, so it may run at any time.
        """
        return await self.db.write(
            lambda tx: tx.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = $1"
                f" WHERE {PENDING_SQL} AND {self.db.abandoned}",
                time.time(),
            )
        )

    async def purge_older_than(self, days: int) -> int:
        """Delete messages older than `days` days (storage.retention_days)."""
        return await self.db.write(
            lambda tx: tx.execute(
                "DELETE FROM messages WHERE created_at < $1", time.time() - days * 86400
            )
        )
