"""The store: conversation history, channel settings and the audit log, memory, sessions, group
background, reply parts and handled updates, on either database.

Each concern is one module (turns, audit, memory, sessions, background, console_sessions,
throttle, chats, API keys, the answer cache, reply_parts, handled) written once against the
`Database` seam (bot/storage/database.py); `Store` joins them. SQLiteStore and PostgresStore only
open their database. A new table or concern is one migration per dialect
(migrations/<dialect>/NNNN_name.sql, the same name in both) and one module with a class like
these, named in Store's bases.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from bot.storage.answer_cache import CachedAnswers
from bot.storage.api_keys import ApiKeys
from bot.storage.audit import Audit
from bot.storage.background import Background
from bot.storage.base import WriteHealth
from bot.storage.chats import Chats
from bot.storage.console_sessions import ConsoleSessions
from bot.storage.database import Database, Row
from bot.storage.handled import Handled
from bot.storage.memory import Memories
from bot.storage.reply_parts import ReplyParts
from bot.storage.sessions import Sessions
from bot.storage.throttle import Throttles
from bot.storage.turns import Turns


class Store(
    Turns,
    Audit,
    Memories,
    Sessions,
    Background,
    ConsoleSessions,
    Throttles,
    Chats,
    ApiKeys,
    CachedAnswers,
    ReplyParts,
    Handled,
):
    """Conversation history, channel settings and the audit log, memory and sessions; the admin
    console's sign-in sessions and the attempt throttle; whole chats, the HTTP API's keys and the
    answer cache; the platform messages of replies and the platform updates handled.

    Channel settings are never cached, so a change made by one process is what every process
    reads at its next message.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._channel_ids: dict[tuple[str, str], int] = {}

    @property
    def health(self) -> WriteHealth:
        """Whether writes work, for /healthz."""
        return self.db.health

    @property
    def shared(self) -> bool:
        """Whether several processes may use this database at once (PostgreSQL)."""
        return self.db.owner is not None

    @property
    def like(self) -> str:
        """LIKE without case (for ASCII at least) in this store's dialect, for reports."""
        return self.db.like

    async def close(self) -> None:
        """Release the connections (a PostgreSQL store also ends its turns' locks)."""
        await self.db.close()

    def channel_turn(
        self, channel_id: int, reply_row: int | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold the channel's turn lock: one answer at a time per channel, across processes.

        With `reply_row`, also wait (a bounded time) until every earlier reply of the channel
        that another live process still owns has finished, so answers follow row order.
        """
        return self.db.channel_turn(channel_id, reply_row)

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        """Rows of one read-only query (`$n` parameters), for reports such as the console's."""
        return await self.db.fetch(sql, *params)
