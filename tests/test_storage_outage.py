"""The store out of reach: messages wait and are answered when it returns; stuck turn locks.

Before: with PostgreSQL down for more than ~4 s, a message that arrived meanwhile was tried four
times in ~4 s, the user was told storage did not work, and the message was never stored nor
answered once PostgreSQL was back (an ordinary restart or failover takes longer). A channel
whose turn lock a stale session held stalled with no log line and no bound. Now the message
waits in memory (bot/hold.py), bounded, its chat told once; and a turn waits a bounded time for
the lock, naming who holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from bot import hold as hold_module
from bot.errors import MessageNotStored, StorageError, StorageProblem
from bot.hold import StorageHold
from bot.messages import Msg, say
from bot.storage.postgres import PostgresStore
from bot.storage.postgres_connect import NS_CHANNEL
from bot.storage.postgres_turns import lock_key
from tests.conftest import not_installed
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    RunningTelegram,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.postgres import PostgresServer, available
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import eventually

OUTAGE_S = 12.0
DELAYED = say(Msg.ANSWER_DELAYED, trouble=Msg.STORAGE_BROKEN)


# -- the hold on its own -----------------------------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries of the hold's own tests a few milliseconds apart."""
    monkeypatch.setattr(hold_module, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(hold_module, "RETRY_MAX_S", 0.05)


def store_down(
    problem: StorageProblem = "unavailable", *, for_tries: int = 10**9
) -> Callable[[], Awaitable[str]]:
    """A write that fails with `problem` `for_tries` times, then works."""
    tries = 0

    async def write() -> str:
        nonlocal tries
        tries += 1
        if tries <= for_tries:
            raise StorageError("the database is down", problem=problem)
        return f"stored after {tries} tries"

    return write


class Told:
    """What the hold told each chat."""

    def __init__(self) -> None:
        self.said: list[tuple[str, StorageProblem]] = []

    def to(self, chat: str) -> Callable[[StorageProblem], Awaitable[None]]:
        async def tell(problem: StorageProblem) -> None:
            self.said.append((chat, problem))

        return tell


@pytest.mark.usefixtures("quick_retries")
async def test_messages_wait_while_the_store_is_out_and_each_chat_hears_once() -> None:
    hold, told, held = StorageHold(), Told(), []
    down = True

    async def write() -> str:
        if down:
            raise StorageError("the database is down", problem="unavailable")
        return "stored"

    arrivals = {"a": asyncio.Lock(), "b": asyncio.Lock()}  # a chat's messages go in order

    async def message(chat: str) -> str:
        async with (
            hold.place(chat, 10, tell=told.to(chat), held=lambda: held.append(chat)) as place,
            arrivals[chat],
        ):
            return await place.run(write)

    waiting = asyncio.gather(message("a"), message("a"), message("b"))
    await eventually(lambda: len(held) == 2)  # the first of each chat; one more waits behind
    assert hold.status() == {"messages": 3, "bytes": 30}
    down = False
    assert await waiting == ["stored"] * 3
    assert sorted(told.said) == [("a", "unavailable"), ("b", "unavailable")]
    assert hold.status() == {"messages": 0, "bytes": 0}


@pytest.mark.usefixtures("quick_retries")
async def test_the_hold_is_bounded_and_a_redelivering_platform_gets_its_update_back() -> None:
    hold, told = StorageHold(max_messages=1, max_bytes=100), Told()
    first_waits = asyncio.Event()
    down = store_down()

    async def first() -> None:
        async with hold.place("a", 50, tell=told.to("a"), held=first_waits.set) as place:
            await place.run(down)

    waiting = asyncio.create_task(first())
    await first_waits.wait()
    assert hold.status() == {"messages": 1, "bytes": 50}
    # No room: a platform that does not redeliver tells the user it could not be saved...
    async with hold.place("b", 10, tell=told.to("b")) as place:
        with pytest.raises(MessageNotStored) as refused:
            await place.run(down)
    assert refused.value.final and told.said == [("a", "unavailable")]
    # ...one that does (Telegram) keeps the update unconfirmed: not final, told it waits.
    async with hold.place("c", 10, tell=told.to("c"), until=time.time() + 3600) as place:
        with pytest.raises(MessageNotStored) as kept:
            await place.run(down)
    assert not kept.value.final and told.said[-1] == ("c", "unavailable")
    # Too many bytes is no room either.
    roomy = StorageHold(max_bytes=100)
    async with roomy.place("d", 101, tell=told.to("d")) as place:
        with pytest.raises(MessageNotStored):
            await place.run(down)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert hold.status() == {"messages": 0, "bytes": 0}


@pytest.mark.usefixtures("quick_retries")
async def test_a_failure_that_will_not_pass_is_not_held() -> None:
    hold, told = StorageHold(), Told()
    async with hold.place("a", 10, tell=told.to("a"), until=time.time() + 3600) as place:
        with pytest.raises(MessageNotStored) as refused:
            await place.run(store_down("error"))
    assert refused.value.final and told.said == []


@pytest.mark.usefixtures("quick_retries")
async def test_a_message_is_given_up_when_the_platform_would_drop_its_update() -> None:
    hold, told = StorageHold(), Told()
    async with hold.place("a", 10, tell=told.to("a"), until=time.time() + 0.2) as place:
        with pytest.raises(MessageNotStored) as given_up:
            await place.run(store_down())
    assert given_up.value.final  # told now: the platform will not deliver it again
    assert told.said == [("a", "unavailable")]


# -- PostgreSQL stopped while a message arrives --------------------------------------------------


@pytest.fixture
def own_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A cluster of this test's own, to stop and start (the session's serves other tests)."""
    if not available():
        not_installed("PostgreSQL is not installed (scripts/setup.sh installs it)")
    monkeypatch.delenv("PARLEY_STORAGE__URL", raising=False)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


async def database_problem(running: RunningTelegram) -> str | None:
    results = {r.name: r.problem for r in await running.app.health_checks().run()}
    return results["database"]


async def test_a_message_sent_while_postgresql_is_down_is_answered_when_it_returns(
    tmp_path: Path, own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = own_postgres.url(own_postgres.create_database())
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann, bob = api.user(5100, "Ann"), api.user(5200, "Bob")
        settings = telegram_settings(tmp_path, api, llm.url)
        settings.storage.url = SecretStr(url)
        async with telegram_bot(settings) as running:
            api.send_text(api.private_chat(ann), ann, "before")
            await api.wait_for(lambda a: "echo before" in telegram_replies(a, 5100))

            await asyncio.to_thread(own_postgres.halt)
            halted = time.monotonic()
            api.send_text(api.private_chat(ann), ann, "during one")
            api.send_text(api.private_chat(bob), bob, "during two")
            api.send_text(api.private_chat(ann), ann, "during three")
            await api.wait_for(
                lambda a: (
                    DELAYED in telegram_replies(a, 5100) and DELAYED in telegram_replies(a, 5200)
                )
            )
            await eventually(lambda: running.app.engine.hold.status()["messages"] == 3)
            assert await database_problem(running) is not None  # /healthz is red
            assert all("during" not in str(body) for body in llm.requests)

            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - halted)))
            await asyncio.to_thread(own_postgres.resume)
            resumed = time.monotonic()
            await api.wait_for(
                lambda a: (
                    "echo during three" in telegram_replies(a, 5100)
                    and "echo during two" in telegram_replies(a, 5200)
                )
            )
            print(
                f"postgresql down {resumed - halted:.1f} s; the held messages answered "
                f"{time.monotonic() - resumed:.1f} s after it was back"
            )
            await eventually(lambda: running.app.engine.hold.status()["messages"] == 0)
            assert await database_problem(running) is None
            api.send_text(api.private_chat(bob), bob, "after")
            await api.wait_for(lambda a: "echo after" in telegram_replies(a, 5200))

    assert telegram_replies(api, 5100) == [
        "echo before",
        DELAYED,
        "echo during one",
        "echo during three",
    ]
    assert telegram_replies(api, 5200) == [DELAYED, "echo during two", "echo after"]
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT role, status, content FROM messages ORDER BY id")
    finally:
        await conn.close()
    users = [r["content"] for r in rows if r["role"] == "user"]
    assert sorted(users) == sorted(["before", "during one", "during two", "during three", "after"])
    assert [r["status"] for r in rows if r["role"] == "assistant"] == ["complete"] * 5
    assert len(llm.requests) == 5


# -- a stale holder of a channel's turn lock -----------------------------------------------------


async def test_a_stale_turn_lock_holder_is_named_and_the_wait_is_bounded(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    store = await PostgresStore.open(postgres_url, lock_wait_s=2.0)
    holder = await asyncpg.connect(postgres_url, server_settings={"application_name": "stale"})
    try:
        # Keepalives on Parley's own sessions end a dead host's session, and its locks, in a minute.
        [(idle, interval, count, in_tx)] = await store.fetch(
            "SELECT current_setting('tcp_keepalives_idle'),"
            " current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count'),"
            " current_setting('idle_in_transaction_session_timeout')"
        )
        assert (idle, interval, count, in_tx) == ("30", "10", "3", "1min")
        channel = await store.channel_id("test", "stalled")
        # A session that took the channel's lock and then went quiet (a hung or half-dead client).
        await holder.execute("SELECT pg_advisory_lock($1, $2)", NS_CHANNEL, lock_key(channel))
        started = time.monotonic()
        async with store.channel_turn(channel):
            waited = time.monotonic() - started
        assert 2.0 <= waited < 20.0  # bounded (the upper end only guards against a hang)
        pid = holder.get_server_pid()
        logged = [r.getMessage() for r in caplog.records]
        assert any(
            f"s for its turn lock, held by PostgreSQL session {pid} (stale," in line
            and "no running Parley store" in line
            for line in logged
        ), logged
        assert any(
            "still held after 2 s" in line and "answering without it" in line for line in logged
        )

        # A Parley store that holds it and hangs is named as one.
        caplog.clear()
        await holder.close()
        other = await PostgresStore.open(postgres_url)
        try:
            async with other.channel_turn(channel), store.channel_turn(channel):
                pass
        finally:
            await other.close()
        assert any("a running Parley store" in r.getMessage() for r in caplog.records)
    finally:
        if not holder.is_closed():
            await holder.close()
        await store.close()
