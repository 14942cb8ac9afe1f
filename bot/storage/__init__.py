"""Storage: conversation history, channel settings and the audit log, on SQLite or PostgreSQL.

`open_store(settings.storage)` picks the backend: `storage.url` (a postgresql:// URL, a secret)
selects PostgreSQL, shared by several bot processes; else `storage.path` is a SQLite file.
One `Store` (bot/storage/store.py) serves both: its SQL is written once, by concern (turns,
audit, memory, sessions, background), against the `Database` seam (bot/storage/database.py),
whose two drivers (sqlite.py, postgres.py) hold what really differs between the dialects.

A channel's turns go one at a time, in row order, across processes: the engine records a turn at
arrival (`start_turn`), then answers it inside `store.channel_turn(channel_id, turn.reply_row)`,
entered where the turn heads its channel's line in this process and before it takes an LLM slot:
`queue.turn(key, target.queued, gate=lambda: store.channel_turn(turn.channel_id, turn.reply_row))`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.storage.base import (
    BACKGROUND,
    BACKGROUND_KEPT,
    MAIN_SESSION,
    PENDING,
    VISIBLE,
    Dialect,
    LocalLocks,
    Memory,
    Migration,
    Role,
    Session,
    Status,
    StoredMessage,
    Turn,
    load_migrations,
)
from bot.storage.sqlite import SQLiteStore, migrate
from bot.storage.store import Store

if TYPE_CHECKING:
    from bot.config import StorageSettings

# The name the engine, the app and the health checks know the store by.
HistoryStore = Store

__all__ = [
    "BACKGROUND",
    "BACKGROUND_KEPT",
    "MAIN_SESSION",
    "PENDING",
    "VISIBLE",
    "Dialect",
    "HistoryStore",
    "LocalLocks",
    "Memory",
    "Migration",
    "Role",
    "SQLiteStore",
    "Session",
    "Status",
    "Store",
    "StoredMessage",
    "Turn",
    "describe_storage",
    "load_migrations",
    "migrate",
    "migrate_storage",
    "open_store",
]


async def open_store(settings: StorageSettings) -> Store:
    """Migrate and open the configured database: PostgreSQL when storage.url is set."""
    url = settings.url.get_secret_value()
    if url:
        from bot.storage.postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=settings.pool_size)
    return await SQLiteStore.open(settings.path)


async def migrate_storage(settings: StorageSettings) -> tuple[int, int]:
    """Apply pending migrations to the configured database; (version before, after)."""
    url = settings.url.get_secret_value()
    if url:
        from bot.storage import postgres

        return await postgres.migrate(url)
    return await migrate(settings.path)


def describe_storage(settings: StorageSettings) -> str:
    """Where the data lives, for messages: the SQLite path, or host:port/db (no password)."""
    url = settings.url.get_secret_value()
    if url:
        from bot.storage.postgres_connect import location

        return f"PostgreSQL {location(url)}"
    return settings.path
