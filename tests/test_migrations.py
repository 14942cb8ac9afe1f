"""Storage: versioned migrations (SQLite and PostgreSQL), WAL, and the index behind "last N messages
of a channel"."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import StorageError
from bot.storage import SQLiteStore, load_migrations, migrate
from bot.storage import postgres as pg
from bot.storage.postgres_connect import connect
from bot.storage.shared_budget import SharedBudget
from bot.storage.sqlite import SQLiteDatabase, sqlite_sql
from bot.storage.turns import history_sql
from tests.fakes.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = str(tmp_path / "db" / "p.db")
    before, after = await migrate(path)
    assert before == 0
    assert after == len(load_migrations()) >= 1
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"channels", "messages", "channel_settings", "audit_log"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_applying_twice_is_a_no_op(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    await migrate(path)
    conn = sqlite3.connect(path)
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    before, after = await migrate(path)
    assert before == after
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    await migrate(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version 999, newer than this Parley"):
        await SQLiteStore.open(path)


def test_parley_migrate_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_STORAGE__PATH"] = str(tmp_path / "m.db")
    run = [sys.executable, "-m", "bot", "migrate"]
    first = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    second = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert first.returncode == 0 and "migrated from version 0 to" in first.stdout
    assert second.returncode == 0 and "up to date" in second.stdout
    conn = sqlite3.connect(env["PARLEY_STORAGE__PATH"])
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    third = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert third.returncode == 1
    assert "newer than this Parley" in third.stderr and "Traceback" not in third.stderr


async def test_last_n_query_uses_the_index_without_a_sort(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    await migrate(path)
    conn = sqlite3.connect(path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages INDEXED BY messages_channel_recent"
        " WHERE channel_id = 1 AND id < 100 AND status IN ('complete') ORDER BY id DESC LIMIT 20"
    ).fetchall()
    text = " ".join(row[-1] for row in plan)
    assert "messages_channel_recent" in text
    assert "TEMP B-TREE" not in text


def test_each_dialect_has_its_own_complete_set() -> None:
    sqlite_set = load_migrations(dialect="sqlite")
    postgres_set = load_migrations(dialect="postgresql")
    # The two dialects move in step: a schema change lands in both.
    assert [m.name for m in sqlite_set] == [m.name for m in postgres_set]
    assert "CREATE TABLE messages" in sqlite_set[0].sql and "bigint" in postgres_set[0].sql


def test_an_empty_or_missing_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no migrations found"):
        load_migrations(tmp_path)
    with pytest.raises(StorageError, match="no migrations found"):
        load_migrations(tmp_path / "nowhere")


# -- PostgreSQL --------------------------------------------------------------------------------


async def _tables(url: str) -> set[str]:
    conn = await connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}
    finally:
        await conn.close()


async def test_postgres_fresh_database_gets_every_migration_once(postgres_url: str) -> None:
    before, after = await pg.migrate(postgres_url)
    assert (before, after) == (0, len(load_migrations(dialect="postgresql")))
    assert {"channels", "messages", "channel_settings", "audit_log", "schema_version"} <= (
        await _tables(postgres_url)
    )
    assert await pg.migrate(postgres_url) == (after, after)


async def test_a_shared_budget_table_made_at_run_time_is_kept_by_the_migration(
    postgres_url: str,
) -> None:
    # An older Parley created the Discord budget's table itself, outside the migrations.
    await pg.migrate(postgres_url, load_migrations(dialect="postgresql")[:2])
    conn = await connect(postgres_url)
    try:
        await conn.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS parley_shared_budgets"
            " (name text PRIMARY KEY, tat double precision NOT NULL);"
            "INSERT INTO parley_shared_budgets VALUES ('discord:global', 1234.5)"
        )
        assert await pg.migrate(postgres_url) == (2, len(load_migrations(dialect="postgresql")))
        rows = await conn.fetch("SELECT name, tat FROM parley_shared_budgets")
        assert [tuple(row) for row in rows] == [("discord:global", 1234.5)]
    finally:
        await conn.close()
    budget = SharedBudget(postgres_url, "discord:global", 1000.0)
    await budget.open()
    try:
        await budget.acquire()
        assert budget.shared_grants == 1 and budget.local_grants == 0
    finally:
        await budget.close()


async def test_postgres_processes_migrating_at_once_apply_each_migration_once(
    postgres_url: str,
) -> None:
    latest = len(load_migrations(dialect="postgresql"))
    results = await asyncio.gather(*(pg.migrate(postgres_url) for _ in range(4)))
    # The advisory lock lets one apply everything; the others find it done.
    assert sorted(results) == [(0, latest)] + [(latest, latest)] * 3


def test_two_parley_migrate_commands_at_once(postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_STORAGE__URL"] = postgres_url
    run = [sys.executable, "-m", "bot", "migrate"]
    procs = [
        subprocess.Popen(
            run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stdout = sorted(out for out, _ in outputs)
    assert "migrated from version 0 to" in stdout[0] and "up to date" in stdout[1]
    password = postgres_url.split(":")[2].split("@")[0]
    for out, err in outputs:
        assert "PostgreSQL 127.0.0.1:" in out and password not in out + err


def test_postgres_newer_database_is_refused_by_the_command(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    asyncio.run(pg.migrate(postgres_url))
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.psql("INSERT INTO schema_version (version, name) VALUES (999, 'x')", database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_STORAGE__URL"] = postgres_url
    done = subprocess.run(
        [sys.executable, "-m", "bot", "migrate"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "newer than this Parley" in done.stderr and "Traceback" not in done.stderr


async def test_postgres_last_n_query_uses_the_index_without_a_sort(postgres_url: str) -> None:
    await pg.migrate(postgres_url)
    conn = await connect(postgres_url)
    try:
        # 200 busy channels, and channel 201 which went quiet long ago: neither may mean reading
        # (or sorting) far more rows than the 50 asked for.
        await conn.execute(
            "INSERT INTO channels (platform, channel_key, created_at)"
            " SELECT 'test', c::text, 0 FROM generate_series(1, 201) c;"
            "INSERT INTO messages (channel_id, role, author_id, content, status, created_at,"
            " updated_at) SELECT CASE WHEN i < 500 THEN 201 ELSE 1 + i % 200 END, 'user', 'u',"
            " 'text', 'complete', i, i FROM generate_series(1, 30000) i;"
            "ANALYZE messages"
        )
        plans = []
        for channel in (7, 201):
            rows = await conn.fetch(
                "EXPLAIN SELECT id, role, content FROM messages WHERE channel_id = $1"
                " AND id < $2 AND status = ANY($3::text[]) AND content <> ''"
                " ORDER BY id DESC LIMIT 50",
                channel,
                10**9,
                ["complete", "partial", "interrupted"],
            )
            plans.append("\n".join(row[0] for row in rows))
    finally:
        await conn.close()
    for text in plans:
        assert "Index Scan using messages_channel_recent" in text, text
        assert "Sort" not in text, text


async def test_a_sessions_history_query_uses_its_index_without_a_sort(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    db = await SQLiteDatabase.open(path)
    sql = sqlite_sql(history_sql(db))
    await db.close()
    conn = sqlite3.connect(path)
    plan = conn.execute("EXPLAIN QUERY PLAN " + sql, (1, 100, 20)).fetchall()
    text = " ".join(row[-1] for row in plan)
    assert "USING INDEX messages_session_recent (channel_id=? AND session_id=? AND id<?)" in text
    assert "TEMP B-TREE" not in text


async def test_postgres_sessions_history_query_uses_its_index_without_a_sort(
    postgres_url: str,
) -> None:
    store = await pg.PostgresStore.open(postgres_url)
    sql = history_sql(store.db)
    await store.close()
    conn = await connect(postgres_url)
    try:
        # 200 busy channels with two sessions each, and channel 201 which went quiet long ago.
        await conn.execute(
            "INSERT INTO channels (platform, channel_key, created_at)"
            " SELECT 'test', c::text, 0 FROM generate_series(1, 201) c;"
            "INSERT INTO messages (channel_id, session_id, role, author_id, content, status,"
            " created_at, updated_at) SELECT CASE WHEN i < 500 THEN 201 ELSE 1 + i % 200 END,"
            " i % 2, 'user', 'u', 'text', 'complete', i, i FROM generate_series(1, 30000) i;"
            "ANALYZE messages"
        )
        plans = []
        for channel in (7, 201):
            rows = await conn.fetch("EXPLAIN " + sql, channel, 10**9, 50)
            plans.append("\n".join(row[0] for row in rows))
    finally:
        await conn.close()
    for text in plans:
        assert "Index Scan using messages_session_recent" in text, text
        assert "Sort" not in text, text
