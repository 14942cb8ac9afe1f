"""What a test's bot stored, read from whichever store the run uses (`pytest --storage=...`).

Black-box tests check history and the audit log in the database itself. With SQLite that is the
file at `storage.path`; when the run gives each test a PostgreSQL database (PARLEY_STORAGE__URL,
tests/conftest.py) the same query goes there instead. Queries are plain SELECTs written so that
both dialects read them the same (no parameters).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bot.config import StorageSettings
from bot.storage import Store, open_store


def stored_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of `sql` in the test's store: SQLite at `db`, or its PostgreSQL database."""
    url = os.environ.get("PARLEY_STORAGE__URL")
    if not url:
        with sqlite3.connect(db) as conn:
            return conn.execute(sql).fetchall()
    # Callers are synchronous (predicates, helpers) and often inside the test's event loop:
    # the query runs on a loop of its own in a worker thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _postgres_rows(url, sql)).result()


async def _postgres_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


@dataclass
class Database:
    """One database of either kind (`kind`: "sqlite" or "postgresql"): stores opened on it (each
    another process, as far as the store can tell), or raw SQL against it."""

    kind: str
    settings: StorageSettings

    async def open(self) -> Store:
        return await open_store(self.settings)

    async def sql(self, statement: str, *args: Any) -> None:
        """Run one statement outside the store (e.g. to age rows); `$1`-style parameters."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.settings.path)
            try:
                conn.execute(statement.replace("$1", "?"), args)
                conn.commit()
            finally:
                conn.close()
            return
        pg = await asyncpg.connect(self.settings.url.get_secret_value())
        try:
            await pg.execute(statement, *args)
        finally:
            await pg.close()
