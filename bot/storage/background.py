"""Group background: messages of a group the bot saw but was not addressed to.

They are context for later prompts, never a turn (status 'background'), and only the newest
BACKGROUND_KEPT of a chat are kept.
"""

from __future__ import annotations

from bot.storage.base import BACKGROUND_KEPT, StoredMessage
from bot.storage.database import Database, Tx
from bot.storage.handled import HandledKey, claim_in
from bot.storage.turns import columns, insert_user_row, session_of_row, stored


class Background:
    """The store's group background."""

    db: Database

    async def record_background(
        self,
        channel_id: int,
        *,
        author_id: str,
        author_name: str,
        content: str,
        token_count: int,
        handled: HandledKey | None = None,
    ) -> int:
        """Store a group message the bot was not addressed to (status 'background'); only the
        newest BACKGROUND_KEPT of a chat are kept. Returns its row id.

        With `handled`, the platform update is claimed in the same transaction (AlreadyHandled
        for a redelivery)."""

        async def record(tx: Tx) -> int:
            if handled is not None:
                await claim_in(tx, handled)
            await self.db.order_rows(tx, channel_id)
            row, _, _ = await insert_user_row(
                tx, channel_id, "background", author_id, author_name, content, token_count
            )
            await tx.execute(
                "DELETE FROM messages WHERE channel_id = $1 AND status = 'background'"
                " AND id <= (SELECT id FROM messages WHERE channel_id = $1"
                " AND status = 'background' ORDER BY id DESC LIMIT 1 OFFSET $2)",
                channel_id,
                BACKGROUND_KEPT,
            )
            return row

        return await self.db.write(record)

    async def background(
        self, channel_id: int, turn_row: int, after_row: int, limit: int
    ) -> list[StoredMessage]:
        """Background messages of `turn_row`'s session between `after_row` and `turn_row`
        (both excluded), newest first."""
        return stored(
            await self.db.fetch(
                f"SELECT {columns()} FROM messages{self.db.indexed_by('messages_background')}"
                " WHERE channel_id = $1 AND status = 'background' AND id < $2 AND id > $3"
                f" AND session_id = {session_of_row('$2', '$1')} ORDER BY id DESC LIMIT $4",
                channel_id,
                turn_row,
                after_row,
                limit,
            )
        )
