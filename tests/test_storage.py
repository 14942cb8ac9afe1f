"""The store contract on both backends (SQLite and a real PostgreSQL), and what several processes
sharing one PostgreSQL rely on: one turn at a time per channel in row order, settings read fresh,
one audit log, pending replies of dead processes (and only theirs) marked interrupted.

"Another process" is another store instance on the same database (its own pool, its own session
and instance number), or a real Python process where a kill -9 matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.config import StorageSettings
from bot.storage import Store, StoredMessage
from bot.storage import postgres as pg_module
from bot.storage.postgres import PostgresStore
from bot.storage.postgres_connect import NS_INSTANCE
from bot.storage.postgres_turns import LIVE_INSTANCES
from tests.conftest import make_settings, message
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.parley_process import ROOT
from tests.fakes.stored import Database
from tests.fakes.targets import RecordingTarget


@pytest.fixture
def pg(postgres_url: str) -> Database:
    return Database("postgresql", StorageSettings(url=postgres_url))


@pytest.fixture
async def pg_store(pg: Database) -> AsyncIterator[PostgresStore]:
    opened = await pg.open()
    assert isinstance(opened, PostgresStore)
    try:
        yield opened
    finally:
        await opened.close()


async def two_stores(database: Database) -> tuple[Store, Store]:
    return await database.open(), await database.open()


async def turn_of(store: Store, channel: int, text: str, user: str = "u") -> Any:
    return await store.start_turn(
        channel, author_id=user, author_name=user.upper(), content=text, token_count=len(text)
    )


def contents(rows: list[StoredMessage]) -> list[str]:
    """Oldest first, as a prompt reads them."""
    return [row.content for row in reversed(rows)]


# -- the contract, on both backends --------------------------------------------------------------


async def test_channel_ids_are_stable_and_per_platform(store: Store) -> None:
    first = await store.channel_id("telegram", "42")
    assert await store.channel_id("telegram", "42") == first
    assert (
        len({first, await store.channel_id("discord", "42"), await store.channel_id("x", "y")}) == 3
    )


async def test_a_turn_reserves_the_reply_row_right_after_the_users(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    turn = await store.start_turn(
        channel, author_id="u1", author_name="Ann", content="hello", token_count=2, bot_id="b"
    )
    assert turn.channel_id == channel and turn.reply_row > turn.user_row
    user = await store.get_message(turn.user_row)
    reply = await store.get_message(turn.reply_row)
    assert user is not None and reply is not None
    assert (user.role, user.author_id, user.author_name, user.content, user.status) == (
        "user", "u1", "Ann", "hello", "complete"
    )  # fmt: skip
    assert user.token_count == 2 and user.created_at > 0
    assert (reply.role, reply.author_id, reply.content, reply.status) == (
        "assistant",
        "b",
        "",
        "queued",
    )
    assert await store.get_message(10**9) is None


async def test_update_message_changes_only_what_it_is_given(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    turn = await turn_of(store, channel, "q")
    await store.update_message(turn.reply_row, content="partial answer")
    await store.update_message(turn.reply_row, status="streaming")
    await store.update_message(turn.reply_row, token_count=7)
    reply = await store.get_message(turn.reply_row)
    assert reply is not None
    assert (reply.content, reply.status, reply.token_count) == ("partial answer", "streaming", 7)


async def test_history_shows_only_what_the_user_saw_newest_first(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    other = await store.channel_id("test", "other")
    statuses = ["complete", "partial", "interrupted", "failed", "queued", "streaming"]
    for status in statuses:
        turn = await turn_of(store, channel, f"ask {status}")
        await store.update_message(turn.reply_row, content=f"re {status}", status=status)  # type: ignore[arg-type]
    empty = await turn_of(store, channel, "ask empty")
    await store.update_message(empty.reply_row, status="complete")  # no text: nothing to show
    await store.record_failed_input(channel, author_id="u", author_name="U", note="[voice note]")
    await turn_of(store, other, "elsewhere")
    last = await turn_of(store, channel, "now")

    rows = await store.history(channel, last.user_row, 100)
    assert [row.id for row in rows] == sorted((row.id for row in rows), reverse=True)
    assert contents(rows) == [
        "ask complete", "re complete", "ask partial", "re partial", "ask interrupted",
        "re interrupted", "ask failed", "ask queued", "ask streaming", "ask empty",
    ]  # fmt: skip
    assert contents(await store.history(channel, last.user_row, 2)) == [
        "ask streaming",
        "ask empty",
    ]
    assert await store.history(channel, rows[-1].id, 10) == []


async def test_a_failed_input_is_recorded_but_never_shown(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    row = await store.record_failed_input(
        channel, author_id="u", author_name="U", note="[voice note: too long]"
    )
    stored = await store.get_message(row)
    assert stored is not None and (stored.status, stored.role) == ("failed", "user")
    assert await store.history(channel, 10**9, 10) == []


async def test_reset_clears_one_channel_keeps_its_settings_and_is_audited(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    other = await store.channel_id("test", "d")
    await store.set_channel_setting(
        channel, "persona", "pirate", actor_id="a", actor_name="A", old="default"
    )
    turn = await turn_of(store, channel, "one")
    await store.update_message(turn.reply_row, content="re one", status="complete")
    await turn_of(store, other, "stays")
    assert await store.clear_channel(channel, actor_id="a", actor_name="A") == 2
    assert await store.history(channel, 10**9, 10) == []
    assert contents(await store.history(other, 10**9, 10)) == ["stays"]
    assert await store.channel_settings(channel) == {"persona": "pirate"}
    assert [row["action"] for row in await store.audit_rows(channel)] == ["config.set", "reset"]


async def test_forget_deletes_one_users_messages_on_one_platform(store: Store) -> None:
    tg = await store.channel_id("telegram", "1")
    dc = await store.channel_id("discord", "1")
    mine = await turn_of(store, tg, "mine", user="me")
    await store.update_message(mine.reply_row, content="re mine", status="complete")
    await turn_of(store, tg, "theirs", user="them")
    await turn_of(store, dc, "mine on discord", user="me")
    assert await store.forget_author("telegram", "me", actor_name="Me") == 1
    assert contents(await store.history(tg, 10**9, 10)) == ["re mine", "theirs"]
    assert contents(await store.history(dc, 10**9, 10)) == ["mine on discord"]
    (row,) = await store.audit_rows()
    assert (row["action"], row["actor_id"], row["channel_id"]) == ("forget", "me", None)


async def test_settings_round_trip_as_json_and_each_change_is_audited(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    assert await store.channel_settings(channel) == {}
    values: dict[str, Any] = {"temperature": 1.25, "max_tokens": 64, "persona": "ünïcode ✓"}
    for key, value in values.items():
        await store.set_channel_setting(channel, key, value, actor_id="a", actor_name="A", old=None)
    await store.set_channel_setting(channel, "max_tokens", 99, actor_id="b", actor_name="B", old=64)
    assert await store.channel_settings(channel) == {**values, "max_tokens": 99}
    last = (await store.audit_rows(channel))[-1]
    assert (last["action"], last["key"], last["actor_name"]) == ("config.set", "max_tokens", "B")
    assert (json.loads(last["old_value"]), json.loads(last["new_value"])) == (64, 99)


async def test_audit_rows_oldest_first_and_per_channel(store: Store) -> None:
    c1 = await store.channel_id("test", "1")
    c2 = await store.channel_id("test", "2")
    await store.audit(c1, actor_id="u", actor_name="U", action="config.refused", key="persona")
    await store.audit(c2, actor_id="v", actor_name="V", action="config.refused", new_value="x")
    await store.audit(None, actor_id="w", actor_name="W", action="note")
    everything = await store.audit_rows()
    assert [row["actor_id"] for row in everything] == ["u", "v", "w"]
    assert set(everything[0]) == {
        "id", "channel_id", "actor_id", "actor_name", "action", "key", "old_value", "new_value",
        "created_at",
    }  # fmt: skip
    assert [row["actor_id"] for row in await store.audit_rows(c2)] == ["v"]
    assert everything[1]["new_value"] == "x" and everything[0]["key"] == "persona"


async def test_text_neither_database_takes_is_stored_the_same_way_on_both(store: Store) -> None:
    # PostgreSQL refuses NUL in text; neither driver can encode a lone surrogate in UTF-8. Both
    # become U+FFFD before any write; a surrogate pair becomes the character it stands for.
    channel = await store.channel_id("test\x00", "c\ud800")
    assert await store.channel_id("test\x00", "c\ud800") == channel
    turn = await store.start_turn(
        channel, author_id="u\x00", author_name="Ann\udc80", content="a\x00b\ud800c", token_count=1
    )
    await store.update_message(turn.reply_row, content="smile \ud83d\ude00", status="complete")
    failed = await store.record_failed_input(
        channel, author_id="u", author_name="U", note="[voice \x00]"
    )
    heard = await store.record_background(
        channel, author_id="b", author_name="B\x00", content="psst\udfff", token_count=1
    )
    user, reply = await store.get_message(turn.user_row), await store.get_message(turn.reply_row)
    assert user is not None and reply is not None
    assert (user.author_id, user.author_name, user.content) == (
        "u\ufffd",
        "Ann\ufffd",
        "a\ufffdb\ufffdc",
    )
    assert reply.content == "smile \U0001f600"
    assert contents(await store.history(channel, 10**9, 10)) == ["a\ufffdb\ufffdc", reply.content]
    assert [m.content for m in await store.background(channel, 10**9, 0, 5)] == ["psst\ufffd"]
    assert (await store.get_message(failed)).content == "[voice \ufffd]"  # type: ignore[union-attr]
    assert heard > failed
    # Reads take such text too: searches and lookups by name find what was stored.
    found = await store.search_history(channel, 10**9, 10**9, ["smile", "\x00", "\ud800"], 5)
    assert [m.id for m in found] == [reply.id]
    await store.set_channel_setting(
        channel, "persona", ["pi\x00rate", {"k\ud800": "\x00"}], actor_id="a", actor_name="A",
        old="old\x00",
    )  # fmt: skip
    assert await store.channel_settings(channel) == {
        "persona": ["pi\ufffdrate", {"k\ufffd": "\ufffd"}]
    }
    await store.audit(channel, actor_id="x\x00", actor_name="X", action="note", key="k\ud800")
    *_, changed, noted = await store.audit_rows(channel)
    assert json.loads(changed["old_value"]) == "old\ufffd"
    assert (noted["actor_id"], noted["key"]) == ("x\ufffd", "k\ufffd")
    await store.remember("telegram", "ann\x00", "I like \x00 tea", token_count=3, actor_name="A")
    (fact,) = await store.memories("telegram", "ann\x00")
    assert fact.content == "I like \ufffd tea"
    for user_id in ("ann\x00", "ann\ufffd"):
        found_facts = await store.search_memories(
            "telegram", user_id, ["tea", "\udc80"], shared_only=False, limit=5
        )
        assert [m.id for m in found_facts] == [fact.id]
    session = await store.new_session(channel, "work\x00", actor_id="a", actor_name="A")
    assert session is not None and session.name == "work\ufffd"
    resumed = await store.switch_session(channel, "work\x00", actor_id="a", actor_name="A")
    assert resumed is not None and resumed.id == session.id


async def test_mark_interrupted_takes_what_a_crash_left_pending(database: Database) -> None:
    crashed = await database.open()
    channel = await crashed.channel_id("test", "c")
    queued = await turn_of(crashed, channel, "one")
    streaming = await turn_of(crashed, channel, "two")
    done = await turn_of(crashed, channel, "three")
    await crashed.update_message(streaming.reply_row, content="half", status="streaming")
    await crashed.update_message(done.reply_row, content="full", status="complete")
    await crashed.close()
    restarted = await database.open()
    try:
        assert await restarted.mark_interrupted() == 2
        statuses = [
            (await restarted.get_message(t.reply_row)).status  # type: ignore[union-attr]
            for t in (queued, streaming, done)
        ]
        assert statuses == ["interrupted", "interrupted", "complete"]
        assert await restarted.mark_interrupted() == 0
        # What the user saw of the broken reply stays in the prompt.
        assert "half" in contents(await restarted.history(channel, 10**9, 10))
    finally:
        await restarted.close()


async def test_retention_purges_old_messages_only(store: Store, database: Database) -> None:
    channel = await store.channel_id("test", "c")
    old = await turn_of(store, channel, "old")
    await store.update_message(old.reply_row, content="old reply", status="complete")
    await database.sql("UPDATE messages SET created_at = $1", 1000.0)
    await turn_of(store, channel, "new")
    assert await store.purge_older_than(7) == 2
    assert contents(await store.history(channel, 10**9, 10)) == ["new"]
    assert await store.purge_older_than(7) == 0


async def test_history_keeps_conversation_order_when_turns_queue(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    first = await turn_of(store, channel, "one")
    # A second message arrives while the first is still being answered.
    second = await turn_of(store, channel, "two")
    await store.update_message(first.reply_row, content="reply one", status="complete")
    assert contents(await store.history(channel, second.user_row, 10)) == ["one", "reply one"]


async def test_channel_turns_never_overlap(database: Database) -> None:
    # On SQLite one store (one process); on PostgreSQL three stores, as three processes would.
    stores = (
        [await database.open()]
        if database.kind == "sqlite"
        else [await database.open() for _ in range(3)]
    )
    channel = await stores[0].channel_id("test", "c")
    inside: list[int] = []
    most = 0

    async def turns(store: Store, worker: int) -> None:
        nonlocal most
        for _ in range(3):
            async with store.channel_turn(channel):
                inside.append(worker)
                most = max(most, len(inside))
                for _ in range(5):
                    await asyncio.sleep(0.005)
                inside.remove(worker)

    try:
        await asyncio.gather(*(turns(stores[i % len(stores)], i) for i in range(6)))
    finally:
        for opened in stores:
            await opened.close()
    assert most == 1


async def test_a_newer_database_is_refused(database: Database) -> None:
    from bot.errors import StorageError

    opened = await database.open()  # creates the schema
    await opened.close()
    if database.kind == "sqlite":
        await database.sql("PRAGMA user_version = 999")
    else:
        await database.sql("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
    with pytest.raises(StorageError, match="schema version 999, newer than this Parley"):
        await database.open()


# -- several processes on one PostgreSQL ----------------------------------------------------------


async def test_processes_agree_on_channel_ids(pg: Database) -> None:
    a, b = await two_stores(pg)
    try:
        ids = await asyncio.gather(
            *(s.channel_id("telegram", str(n)) for n in range(20) for s in (a, b))
        )
        assert ids[0::2] == ids[1::2] and len(set(ids)) == 20
    finally:
        await a.close()
        await b.close()


async def test_settings_changed_in_one_process_apply_in_the_other_at_once(pg: Database) -> None:
    a, b = await two_stores(pg)
    try:
        channel = await a.channel_id("telegram", "7")
        assert await b.channel_settings(await b.channel_id("telegram", "7")) == {}
        await a.set_channel_setting(
            channel, "persona", "pirate", actor_id="x", actor_name="X", old=None
        )
        assert await b.channel_settings(channel) == {"persona": "pirate"}
        await b.set_channel_setting(
            channel, "persona", "coder", actor_id="y", actor_name="Y", old="pirate"
        )
        assert await a.channel_settings(channel) == {"persona": "coder"}
        # One audit log: both changes, in order, seen from either process.
        seen = [(r["actor_id"], r["new_value"]) for r in await a.audit_rows(channel)]
        assert (
            seen
            == [("x", '"pirate"'), ("y", '"coder"')]
            == [(r["actor_id"], r["new_value"]) for r in await b.audit_rows(channel)]
        )
    finally:
        await a.close()
        await b.close()


async def test_a_later_turn_in_another_process_waits_for_the_earlier_one(pg: Database) -> None:
    a, b = await two_stores(pg)
    events: list[str] = []
    seen: dict[str, list[str]] = {}

    async def answer(store: Store, turn: Any, text: str) -> None:
        async with store.channel_turn(turn.channel_id, turn.reply_row):
            events.append(f"start {text}")
            seen[text] = contents(await store.history(turn.channel_id, turn.user_row, 10))
            await store.update_message(turn.reply_row, content=f"re {text}", status="complete")
            events.append(f"end {text}")

    try:
        channel = await a.channel_id("test", "c")
        first = await turn_of(a, channel, "one")
        second = await turn_of(b, channel, "two")
        # The later turn asks first; it must not answer while the earlier one is pending.
        later = asyncio.create_task(answer(b, second, "two"))
        await asyncio.sleep(1.0)
        assert events == []
        await answer(a, first, "one")
        await asyncio.wait_for(later, 30)
        assert events == ["start one", "end one", "start two", "end two"]
        assert seen["two"] == ["one", "re one"]
    finally:
        await a.close()
        await b.close()


async def test_a_dead_processs_pending_turn_does_not_block_the_channel(pg: Database) -> None:
    a, b = await two_stores(pg)
    try:
        channel = await a.channel_id("test", "c")
        first = await turn_of(a, channel, "one")
        second = await turn_of(b, channel, "two")
        waiting = asyncio.create_task(_enter(b, second))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await a.close()  # the process is gone: its instance lock with it
        await asyncio.wait_for(waiting, 30)
        gone = await b.get_message(first.reply_row)
        assert gone is not None and gone.status == "interrupted"
    finally:
        await b.close()


async def _enter(store: Store, turn: Any) -> None:
    async with store.channel_turn(turn.channel_id, turn.reply_row):
        pass


async def test_mark_interrupted_leaves_running_processes_replies_alone(pg: Database) -> None:
    running = await pg.open()
    try:
        channel = await running.channel_id("test", "c")
        turn = await turn_of(running, channel, "still being answered")
        restarted = await pg.open()  # another process starting up
        try:
            assert await restarted.mark_interrupted() == 0
            reply = await restarted.get_message(turn.reply_row)
            assert reply is not None and reply.status == "queued"
        finally:
            await restarted.close()
    finally:
        await running.close()


_HOLDER = """
import asyncio, sys
from bot.config import StorageSettings
from bot.storage import open_store

