"""The answer cache's rows: complete replies by the hash of exactly what was sent to the LLM.

Shared by every process on PostgreSQL. An expired row is never served; expired rows, and the
oldest beyond the most kept, are deleted whenever an answer is kept.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bot.storage.database import Database, Tx, storable_value


class CachedAnswers:
    """The store's answer cache."""

    db: Database

    async def cached_answer(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The answer kept under `key` and its token counts, unless there is none or it expired."""
        row = await self.db.fetchrow(
            "SELECT answer, usage FROM answer_cache WHERE key = $1 AND expires_at > $2",
            key,
            time.time(),
        )
        if row is None:
            return None
        try:
            usage = json.loads(row[1])
        except ValueError:
            usage = {}
        return str(row[0]), usage if isinstance(usage, dict) else {}

    async def keep_answer(
        self, key: str, answer: str, usage: dict[str, Any], *, ttl_s: float, max_entries: int
    ) -> None:
        """Keep `answer` under `key` for `ttl_s` seconds; drop what expired and the oldest
        answers beyond `max_entries`."""
        now = time.time()

        async def keep(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO answer_cache (key, answer, usage, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET"
                " answer = excluded.answer, usage = excluded.usage,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at",
                key,
                answer,
                json.dumps(storable_value(usage)),
                now,
                now + ttl_s,
            )
            await tx.execute(
                "DELETE FROM answer_cache WHERE expires_at <= $1 OR id <= (SELECT id FROM"
                " answer_cache ORDER BY id DESC LIMIT 1 OFFSET $2)",
                now,
                max_entries,
            )

        await self.db.write(keep)
