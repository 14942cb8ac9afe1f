"""A chat as a whole: found without being created, its current conversation read, deleted.

The HTTP API's sessions are chats of their own: a client lists one's messages and deletes it.
"""

from __future__ import annotations

from bot.storage.audit import write_audit
from bot.storage.base import StoredMessage
from bot.storage.database import Database, Tx
from bot.storage.turns import CURRENT_SESSION, VISIBLE_SQL, columns, stored


class Chats:
    """The store's chats as a whole."""

    db: Database

    async def find_channel(self, platform: str, channel_key: str) -> int | None:
        """The id of a channel, or None when it has never been used (nothing is created)."""
        found = await self.db.fetchval(
            "SELECT id FROM channels WHERE platform = $1 AND channel_key = $2",
            platform,
            channel_key,
        )
        return None if found is None else int(found)

    async def conversation(self, channel_id: int, limit: int) -> list[StoredMessage]:
        """The last `limit` visible messages of the chat's current conversation, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {columns()} FROM messages{self.db.indexed_by('messages_session_recent')}"
            f" WHERE channel_id = $1 AND session_id = {CURRENT_SESSION} AND {VISIBLE_SQL}"
            " AND content <> '' ORDER BY id DESC LIMIT $2",
            channel_id,
            limit,
        )
        return stored(rows[::-1])

    async def delete_chat(self, channel_id: int, *, actor_id: str, actor_name: str) -> int:
        """Delete every message, conversation and setting of a chat (its id stays, unused);
        audited. Returns the messages deleted. What its users asked to remember is theirs: kept."""

        async def delete(tx: Tx) -> int:
            deleted = await tx.execute("DELETE FROM messages WHERE channel_id = $1", channel_id)
            await tx.execute("DELETE FROM sessions WHERE channel_id = $1", channel_id)
            await tx.execute("DELETE FROM channel_settings WHERE channel_id = $1", channel_id)
            await tx.execute("UPDATE channels SET session_id = 0 WHERE id = $1", channel_id)
            await write_audit(tx, channel_id, actor_id, actor_name, "chat.delete")
            return deleted

        return await self.db.write(delete)