async def main():
    store = await open_store(StorageSettings(url=sys.argv[1]))
    channel = await store.channel_id("test", "c")
    turn = await store.start_turn(channel, author_id="u", author_name="U", content="one",
                                  token_count=1)
    async with store.channel_turn(channel, turn.reply_row):
        print(turn.reply_row, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_turn_killed_with_its_process_frees_the_channel(pg: Database) -> None:
    url = pg.settings.url.get_secret_value()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, url, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert holder.stdout is not None
    held_row = int(await asyncio.wait_for(holder.stdout.readline(), 60))
    store = await pg.open()
    try:
        channel = await store.channel_id("test", "c")
        second = await turn_of(store, channel, "two")
        waiting = asyncio.create_task(_enter(store, second))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the other process answers its turn
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        await asyncio.wait_for(waiting, 30)
        killed = await store.get_message(held_row)
        assert killed is not None and killed.status == "interrupted"
    finally:
        await store.close()
        if holder.returncode is None:
            holder.kill()


async def test_two_engines_share_history_and_settings(
    pg: Database, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    from bot.app import ParleyApp

    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url},
        storage={"url": pg.settings.url.get_secret_value()},
    )
    async with ParleyApp(settings, speech=False) as one, ParleyApp(settings, speech=False) as two:
        admin = message(is_admin=True)
        assert "is now" in await one.commands.run(admin, "config", "set system_prompt ZEBRA-42")
        await two.engine.handle(message("What is up?"), RecordingTarget())
        assert "ZEBRA-42" in json.dumps(fake_llm.requests[-1])
        await one.engine.handle(message("And now?"), RecordingTarget())
        assert "What is up?" in json.dumps(fake_llm.requests[-1])  # the other process's turn
        audit = await two.store.audit_rows()
        assert [row["key"] for row in audit] == ["system_prompt"]


