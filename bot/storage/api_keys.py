"""The HTTP API's stored keys: a name and the SHA-256 of the key (the key itself is never kept).

`parley api-key create NAME` adds one; the API reads them all to check a presented key.
"""

from __future__ import annotations

import time

from bot.storage.audit import write_audit
from bot.storage.database import Database, Tx

# Who the audit log names for a key made on the command line.
CLI_ACTOR = "cli"


class ApiKeys:
    """The store's API keys."""

    db: Database

    async def add_api_key(self, name: str, key_hash: str) -> bool:
        """Keep a new key's hash under `name`; audited. False when the name is taken."""

        async def add(tx: Tx) -> bool:
            added = await tx.fetchval(
                "INSERT INTO api_keys (name, key_hash, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                name,
                key_hash,
                time.time(),
            )
            if added is None:
                return False
            await write_audit(tx, None, CLI_ACTOR, "", "api_key.create", name)
            return True

        return await self.db.write(add)

    async def api_key_hashes(self) -> list[tuple[str, str]]:
        """Every stored key as (name, SHA-256 hex of the key), by name."""
        rows = await self.db.fetch("SELECT name, key_hash FROM api_keys ORDER BY name")
        return [(str(name), str(key_hash)) for name, key_hash in rows]
