"""Memory: facts a user asked the bot to remember, per user of a platform, in every chat."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bot.storage.audit import write_audit
from bot.storage.base import Memory
from bot.storage.database import Database, Tx

_MEMORY_COLUMNS = "t.id, t.content, t.shared, t.token_count, t.created_at"


def _memories(rows: Sequence[Sequence[Any]]) -> list[Memory]:
    return [Memory(int(row[0]), row[1], bool(row[2]), int(row[3]), float(row[4])) for row in rows]


def _one_or_all(
    sql: str, params: tuple[Any, ...], memory_id: int | None
) -> tuple[str, tuple[Any, ...]]:
    """Narrow a statement about a user's facts to one of them, unless `memory_id` is None."""
    if memory_id is None:
        return sql, params
    return f"{sql} AND id = ${len(params) + 1}", (*params, memory_id)


class Memories:
    """The store's memory of users' facts."""

    db: Database

    async def remember(
        self, platform: str, user_id: str, content: str, *, token_count: int, actor_name: str
    ) -> int:
        """Store a fact for a user, private (`shared` false) to begin with. Returns its id."""
        row = await self.db.write(
            lambda tx: tx.fetchval(
                "INSERT INTO memories (platform, user_id, content, token_count, created_at)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                platform,
                user_id,
                content,
                token_count,
                time.time(),
            )
        )
        return int(row)

    async def memories(self, platform: str, user_id: str) -> list[Memory]:
        """A user's facts, oldest first."""
        return _memories(
            await self.db.fetch(
                f"SELECT {_MEMORY_COLUMNS} FROM memories t"
                " WHERE t.platform = $1 AND t.user_id = $2 ORDER BY t.id",
                platform,
                user_id,
            )
        )

    async def forget_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, actor_name: str
    ) -> int:
        """Delete one of a user's facts (None: all of them); audited. Returns how many went."""
        sql, params = _one_or_all(
            "DELETE FROM memories WHERE platform = $1 AND user_id = $2",
            (platform, user_id),
            memory_id,
        )
        which = "all" if memory_id is None else str(memory_id)

        async def forget(tx: Tx) -> int:
            deleted = await tx.execute(sql, *params)
            await write_audit(tx, None, user_id, actor_name, "memory.forget", which)
            return deleted

        return await self.db.write(forget)

    async def share_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, shared: bool
    ) -> int:
        """Let one fact (None: all) be used in groups too, or not; returns how many changed."""
        sql, params = _one_or_all(
            "UPDATE memories SET shared = $1 WHERE platform = $2 AND user_id = $3",
            (shared, platform, user_id),
            memory_id,
        )
        return await self.db.write(lambda tx: tx.execute(sql, *params))

    async def search_memories(
        self,
        platform: str,
        user_id: str,
        terms: Sequence[str],
        *,
        shared_only: bool,
        limit: int,
    ) -> list[Memory]:
        """A user's facts matching any of `terms` (full-text search), most relevant first."""
        rows = await self.db.search(
            "memories",
            terms,
            _MEMORY_COLUMNS,
            "t.platform = $2 AND t.user_id = $3 AND (NOT $4 OR t.shared)",
            (platform, user_id, shared_only),
            limit,
        )
        return _memories(rows)