async def test_the_store_reports_a_closed_pool_as_a_storage_error(pg: Database) -> None:
    from bot.errors import StorageError
    from bot.health import database_check

    store = await pg.open()
    assert isinstance(store, PostgresStore)
    check = database_check(store)
    assert await check() is None
    await store.close()
    with pytest.raises(StorageError, match=r"PostgreSQL at 127\.0\.0\.1:\d+/t"):
        await store.get_message(1)
    problem = await check()
    assert problem is not None and "PostgreSQL at" in problem


async def _instance_alive(store: PostgresStore, url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        live = await conn.fetch(LIVE_INSTANCES)
        return store.instance in {row[0] for row in live}
    finally:
        await conn.close()


async def test_a_lost_session_is_won_back_with_the_same_instance(
    pg_store: PostgresStore, pg: Database
) -> None:
    url = pg.settings.url.get_secret_value()
    channel = await pg_store.channel_id("test", "c")
    turn = await turn_of(pg_store, channel, "pending across the outage")
    conn = await asyncpg.connect(url)
    try:
        # Like a restart of PostgreSQL or a dropped network path, for this one session.
        await conn.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            f" AND classid = {NS_INSTANCE} AND objid = $1",
            pg_store.instance,
        )
    finally:
        await conn.close()
    for _ in range(100):
        if await _instance_alive(pg_store, url):
            break
        await asyncio.sleep(0.1)
    assert await _instance_alive(pg_store, url)
    other = await pg.open()
    try:
        assert await other.mark_interrupted() == 0  # still ours: we are alive
    finally:
        await other.close()
    async with pg_store.channel_turn(channel, turn.reply_row):
        await pg_store.update_message(turn.reply_row, content="answered", status="complete")
    assert contents(await pg_store.history(channel, 10**9, 5))[-1] == "answered"


