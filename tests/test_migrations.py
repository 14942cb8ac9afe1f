"""Storage: versioned migrations, WAL, and the index behind "last N messages of a channel"."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import StorageError
from bot.storage import HistoryStore, load_migrations, migrate

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
        await HistoryStore.open(path)


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


async def test_history_is_in_conversation_order_even_when_turns_queue(tmp_path: Path) -> None:
    store = await HistoryStore.open(str(tmp_path / "p.db"))
    try:
        channel = await store.channel_id("test", "c")
        first = await store.start_turn(channel, author_id="u", author_name="U", content="one",
                                       token_count=1)  # fmt: skip
        # A second message arrives while the first is still being answered.
        second = await store.start_turn(channel, author_id="u", author_name="U", content="two",
                                        token_count=1)  # fmt: skip
        await store.update_message(first.reply_row, content="reply one", status="complete")
        rows = await store.history(channel, second.user_row, 10)
        assert [r.content for r in reversed(rows)] == ["one", "reply one"]
        assert await store.mark_interrupted() == 1  # the second reply was never started
        interrupted = await store.get_message(second.reply_row)
        assert interrupted is not None and interrupted.status == "interrupted"
    finally:
        await store.close()
