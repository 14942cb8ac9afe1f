"""The platform messages of each reply, so a reply a killed process left half-shown is finished.

The reply streamer reports each part's platform message as soon as the platform returns its id
(`part_shown`), and again once its final text is shown or it is deleted (`part_done`). A part
still open after its process died shows the streaming marker for ever: at start (and, with
several processes, whenever one finds a peer gone) the platform's adapter claims such replies
(`claim_interrupted`) and rewrites their open parts with the text saved and a note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bot.storage.database import Database, Tx


@dataclass(frozen=True, slots=True)
class OpenPart:
    """A platform message of an interrupted reply that may still show the streaming marker."""

    reply_row: int
    part: int  # its place in the reply: 0 for the first message
    message_id: str  # the platform's id of the message
    channel_key: str  # the conversation, as the platform's adapter keys it
    content: str  # the whole reply as saved (its text up to a few seconds before the end)
    last: bool  # the reply's last open part: the one that carries the note


class ReplyParts:
    """The store's record of reply parts and their platform messages."""

    db: Database

    async def part_shown(self, reply_row: int, part: int, message_id: str) -> None:
        """Part `part` of a reply is shown in platform message `message_id`, still open."""
        await self._record(reply_row, part, message_id, done=False)

    async def part_done(self, reply_row: int, part: int, message_id: str) -> None:
        """Part `part` shows its final text in `message_id` (or its message is gone)."""
        await self._record(reply_row, part, message_id, done=True)

    async def _record(self, reply_row: int, part: int, message_id: str, *, done: bool) -> None:
        await self.db.write(
            lambda tx: tx.execute(
                "INSERT INTO reply_parts (reply_row, part, message_id, done)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (reply_row, part) DO UPDATE"
                " SET message_id = excluded.message_id, done = excluded.done",
                reply_row,
                part,
                message_id,
                done,
            )
        )

    async def reply_parts(self, reply_row: int) -> list[tuple[int, str, bool]]:
        """A reply's parts: (part, platform message id, done), in order."""
        rows = await self.db.fetch(
            "SELECT part, message_id, done FROM reply_parts WHERE reply_row = $1 ORDER BY part",
            reply_row,
        )
        return [(int(part), str(message_id), bool(done)) for part, message_id, done in rows]

    async def claim_interrupted(self, platform: str, limit: int = 100) -> list[OpenPart]:
        """Take on up to `limit` interrupted replies of `platform` that still have open parts and
        whose process is gone; their open parts, for the adapter to finish.

        The reply rows become this process's (PostgreSQL: their owner is this store's instance),
        so no other process takes them too; should this one die before finishing them, they are
        abandoned again for the next. SQLite: one process owns the file, so every interrupted
        reply is the last run's.
        """

        async def claim(tx: Tx) -> list[OpenPart]:
            replies = await tx.fetch(
                "UPDATE messages SET owner = $1, updated_at = $2"
                f" WHERE status = 'interrupted' AND {self.db.abandoned} AND id IN"
                " (SELECT m.id FROM messages m JOIN channels c ON c.id = m.channel_id"
                "  WHERE m.status = 'interrupted' AND c.platform = $3"
                f"  AND {self.db.abandoned}"
                "  AND EXISTS (SELECT 1 FROM reply_parts p WHERE p.reply_row = m.id AND NOT p.done)"
                "  ORDER BY m.id LIMIT $4)"
                " RETURNING id, channel_id, content",
                self.db.owner,
                time.time(),
                platform,
                limit,
            )
            found: list[OpenPart] = []
            for reply_row, channel_id, content in sorted(replies):
                channel_key = await tx.fetchval(
                    "SELECT channel_key FROM channels WHERE id = $1", channel_id
                )
                parts = await tx.fetch(
                    "SELECT part, message_id FROM reply_parts WHERE reply_row = $1 AND NOT done"
                    " ORDER BY part",
                    reply_row,
                )
                found += [
                    OpenPart(
                        int(reply_row), int(part), str(message_id), str(channel_key), content,
                        last=index == len(parts) - 1,
                    )
                    for index, (part, message_id) in enumerate(parts)
                ]  # fmt: skip
            return found

        return await self.db.write(claim)