# -- memory, sessions, group background, on both backends ------------------------------


async def test_memories_are_per_user_and_platform_listed_forgotten_and_shared(store: Store) -> None:
    first = await store.remember(
        "telegram", "ann", "I play the cello", token_count=4, actor_name="A"
    )
    await store.remember("telegram", "ann", "I live in Lyon", token_count=4, actor_name="A")
    await store.remember("telegram", "bob", "I am Bob", token_count=3, actor_name="B")
    await store.remember("discord", "ann", "another Ann", token_count=2, actor_name="A")
    facts = await store.memories("telegram", "ann")
    assert [(m.content, m.shared, m.token_count) for m in facts] == [
        ("I play the cello", False, 4),
        ("I live in Lyon", False, 4),
    ]
    assert facts[0].id == first and facts[0].created_at > 0
    # Nobody forgets or shares someone else's fact, whatever id they name.
    assert await store.forget_memories("telegram", "bob", first, actor_name="B") == 0
    assert await store.share_memories("telegram", "bob", first, shared=True) == 0
    assert await store.share_memories("telegram", "ann", first, shared=True) == 1
    assert [m.shared for m in await store.memories("telegram", "ann")] == [True, False]
    assert await store.share_memories("telegram", "ann", None, shared=False) == 2
    assert await store.forget_memories("telegram", "ann", first, actor_name="A") == 1
    assert [m.content for m in await store.memories("telegram", "ann")] == ["I live in Lyon"]
    assert await store.forget_memories("telegram", "ann", None, actor_name="A") == 1
    assert await store.memories("telegram", "ann") == []
    assert [m.content for m in await store.memories("telegram", "bob")] == ["I am Bob"]
    assert [m.content for m in await store.memories("discord", "ann")] == ["another Ann"]
    audit = [(r["action"], r["actor_id"], r["key"]) for r in await store.audit_rows()]
    assert audit == [
        ("memory.forget", "bob", str(first)),
        ("memory.forget", "ann", str(first)),
        ("memory.forget", "ann", "all"),
    ]


