"""Storage: last-N history at 1,000,000 rows over 2,000 channels, PostgreSQL next to SQLite.

Both go through the real stores (`store.history`, `store.start_turn`), so PostgreSQL's numbers
include asyncpg and a loopback round trip. PostgreSQL is a throwaway local 15 cluster with the
default durability settings (fsync on); rows are loaded with generate_series (PostgreSQL) and a
recursive CTE (SQLite), then ANALYZEd.

Run: .venv/bin/python bench/bench_storage.py   (prints a Markdown table for README.md)
BENCH_ROWS=100000 for a quick run.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import StorageSettings
from bot.storage import Store, migrate, open_store
from bot.storage.postgres import migrate as migrate_postgres
from bot.storage.postgres_connect import connect
from tests.fakes.postgres import PostgresServer

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
CHANNELS = 2000
QUERIES = 2000
WRITES = 1000
CONTENT = "message text " * 4


def percentile(samples: list[float], q: int) -> float:
    return (
        statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if q < 100 else max(samples)
    )


async def fill_postgres(url: str) -> float:
    await migrate_postgres(url)
    conn = await connect(url)
    start = time.perf_counter()
    try:
        await conn.execute(
            "INSERT INTO channels (id, platform, channel_key, created_at)"
            f" SELECT c, 'b', c::text, 0 FROM generate_series(1, {CHANNELS}) c"
        )
        await conn.execute(
            "INSERT INTO messages (channel_id, role, author_id, content, status, token_count,"
            " created_at, updated_at)"
            f" SELECT 1 + floor(random() * {CHANNELS})::int,"
            " CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, 'u', $1, 'complete', 12, 0, 0"
            f" FROM generate_series(1, {ROWS}) i",
            CONTENT,
        )
        # The identity sequence did not see explicit channel ids: move it past them.
        await conn.execute("SELECT setval(pg_get_serial_sequence('channels', 'id'), $1)", CHANNELS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - start


async def fill_sqlite(path: str) -> float:
    await migrate(path)
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {CHANNELS})"
        " INSERT INTO channels (id, platform, channel_key, created_at)"
        " SELECT i, 'b', CAST(i AS TEXT), 0 FROM c"
    )
    conn.execute(
        f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {ROWS})"
        " INSERT INTO messages (channel_id, role, author_id, content, status, token_count,"
        " created_at, updated_at)"
        f" SELECT 1 + abs(random()) % {CHANNELS},"
        " CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, 'u', ?, 'complete', 12, 0, 0"
        " FROM r",
        (CONTENT,),
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - start


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Microseconds per call, `count` calls one after another."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


async def measure(store: Store) -> dict[str, list[float]]:
    rng = random.Random(1)

    async def last(n: int) -> None:
        rows = await store.history(rng.randint(1, CHANNELS), 10**12, n)
        assert rows, "every channel has history"

    async def turn() -> None:
        await store.start_turn(
            rng.randint(1, CHANNELS), author_id="u", author_name="U", content=CONTENT,
            token_count=12,
        )  # fmt: skip

    await timed(lambda: last(50), 200)  # warm the caches and the prepared statements
    return {
        "last 50": await timed(lambda: last(50), QUERIES),
        "last 400": await timed(lambda: last(400), QUERIES),
        "start_turn": await timed(turn, WRITES),
    }


def row(name: str, results: dict[str, list[float]], fill_s: float) -> str:
    cells = [name]
    for key in ("last 50", "last 400", "start_turn"):
        samples = results[key]
        cells.append(f"{statistics.median(samples):,.0f} / {percentile(samples, 99):,.0f}")
    cells.append(f"{fill_s:.1f} s")
    return "| " + " | ".join(cells) + " |"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        sqlite_fill = await fill_sqlite(path)
        store = await open_store(StorageSettings(path=path))
        try:
            sqlite = await measure(store)
        finally:
            await store.close()

    server = PostgresServer(durable=True).start()
    try:
        server.psql("CREATE DATABASE bench")
        url = server.url("bench")
        pg_fill = await fill_postgres(url)
        store = await open_store(StorageSettings(url=url))
        try:
            postgres = await measure(store)
        finally:
            await store.close()
    finally:
        server.stop()

    print(f"{ROWS:,} rows over {CHANNELS:,} channels; microseconds, p50 / p99")
    print()
    print("| backend | history last 50 | history last 400 | start_turn (2 rows, commit) | load |")
    print("|---|---|---|---|---|")
    print(row("SQLite (WAL)", sqlite, sqlite_fill))
    print(row("PostgreSQL 15 (asyncpg, loopback)", postgres, pg_fill))
    ratio = statistics.median(postgres["last 50"]) / statistics.median(sqlite["last 50"])
    ratio99 = percentile(postgres["last 50"], 99) / percentile(sqlite["last 50"], 99)
    print(f"| ratio PostgreSQL / SQLite, last 50 | {ratio:.2f} (p50) / {ratio99:.2f} (p99) | | | |")


if __name__ == "__main__":
    asyncio.run(main())
