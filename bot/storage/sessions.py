"""Sessions: a chat's conversations, "main" (id 0, no row) and those started with /session new.

A chat's new messages go to its current session (`channels.session_id`); the others are kept.
"""

from __future__ import annotations

import time
from typing import Any

from bot.storage.audit import write_audit
from bot.storage.base import MAIN_SESSION, Session, StoredMessage
from bot.storage.database import Database, Tx, storable
from bot.storage.turns import VISIBLE_SQL, columns, stored


def session_list(
    current: int,
    main_created: float,
    named: list[tuple[Any, ...]],
    counts: dict[int, tuple[int, Any]],
) -> list[Session]:
    """ "main" (id 0), then the named sessions, with their counts."""
    out = []
    for session_id, name, created in [(0, MAIN_SESSION, main_created), *named]:
        count, last = counts.get(int(session_id), (0, None))
        out.append(
            Session(
                int(session_id),
                name,
                float(created),
                messages=count,
                last_at=float(last) if last is not None else None,
                current=int(session_id) == current,
            )
        )
    return out


class Sessions:
    """The store's sessions of a chat."""

    db: Database

    async def sessions(self, channel_id: int) -> list[Session]:
        """A chat's conversations: "main" first, then by creation."""
        channel = await self.db.fetchrow(
            "SELECT session_id, created_at FROM channels WHERE id = $1", channel_id
        )
        if channel is None:
            return []
        named = await self.db.fetch(
            "SELECT id, name, created_at FROM sessions WHERE channel_id = $1 ORDER BY id",
            channel_id,
        )
        counted = await self.db.fetch(
            "SELECT session_id, COUNT(*), MAX(created_at) FROM messages"
            f" WHERE channel_id = $1 AND {VISIBLE_SQL} GROUP BY session_id",
            channel_id,
        )
        counts = {int(row[0]): (int(row[1]), row[2]) for row in counted}
        return session_list(int(channel[0]), float(channel[1]), named, counts)

    async def new_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Start a conversation called `name` and make it current; audited. None if the name is
        taken. The conversation before it is kept."""
        if name == MAIN_SESSION:
            return None
        now = time.time()

        async def start(tx: Tx) -> int | None:
            session_id = await tx.fetchval(
                "INSERT INTO sessions (channel_id, name, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (channel_id, name) DO NOTHING RETURNING id",
                channel_id,
                name,
                now,
            )
            if session_id is None:
                return None
            await tx.execute(
                "UPDATE channels SET session_id = $1 WHERE id = $2", session_id, channel_id
            )
            await write_audit(tx, channel_id, actor_id, actor_name, "session.new", None, None, name)
            return int(session_id)

        session_id = await self.db.write(start)
        if session_id is None:
            return None
        return Session(session_id, storable(name), now, messages=0, last_at=None, current=True)

    async def switch_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Make the conversation called `name` current again; audited. None if there is none."""
        session_id = 0
        if name != MAIN_SESSION:
            session_id = await self.db.fetchval(
                "SELECT id FROM sessions WHERE channel_id = $1 AND name = $2", channel_id, name
            )
            if session_id is None:
                return None

        async def switch(tx: Tx) -> None:
            await tx.execute(
                "UPDATE channels SET session_id = $1 WHERE id = $2", session_id, channel_id
            )
            await write_audit(
                tx, channel_id, actor_id, actor_name, "session.resume", None, None, name
            )

        await self.db.write(switch)
        return next(s for s in await self.sessions(channel_id) if s.id == session_id)

    async def session_messages(
        self, channel_id: int, session_id: int, limit: int
    ) -> list[StoredMessage]:
        """The last `limit` visible messages of one of a chat's conversations, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {columns()} FROM messages{self.db.indexed_by('messages_session_recent')}"
            f" WHERE channel_id = $1 AND session_id = $2 AND {VISIBLE_SQL} AND content <> ''"
            " ORDER BY id DESC LIMIT $3",
            channel_id,
            session_id,
            limit,
        )
        return stored(rows[::-1])