async def test_memory_search_ranks_matches_stems_words_and_keeps_to_its_owner(
    store: Store,
) -> None:
    facts = {
        "cat": "My cat is called Mimi",
        "both": "My cats Mimi and Tom sleep on the sofa",
        "lyon": "I live in Lyon",
    }
    ids = {
        key: await store.remember("telegram", "ann", text, token_count=5, actor_name="A")
        for key, text in facts.items()
    }
    await store.remember("telegram", "bob", "Bob's cat Mimi", token_count=3, actor_name="B")
    await store.share_memories("telegram", "ann", ids["lyon"], shared=True)

    async def search(*terms: str, shared_only: bool = False) -> list[int]:
        found = await store.search_memories(
            "telegram", "ann", terms, shared_only=shared_only, limit=10
        )
        return [memory.id for memory in found]

    assert await search("tom", "mimi") == [ids["both"], ids["cat"]]  # two words beat one
    assert set(await search("cat")) == {ids["cat"], ids["both"]}  # "cats" is found by "cat"
    assert await search("lyon") == [ids["lyon"]]
    assert await search("cat", shared_only=True) == []  # not shared: not for groups
    assert await search("lyon", shared_only=True) == [ids["lyon"]]
    assert await search("paris") == []
    assert await search() == []
    # Words are data, never query syntax.
    assert await search('"', "OR", "NEAR(", "*", "zz:*", "a&b|!c") == []
    assert await search('"tom"', "tom:*") == [ids["both"]]


