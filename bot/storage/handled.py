"""Platform updates handled already, so a redelivery is confirmed and not answered twice.

A platform may deliver the same update again: Telegram when its confirmation was lost with a
killed process, Discord when the gateway replays events after a reconnect, an API client
retrying with its idempotency key. The first delivery claims `(platform, key)`; for a turn the
claim is written in the transaction that stores the message, so "stored" and "handled" never
disagree. Claims are kept for `HANDLED_KEPT_S`, longer than any platform redelivers.
"""

from __future__ import annotations

import time

from bot.errors import AlreadyHandled
from bot.storage.database import Database, Tx

# Telegram keeps an unconfirmed update 24 h (https://core.telegram.org/bots/api#getting-updates),
# the longest any platform redelivers; twice that leaves a margin for clocks and restarts.
HANDLED_KEPT_S = 48 * 3600.0

HandledKey = tuple[str, str]  # (platform, key within the platform)


async def claim_in(tx: Tx, handled: HandledKey) -> None:
    """Claim `handled` within `tx`; AlreadyHandled (and so a rollback) if it was claimed before."""
    platform, key = handled
    claimed = await tx.fetchval(
        "INSERT INTO handled_updates (platform, key, handled_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (platform, key) DO NOTHING RETURNING 1",
        platform,
        key,
        time.time(),
    )
    if claimed is None:
        raise AlreadyHandled(f"{platform} update {key} was handled already")


class Handled:
    """The store's record of handled platform updates."""

    db: Database

    async def claim(self, platform: str, key: str) -> bool:
        """Record that `key` of `platform` is handled; False if it was already (a redelivery)."""

        async def claim(tx: Tx) -> bool:
            try:
                await claim_in(tx, (platform, key))
            except AlreadyHandled:
                return False
            return True

        return await self.db.write(claim)

    async def was_handled(self, platform: str, key: str) -> bool:
        """Whether `key` of `platform` was claimed already (a read: no claim is made)."""
        row = await self.db.fetchrow(
            "SELECT 1 FROM handled_updates WHERE platform = $1 AND key = $2", platform, key
        )
        return row is not None

    async def purge_handled(self, kept_s: float = HANDLED_KEPT_S) -> int:
        """Forget claims older than `kept_s` seconds; how many were forgotten."""
        return await self.db.write(
            lambda tx: tx.execute(
                "DELETE FROM handled_updates WHERE handled_at < $1", time.time() - kept_s
            )
        )
