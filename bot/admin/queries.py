"""Read-only queries the admin console needs, as small functions taking the store.

The bot itself never lists or searches chats, so these are the console's own SQL, written once
for both dialects (`$n` parameters, as the store's own SQL) and run through the store's read-only
`fetch`. Where the dialects differ the store says how: `store.like` is LIKE without case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bot.storage import Store
from bot.storage.base import MAX_ROW_ID

PREVIEW_CHARS = 120
_LIKE_ESCAPE = "\\"  # as written in the ESCAPE clause of search_messages
_NO_ROW_ABOVE = MAX_ROW_ID  # "before" when a page starts at the newest row


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
    session_id: int  # the chat's conversation it belongs to (0: "main")

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


_MESSAGE_COLUMNS = (
    "m.id, m.channel_id, m.role, m.author_id, m.author_name, m.content, m.status,"
    " m.token_count, m.created_at, m.updated_at, m.session_id"
)


def _message(row: Any) -> MessageRow:
    return MessageRow(*tuple(row)[:11])


async def list_chats(store: Store, *, limit: int, offset: int = 0) -> list[ChatSummary]:
    """Chats by last activity, newest first.

    The newest message of each channel comes from the (channel_id, id DESC) index, one probe per
    channel, and counts are taken only for the page shown.
    """
    rows = await store.fetch(
        "SELECT c.id, c.platform, c.channel_key, c.created_at,"
        " COALESCE((SELECT m.created_at FROM messages m WHERE m.channel_id = c.id"
        "           ORDER BY m.id DESC LIMIT 1), c.created_at) AS last_at,"
        " (SELECT m.content FROM messages m WHERE m.channel_id = c.id"
        "  ORDER BY m.id DESC LIMIT 1) AS preview"
        " FROM channels c ORDER BY last_at DESC, c.id DESC LIMIT $1 OFFSET $2",
        (limit, offset),
    )
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


async def _message_counts(store: Store, channel_ids: list[int]) -> dict[int, int]:
    if not channel_ids:
        return {}
    marks = ", ".join(f"${n}" for n in range(1, len(channel_ids) + 1))
    rows = await store.fetch(
        f"SELECT channel_id, COUNT(*) FROM messages WHERE channel_id IN ({marks})"
        " GROUP BY channel_id",
        tuple(channel_ids),
    )
    return {int(row[0]): int(row[1]) for row in rows}


async def count_chats(store: Store) -> int:
    rows = await store.fetch("SELECT COUNT(*) FROM channels")
    return int(rows[0][0]) if rows else 0


async def get_chat(store: Store, channel_id: int) -> ChatSummary | None:
    """One chat, or None when there is no such id."""
    rows = await store.fetch(
        "SELECT c.id, c.platform, c.channel_key, c.created_at,"
        " COALESCE(MAX(m.created_at), c.created_at), COUNT(m.id)"
        " FROM channels c LEFT JOIN messages m ON m.channel_id = c.id"
        " WHERE c.id = $1 GROUP BY c.id",
        (channel_id,),
    )
    if not rows:
        return None
    row = rows[0]
    return ChatSummary(
        int(row[0]), row[1], row[2], float(row[3]), float(row[4]), int(row[5]), preview=""
    )


async def chat_messages(
    store: Store,
    channel_id: int,
    *,
    limit: int,
    before: int | None = None,
    session_id: int | None = None,
) -> list[MessageRow]:
    """Up to `limit` messages of a chat older than row `before` (all when None), of one of its
    conversations (all when None), oldest first."""
    params: tuple[Any, ...] = (channel_id, before if before is not None else _NO_ROW_ABOVE, limit)
    where = "m.channel_id = $1 AND m.id < $2"
    if session_id is not None:
        where += " AND m.session_id = $4"
        params += (session_id,)
    rows = await store.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE {where} ORDER BY m.id DESC LIMIT $3",
        params,
    )
    return [_message(row) for row in reversed(rows)]


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % and _ taken literally."""
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


async def search_messages(store: Store, text: str, *, limit: int) -> list[SearchHit]:
    """Messages containing `text` (without case, for ASCII at least), newest first.

    A scan from the newest message backwards that stops at `limit` hits.
    """
    rows = await store.fetch(
        f"SELECT {_MESSAGE_COLUMNS}, c.platform, c.channel_key"
        " FROM messages m JOIN channels c ON c.id = m.channel_id"
        f" WHERE m.content {store.like} $1 ESCAPE '\\' ORDER BY m.id DESC LIMIT $2",
        (like_pattern(text), limit),
    )
    return [SearchHit(_message(row), row[11], row[12]) for row in rows]


async def audit_page(
    store: Store,
    *,
    limit: int,
    before: int | None = None,
    channel_id: int | None = None,
) -> list[AuditRow]:
    """Audit entries older than row `before`, newest first, of one chat or all."""
    sql = (
        "SELECT a.id, a.channel_id, c.platform, c.channel_key, a.actor_id, a.actor_name,"
        " a.action, a.key, a.old_value, a.new_value, a.created_at"
        " FROM audit_log a LEFT JOIN channels c ON c.id = a.channel_id WHERE a.id < $1"
    )
    params: list[Any] = [before if before is not None else _NO_ROW_ABOVE]
    if channel_id is not None:
        params.append(channel_id)
        sql += f" AND a.channel_id = ${len(params)}"
    params.append(limit)
    rows = await store.fetch(sql + f" ORDER BY a.id DESC LIMIT ${len(params)}", tuple(params))
    return [AuditRow(*tuple(row)) for row in rows]