async def test_sessions_keep_each_conversation_apart(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    other = await store.channel_id("test", "d")
    old = await turn_of(store, channel, "about Oslo")
    await store.update_message(old.reply_row, content="re Oslo", status="complete")
    work = await store.new_session(channel, "work", actor_id="a", actor_name="A")
    assert work is not None and (work.name, work.current, work.messages) == ("work", True, 0)
    assert await store.new_session(channel, "work", actor_id="a", actor_name="A") is None
    assert await store.new_session(channel, "main", actor_id="a", actor_name="A") is None
    assert await store.history(channel, 10**9, 10) == []  # the new conversation is empty
    new = await turn_of(store, channel, "about work")
    assert contents(await store.history(channel, new.user_row, 10)) == []
    assert contents(await store.history(channel, 10**9, 10)) == ["about work"]
    # A turn queued before a switch keeps to its own conversation, reply included.
    assert contents(await store.history(channel, old.reply_row, 10)) == ["about Oslo"]
    sessions = await store.sessions(channel)
    assert [(s.id, s.name, s.messages, s.current) for s in sessions] == [
        (0, "main", 2, False),
        (work.id, "work", 1, True),
    ]
    assert sessions[1].last_at is not None and sessions[0].created_at > 0
    main = await store.switch_session(channel, "main", actor_id="a", actor_name="A")
    assert main is not None and (main.name, main.current, main.messages) == ("main", True, 2)
    assert await store.switch_session(channel, "nope", actor_id="a", actor_name="A") is None
    assert contents(await store.history(channel, 10**9, 10)) == ["about Oslo", "re Oslo"]
    # /reset clears the current conversation only.
    assert await store.clear_channel(channel, actor_id="a", actor_name="A") == 2
    assert [s.messages for s in await store.sessions(channel)] == [0, 1]
    assert [m.content for m in await store.session_messages(channel, work.id, 10)] == ["about work"]
    assert [s.name for s in await store.sessions(other)] == ["main"]  # each chat its own
    actions = [(r["action"], r["new_value"]) for r in await store.audit_rows(channel)]
    assert actions == [("session.new", "work"), ("session.resume", "main"), ("reset", None)]


async def test_session_messages_are_the_newest_visible_ones_oldest_first(store: Store) -> None:
    channel = await store.channel_id("test", "c")
    for n in range(4):
        turn = await turn_of(store, channel, f"q{n}")
        await store.update_message(turn.reply_row, content=f"a{n}", status="complete")
    await store.record_failed_input(channel, author_id="u", author_name="U", note="[voice]")
    rows = await store.session_messages(channel, 0, 3)
    assert [row.content for row in rows] == ["a2", "q3", "a3"]


async def test_background_is_kept_apart_from_turns_and_pruned(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.storage import background as background_module

    monkeypatch.setattr(background_module, "BACKGROUND_KEPT", 3)
    channel = await store.channel_id("test", "group")

    async def chatter(text: str, author: str = "bob") -> int:
        return await store.record_background(
            channel, author_id=author, author_name=author.title(), content=text, token_count=2
        )

    first = await chatter("before anything")
    turn = await turn_of(store, channel, "hello bot")
    await store.update_message(turn.reply_row, content="hello human", status="complete")
    await chatter("my cat is called Mimi")
    await chatter("pizza tonight?", author="cy")
    now = await turn_of(store, channel, "what did Bob say?")
    stored = await store.get_message(first)
    assert stored is not None and (stored.status, stored.role) == ("background", "user")
    # Never a turn: not in the history, not marked interrupted, not found as an older turn.
    assert contents(await store.history(channel, now.user_row, 10)) == ["hello bot", "hello human"]
    assert await store.mark_interrupted() >= 0
    assert (await store.get_message(first)).status == "background"  # type: ignore[union-attr]
    assert await store.search_history(channel, now.user_row, now.user_row, ["mimi"], 5) == []
    rows = await store.background(channel, now.user_row, turn.user_row, 10)
    assert [(r.author_name, r.content) for r in rows] == [
        ("Cy", "pizza tonight?"),
        ("Bob", "my cat is called Mimi"),
    ]
    assert [r.content for r in await store.background(channel, now.user_row, 0, 1)] == [
        "pizza tonight?"
    ]
    # Only the newest BACKGROUND_KEPT of a chat stay.
    await chatter("one more")
    assert await store.get_message(first) is None
    kept = await store.background(channel, 10**9, 0, 10)
    assert [r.content for r in kept] == ["one more", "pizza tonight?", "my cat is called Mimi"]
    # A new conversation has no background yet; /forget deletes someone's background too.
    await store.new_session(channel, "s2", actor_id="a", actor_name="A")
    assert await store.background(channel, 10**9, 0, 10) == []
    await store.switch_session(channel, "main", actor_id="a", actor_name="A")
    await store.forget_author("test", "bob", actor_name="Bob")
    assert [r.content for r in await store.background(channel, 10**9, 0, 10)] == ["pizza tonight?"]


async def test_search_history_finds_older_visible_turns_of_the_same_conversation(
    store: Store,
) -> None:
    channel = await store.channel_id("test", "c")
    other = await store.channel_id("test", "d")
    asked = await turn_of(store, channel, "We should sail to the islands")
    await store.update_message(asked.reply_row, content="Sailing sounds lovely", status="complete")
    failed = await turn_of(store, channel, "sailing lessons?")
    await store.update_message(failed.reply_row, content="sail sail sail", status="failed")
    await turn_of(store, other, "sail elsewhere")
    middle = await turn_of(store, channel, "something else entirely")
    now = await turn_of(store, channel, "when do we sail?")
    found = await store.search_history(channel, now.user_row, middle.user_row, ["sail"], 10)
    # The failed reply is never shown; the question of a failed turn is (as in the history).
    assert {row.content for row in found} == {
        "We should sail to the islands",
        "Sailing sounds lovely",
        "sailing lessons?",
    }
    assert await store.search_history(channel, now.user_row, asked.user_row, ["sail"], 10) == []
    assert len(await store.search_history(channel, now.user_row, 10**9, ["sail"], 2)) == 2
    # Another conversation of the chat is not searched.
    await store.new_session(channel, "s2", actor_id="a", actor_name="A")
    later = await turn_of(store, channel, "sail?")
    assert await store.search_history(channel, later.user_row, later.user_row, ["sail"], 9) == []


async def test_a_database_of_schema_1_keeps_its_rows_and_finds_them_after_migrating(
    database: Database,
) -> None:
    from bot.storage import Dialect, load_migrations

    dialect: Dialect = "sqlite" if database.kind == "sqlite" else "postgresql"
    first = load_migrations(dialect=dialect)[:1]
    if database.kind == "sqlite":
        from bot.storage import migrate

        await migrate(database.settings.path, first)
    else:
        await pg_module.migrate(database.settings.url.get_secret_value(), first)
    await database.sql(
        "INSERT INTO channels (id, platform, channel_key, created_at) VALUES (1, 'test', 'c', 0)"
    )
    await database.sql(
        "INSERT INTO messages (channel_id, role, author_id, content, status, created_at,"
        " updated_at) VALUES (1, 'user', 'u', $1, 'complete', 1, 1)",
        "An old note about penguins",
    )
    store = await database.open()  # migrates to the newest schema
    try:
        channel = await store.channel_id("test", "c")
        assert channel == 1
        assert contents(await store.history(channel, 10**9, 10)) == ["An old note about penguins"]
        (found,) = await store.search_history(channel, 10**9, 10**9, ["penguin"], 5)
        assert found.content == "An old note about penguins"
        assert [s.messages for s in await store.sessions(channel)] == [1]
    finally:
        await store.close()
