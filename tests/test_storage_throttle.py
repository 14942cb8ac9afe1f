"""The attempt throttle and the admin console's sessions in the store, on both backends: attempts
sent at once (to one store, or to two stores on one PostgreSQL) are counted one after another,
so no more than the free attempts go ahead; waits double and end; sessions are shared."""

from __future__ import annotations

import asyncio

from bot.config import StorageSettings
from bot.storage import Store, open_store
from bot.storage.throttle import ThrottlePolicy

POLICY = ThrottlePolicy(free=5, first_wait_s=30.0, max_wait_s=120.0, memory_s=600.0)
NOW = 1_000_000.0


async def test_attempts_at_once_go_ahead_only_as_often_as_the_policy_allows(store: Store) -> None:
    waits = await asyncio.gather(
        *(store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW) for _ in range(30))
    )
    assert sorted(waits) == [0.0] * 5 + [30.0] * 25
    # Another key, or the same key in another scope, is not held up.
    assert await store.throttle_attempt("sign-in", "10.0.0.2", POLICY, now=NOW) == 0.0
    assert await store.throttle_attempt("api", "10.0.0.1", POLICY, now=NOW) == 0.0
    # The wait ends; the next attempt goes ahead and doubles the wait after it.
    assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW + 29) == 1.0
    assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW + 30) == 0.0
    assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW + 31) == 59.0
    # Up to the longest wait.
    later = NOW + 90
    for _ in range(3):
        assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=later) == 0.0
        later += POLICY.max_wait_s
    assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=later - 1) == 1.0
    # A success forgets the key.
    await store.throttle_clear("sign-in", "10.0.0.1")
    assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=later - 1) == 0.0


async def test_a_quiet_key_starts_again_and_is_forgotten(store: Store) -> None:
    for _ in range(4):
        assert await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW) == 0.0
    # Long after, five more attempts go ahead before a wait.
    later = NOW + POLICY.memory_s + 1
    waits = [
        await store.throttle_attempt("sign-in", "10.0.0.1", POLICY, now=later) for _ in range(6)
    ]
    assert waits == [0.0] * 5 + [30.0]
    # Keys quiet for longer than the memory (and not waiting) leave the table.
    much_later = later + POLICY.max_wait_s + POLICY.memory_s + 1
    assert await store.throttle_attempt("sign-in", "10.0.0.9", POLICY, now=much_later) == 0.0
    keys = await store.fetch("SELECT key FROM throttle WHERE scope = $1", ("sign-in",))
    assert [row[0] for row in keys] == ["10.0.0.9"]


async def test_two_stores_on_one_postgresql_count_the_same_attempts(postgres_url: str) -> None:
    settings = StorageSettings(url=postgres_url)
    first, second = await open_store(settings), await open_store(settings)
    try:
        stores = (first, second)
        waits = await asyncio.gather(
            *(
                stores[n % 2].throttle_attempt("sign-in", "10.0.0.1", POLICY, now=NOW)
                for n in range(40)
            )
        )
        assert sorted(waits) == [0.0] * 5 + [30.0] * 35
        # A session recorded by one is read by the other, and ended for both.
        await first.add_console_session("hash-a", "bound-a", "10.0.0.1", now=NOW, keep=64)
        row = await second.console_session("hash-a")
        assert row is not None and (row.credential, row.remote, row.seen_at) == (
            "bound-a",
            "10.0.0.1",
            NOW,
        )
        await second.touch_console_session("hash-a", NOW + 5)
        row = await first.console_session("hash-a")
        assert row is not None and row.seen_at == NOW + 5
        await second.end_console_session("hash-a")
        assert await first.console_session("hash-a") is None
    finally:
        await first.close()
        await second.close()


async def test_console_sessions_are_capped_and_stale_ones_end(store: Store) -> None:
    for n in range(5):
        await store.add_console_session(f"h{n}", "c", "a", now=NOW + n, keep=3)
    kept = await store.fetch("SELECT token_hash FROM console_sessions ORDER BY token_hash")
    assert [row[0] for row in kept] == ["h2", "h3", "h4"]  # the least recently seen ended
    await store.touch_console_session("h2", NOW + 100)
    ended = await store.end_stale_console_sessions(seen_before=NOW + 4, created_before=NOW)
    assert ended == 1  # h3: idle; h2 was seen since; none is too old
    kept = await store.fetch("SELECT token_hash FROM console_sessions ORDER BY token_hash")
    assert [row[0] for row in kept] == ["h2", "h4"]
    assert await store.end_stale_console_sessions(seen_before=0, created_before=NOW + 3) == 1
    assert await store.console_session("h2") is None and await store.console_session("h4")
