"""Read-only queries the admin console needs, as small functions taking the store.

Written against the SQLite `HistoryStore` (its reader connection, so they never wait behind a
write). A PostgreSQL backend needs the same six functions: `list_chats`, `count_chats`,
`get_chat`, `chat_messages`, `search_messages` and `audit_page` (see each one's SQL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiosqlite

from bot.storage import HistoryStore

PREVIEW_CHARS = 120
_LIKE_ESCAPE = "\\"


@dataclass(frozen=True, slots=True)
class ChatSummary:
    """A chat (channel) with its last activity."""

    id: int
    platform: str
    channel_key: str
    created_at: float
    last_at: float  # the newest message's time, else the channel's creation
    messages: int
    preview: str  # the start of the newest message


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One message as the console shows it, with the time its reply took."""

    id: int
    channel_id: int
    role: str
    author_id: str
    author_name: str
    content: str
    status: str
    token_count: int | None
    created_at: float
    updated_at: float

    @property
    def latency_s(self) -> float | None:
        """A reply's time from the question's arrival (its row is reserved then) to its end."""
        if self.role != "assistant" or self.status in ("queued", "streaming"):
            return None
        return max(0.0, self.updated_at - self.created_at)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A message that matched a search, with its chat."""

    message: MessageRow
    platform: str
    channel_key: str


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit log entry, with its chat when it has one."""

    id: int
    channel_id: int | None
    platform: str | None
    channel_key: str | None
    actor_id: str
    actor_name: str
    action: str
    key: str | None
    old_value: str | None
    new_value: str | None
    created_at: float

    @property
    def old_shown(self) -> str:
        return _json_text(self.old_value)

    @property
    def new_shown(self) -> str:
        return _json_text(self.new_value)


def _json_text(raw: str | None) -> str:
    """Setting values are stored as JSON: show "0.7", not "0.7" in quotes; other text as is."""
    if raw is None:
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return "" if value is None else str(value)


def _reader(store: HistoryStore) -> aiosqlite.Connection:
    # The store's read connection: WAL lets it read while the engine writes.
    return store._reader


_MESSAGE_COLUMNS = (
    "m.id, m.channel_id, m.role, m.author_id, m.author_name, m.content, m.status,"
    " m.token_count, m.created_at, m.updated_at"
)


def _message(row: Any) -> MessageRow:
    return MessageRow(*tuple(row)[:10])


async def list_chats(store: HistoryStore, *, limit: int, offset: int = 0) -> list[ChatSummary]:
    """Chats by last activity, newest first.

    The newest message of each channel comes from the (channel_id, id DESC) index, one probe per
    channel, and counts are taken only for the page shown.
    """
    async with _reader(store).execute(
        "SELECT c.id, c.platform, c.channel_key, c.created_at,"
        " COALESCE((SELECT m.created_at FROM messages m WHERE m.channel_id = c.id"
        "           ORDER BY m.id DESC LIMIT 1), c.created_at) AS last_at,"
        " (SELECT m.content FROM messages m WHERE m.channel_id = c.id"
        "  ORDER BY m.id DESC LIMIT 1) AS preview"
        " FROM channels c ORDER BY last_at DESC, c.id DESC LIMIT ? OFFSET ?",
        (limit, offset),
    ) as cur:
        rows = [tuple(row) for row in await cur.fetchall()]
    counts = await _message_counts(store, [int(row[0]) for row in rows])
    return [
        ChatSummary(
            id=int(row[0]),
            platform=row[1],
            channel_key=row[2],
            created_at=float(row[3]),
            last_at=float(row[4]),
            messages=counts.get(int(row[0]), 0),
            preview=(row[5] or "")[:PREVIEW_CHARS],
        )
        for row in rows
    ]


async def _message_counts(store: HistoryStore, channel_ids: list[int]) -> dict[int, int]:
    if not channel_ids:
        return {}
    marks = ", ".join("?" * len(channel_ids))
    async with _reader(store).execute(
        f"SELECT channel_id, COUNT(*) FROM messages WHERE channel_id IN ({marks})"
        " GROUP BY channel_id",
        tuple(channel_ids),
    ) as cur:
        return {int(row[0]): int(row[1]) for row in await cur.fetchall()}


async def count_chats(store: HistoryStore) -> int:
    async with _reader(store).execute("SELECT COUNT(*) FROM channels") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def get_chat(store: HistoryStore, channel_id: int) -> ChatSummary | None:
    """One chat, or None when there is no such id."""
    async with _reader(store).execute(
        "SELECT c.id, c.platform, c.channel_key, c.created_at,"
        " COALESCE(MAX(m.created_at), c.created_at), COUNT(m.id)"
        " FROM channels c LEFT JOIN messages m ON m.channel_id = c.id"
        " WHERE c.id = ? GROUP BY c.id",
        (channel_id,),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    return ChatSummary(
        int(row[0]), row[1], row[2], float(row[3]), float(row[4]), int(row[5]), preview=""
    )


async def chat_messages(
    store: HistoryStore, channel_id: int, *, limit: int, before: int | None = None
) -> list[MessageRow]:
    """Up to `limit` messages of a chat older than row `before` (all when None), oldest first."""
    async with _reader(store).execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
        " WHERE m.channel_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
        (channel_id, before if before is not None else 2**63 - 1, limit),
    ) as cur:
        rows = [_message(row) for row in await cur.fetchall()]
    rows.reverse()
    return rows


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % and _ taken literally."""
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


async def search_messages(store: HistoryStore, text: str, *, limit: int) -> list[SearchHit]:
    """Messages containing `text` (case-insensitive for ASCII, as SQLite's LIKE), newest first.

    A scan from the newest message backwards that stops at `limit` hits. PostgreSQL: ILIKE.
    """
    async with _reader(store).execute(
        f"SELECT {_MESSAGE_COLUMNS}, c.platform, c.channel_key"
        " FROM messages m JOIN channels c ON c.id = m.channel_id"
        " WHERE m.content LIKE ? ESCAPE ? ORDER BY m.id DESC LIMIT ?",
        (like_pattern(text), _LIKE_ESCAPE, limit),
    ) as cur:
        rows = await cur.fetchall()
    return [SearchHit(_message(row), row[10], row[11]) for row in rows]


async def audit_page(
    store: HistoryStore,
    *,
    limit: int,
    before: int | None = None,
    channel_id: int | None = None,
) -> list[AuditRow]:
    """Audit entries older than row `before`, newest first, of one chat or all."""
    sql = (
        "SELECT a.id, a.channel_id, c.platform, c.channel_key, a.actor_id, a.actor_name,"
        " a.action, a.key, a.old_value, a.new_value, a.created_at"
        " FROM audit_log a LEFT JOIN channels c ON c.id = a.channel_id WHERE a.id < ?"
    )
    params: list[Any] = [before if before is not None else 2**63 - 1]
    if channel_id is not None:
        sql += " AND a.channel_id = ?"
        params.append(channel_id)
    async with _reader(store).execute(sql + " ORDER BY a.id DESC LIMIT ?", (*params, limit)) as cur:
        rows = await cur.fetchall()
    return [AuditRow(*tuple(row)) for row in rows]
