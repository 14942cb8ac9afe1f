"""The admin console's sign-in sessions, kept in the database so every process sharing it knows
them: a session cookie signed in on one process works on every other, and signing out (or a new
password) ends it everywhere.

Rows key on the SHA-256 of the cookie's token (bot/admin/sessions.py): the table holds nothing a
browser could present.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.storage.database import Database, Tx


@dataclass(frozen=True, slots=True)
class ConsoleSessionRow:
    """One signed-in browser as stored: its binding to the password it signed in with, its
    address, its times."""

    credential: str
    remote: str
    created_at: float
    seen_at: float


class ConsoleSessions:
    """The store's admin console sessions."""

    db: Database

    async def add_console_session(
        self, token_hash: str, credential: str, remote: str, *, now: float, keep: int
    ) -> None:
        """Record a new session; beyond `keep` sessions, the least recently seen ones end."""

        async def add(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO console_sessions (token_hash, credential, remote, created_at, seen_at)"
                " VALUES ($1, $2, $3, $4, $4)",
                token_hash,
                credential,
                remote,
                now,
            )
            await tx.execute(
                "DELETE FROM console_sessions WHERE token_hash NOT IN (SELECT token_hash FROM"
                " console_sessions ORDER BY seen_at DESC, token_hash LIMIT $1)",
                keep,
            )

        await self.db.write(add)

    async def console_session(self, token_hash: str) -> ConsoleSessionRow | None:
        """The session of a token's hash, if there is one."""
        row = await self.db.fetchrow(
            "SELECT credential, remote, created_at, seen_at FROM console_sessions"
            " WHERE token_hash = $1",
            token_hash,
        )
        if row is None:
            return None
        return ConsoleSessionRow(row[0], row[1], float(row[2]), float(row[3]))

    async def touch_console_session(self, token_hash: str, now: float) -> None:
        """The session was used at `now`."""
        await self.db.write(
            lambda tx: tx.execute(
                "UPDATE console_sessions SET seen_at = $2 WHERE token_hash = $1", token_hash, now
            )
        )

    async def end_console_session(self, token_hash: str) -> None:
        """End one session (signed out, expired, or its password changed)."""
        await self.db.write(
            lambda tx: tx.execute("DELETE FROM console_sessions WHERE token_hash = $1", token_hash)
        )

    async def end_stale_console_sessions(self, *, seen_before: float, created_before: float) -> int:
        """End every session idle since `seen_before` or signed in before `created_before`."""
        return await self.db.write(
            lambda tx: tx.execute(
                "DELETE FROM console_sessions WHERE seen_at < $1 OR created_at < $2",
                seen_before,
                created_before,
            )
        )
