"""Channel settings and the audit log.

Settings are stored as JSON and never cached, so a change made by one process is what every
process reads at its next message. Every change, refusal, reset and forget leaves an audit row.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bot.storage.database import Database, Tx, storable_value

AUDIT_COLUMNS = (
    "id", "channel_id", "actor_id", "actor_name", "action", "key", "old_value", "new_value",
    "created_at",
)  # fmt: skip


def json_text(value: Any) -> str:
    """A setting's value as stored: JSON, every string in it storable."""
    return json.dumps(storable_value(value))


async def write_audit(
    tx: Tx, channel_id: int | None, actor_id: str, actor_name: str, action: str, *details: Any
) -> None:
    """One audit row, inside the transaction of what it records. `details`: its key, old value
    and new value, as far as it has them."""
    key, old_value, new_value = (*details, None, None, None)[:3]
    await tx.execute(
        "INSERT INTO audit_log (channel_id, actor_id, actor_name, action, key, old_value,"
        " new_value, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        *(channel_id, actor_id, actor_name, action, key, old_value, new_value, time.time()),
    )


class Audit:
    """The store's channel settings and audit log."""

    db: Database

    async def channel_settings(self, channel_id: int) -> dict[str, Any]:
        """A channel's overrides, read from the database every time (no cache)."""
        rows = await self.db.fetch(
            "SELECT key, value FROM channel_settings WHERE channel_id = $1", channel_id
        )
        return {key: json.loads(value) for key, value in rows}

    async def set_channel_setting(
        self, channel_id: int, key: str, value: Any, *, actor_id: str, actor_name: str, old: Any
    ) -> None:
        """Change one channel setting and write its audit row in the same transaction."""
        encoded = json_text(value)

        async def change(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO channel_settings (channel_id, key, value, updated_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (channel_id, key)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                channel_id,
                key,
                encoded,
                time.time(),
            )
            await write_audit(
                tx, channel_id, actor_id, actor_name, "config.set", key, json_text(old), encoded
            )

        await self.db.write(change)

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
        entry = (channel_id, actor_id, actor_name, action, key, old_value, new_value)
        await self.db.write(lambda tx: write_audit(tx, *entry))

    async def audit_rows(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (all channels when channel_id is None)."""
        sql = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log"
        params: tuple[Any, ...] = ()
        if channel_id is not None:
            sql, params = sql + " WHERE channel_id = $1", (channel_id,)
        rows = await self.db.fetch(sql + " ORDER BY id", *params)
        return [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in rows]

    async def probe_write(self) -> None:
        """Commit a write that leaves nothing behind: an audit row inserted and deleted again.

        It must reach the disk: a rolled-back write never leaves SQLite's page cache, so it
        would succeed on a full disk.
        """

        async def probe(tx: Tx) -> None:
            row = await tx.fetchval(
                "INSERT INTO audit_log (actor_id, action, created_at)"
                " VALUES ('parley', 'probe', 0) RETURNING id"
            )
            await tx.execute("DELETE FROM audit_log WHERE id = $1", row)

        await self.db.write(probe)
