"""What the store keeps for exactly-once delivery, on both backends: handled platform updates
(claimed with the turn that stores the message, kept for a bounded time) and each reply's platform
messages, claimed after a crash by one process only.

"Another process" is another store instance on the same database (its own pool, session and
instance number); closing a PostgreSQL store ends its session, as a killed process's does.
"""

from __future__ import annotations

import pytest

from bot.config import StorageSettings
from bot.errors import AlreadyHandled
from bot.storage import Store
from bot.storage.handled import HANDLED_KEPT_S
from bot.storage.reply_parts import OpenPart
from tests.fakes.stored import Database

PLATFORM = "test"


async def turn(store: Store, channel: int, text: str, handled: str | None = None) -> int:
    rows = await store.start_turn(
        channel,
        author_id="u",
        author_name="U",
        content=text,
        token_count=1,
        handled=None if handled is None else (PLATFORM, handled),
    )
    return rows.reply_row


async def user_texts(store: Store, channel: int) -> list[str]:
    rows = await store.fetch(
        "SELECT content FROM messages WHERE channel_id = $1 AND role = 'user' ORDER BY id",
        (channel,),
    )
    return [row[0] for row in rows]


# -- handled updates ---------------------------------------------------------------------------


async def test_a_message_delivered_twice_is_stored_once(store: Store) -> None:
    channel = await store.channel_id(PLATFORM, "c")
    await turn(store, channel, "hello", handled="c/41")
    assert await store.was_handled(PLATFORM, "c/41")
    with pytest.raises(AlreadyHandled):
        await turn(store, channel, "hello", handled="c/41")
    assert await user_texts(store, channel) == ["hello"]  # the claim and the rows: all or none
    # Another platform's key of the same name is another update.
    assert not await store.was_handled("other", "c/41")
    assert await store.claim("other", "c/41")
    assert not await store.claim("other", "c/41")


async def test_handled_updates_are_forgotten_after_their_retention(database: Database) -> None:
    store = await database.open()
    try:
        assert await store.claim(PLATFORM, "old")
        assert await store.claim(PLATFORM, "new")
        assert await store.purge_handled() == 0
        await database.sql(
            f"UPDATE handled_updates SET handled_at = handled_at - {HANDLED_KEPT_S + 60}"
            " WHERE key = 'old'"
        )
        assert await store.purge_handled() == 1
        assert not await store.was_handled(PLATFORM, "old")
        assert await store.was_handled(PLATFORM, "new")
    finally:
        await store.close()


# -- reply parts -------------------------------------------------------------------------------


async def cut_short(store: Store, text: str) -> int:
    """A reply shown in two messages, the second still streaming, its text saved: then the
    process dies (the caller closes the store)."""
    channel = await store.channel_id(PLATFORM, "chat")
    reply = await turn(store, channel, "question")
    await store.update_message(reply, status="streaming", content=text)
    await store.part_shown(reply, 0, "m1")
    await store.part_done(reply, 0, "m1")
    await store.part_shown(reply, 1, "draft:7")
    await store.part_done(reply, 1, "m2")  # a draft became a real message
    await store.part_shown(reply, 2, "m3")
    return reply


async def test_an_interrupted_reply_s_open_parts_are_claimed_once(database: Database) -> None:
    dead = await database.open()
    reply = await cut_short(dead, "saved so far")
    assert await dead.reply_parts(reply) == [(0, "m1", True), (1, "m2", True), (2, "m3", False)]
    await dead.close()

    restarted = await database.open()
    try:
        assert await restarted.mark_interrupted() == 1
        assert await restarted.claim_interrupted("another platform") == []
        [part] = await restarted.claim_interrupted(PLATFORM)
        assert part == OpenPart(reply, 2, "m3", "chat", "saved so far", last=True)
        if database.kind == "postgresql":
            # Taken on by a running process: nobody else claims it meanwhile.
            other = await database.open()
            try:
                assert await other.claim_interrupted(PLATFORM) == []
            finally:
                await other.close()
        await restarted.part_done(reply, 2, "m3")
        assert await restarted.claim_interrupted(PLATFORM) == []
        message = await restarted.get_message(reply)
        assert message is not None and message.status == "interrupted"
    finally:
        await restarted.close()


async def test_a_reply_claimed_by_a_process_that_died_is_claimed_again(postgres_url: str) -> None:
    database = Database("postgresql", StorageSettings(url=postgres_url))
    dead = await database.open()
    reply = await cut_short(dead, "saved so far")
    await dead.close()
    first = await database.open()
    await first.mark_interrupted()
    [part] = await first.claim_interrupted(PLATFORM)
    await first.close()  # it died before finishing the message
    second = await database.open()
    try:
        assert await second.claim_interrupted(PLATFORM) == [part]
        assert part.reply_row == reply
    finally:
        await second.close()


async def test_replies_of_running_processes_are_not_claimed(database: Database) -> None:
    running = await database.open()
    try:
        channel = await running.channel_id(PLATFORM, "chat")
        reply = await turn(running, channel, "being answered")
        await running.update_message(reply, status="streaming", content="so far")
        await running.part_shown(reply, 0, "m1")
        finished = await turn(running, channel, "answered")
        await running.update_message(finished, status="complete", content="done")
        await running.part_shown(finished, 0, "m2")  # its final edit is under way
        assert await running.claim_interrupted(PLATFORM) == []
        if database.kind == "postgresql":
            other = await database.open()  # another process, starting while this one runs
            try:
                assert await other.mark_interrupted() == 0
                assert await other.claim_interrupted(PLATFORM) == []
            finally:
                await other.close()
    finally:
        await running.close()
