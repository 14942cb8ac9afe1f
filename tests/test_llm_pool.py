"""LLM slots and a pool of LLM servers, through the real app and engine.

Concurrency is discovered from llama.cpp's /props; a reply frees its slot when generation ends,
before delivery; a channel sticks to the slot caching its prompt; two servers share the load and
one going down mid-run costs only its open streams.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import ParleyApp
from bot.config import load_settings
from bot.errors import ConfigError
from bot.messages import Msg, say
from tests.conftest import make_settings, message
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.targets import RecordingTarget

HANG_GUARD_S = 30.0  # only catches a hang: nothing here is timed


async def until(condition: Callable[[], bool], timeout: float = HANG_GUARD_S) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM messages WHERE role='assistant'")]


# -- concurrency from the servers ------------------------------------------------------------


async def test_concurrency_is_the_sum_of_the_slots_the_servers_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.llm")
    async with FakeLLMServer(slots=4) as a, FakeLLMServer(slots=3) as b:
        settings = make_settings(tmp_path, llm={"backends": [a.url, b.url]})
        async with ParleyApp(settings, speech=False) as parley:
            assert parley.engine.queue.slots == 7
            assert parley.llm.pool.routing == "least-busy"
    assert "7 replies at once (llama.cpp /props: 4 + 3)" in caplog.messages


async def test_a_server_without_props_counts_as_the_documented_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.llm")
    async with FakeLLMServer(slots=2) as llama, FakeLLMServer() as other:
        settings = make_settings(tmp_path, llm={"backends": [llama.url, other.url]})
        async with ParleyApp(settings, speech=False) as parley:
            assert parley.engine.queue.slots == 2 + 4
    assert (
        "6 replies at once (llama.cpp /props: 2; no /props slot count, the default: 4)"
        in caplog.messages
    )


async def test_failover_counts_the_serving_server_and_a_set_concurrency_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.llm")
    async with FakeLLMServer(slots=4) as main, FakeLLMServer(slots=8) as spare:
        settings = make_settings(tmp_path, llm={"base_url": main.url, "fallback_urls": [spare.url]})
        async with ParleyApp(settings, speech=False) as parley:
            assert parley.engine.queue.slots == 4
        told = make_settings(tmp_path, llm={"backends": [main.url, spare.url], "concurrency": 3})
        async with ParleyApp(told, speech=False) as parley:
            assert parley.engine.queue.slots == 3
    assert "4 replies at once (llama.cpp /props: 4; failover: 1 more on standby)" in (
        caplog.messages
    )
    assert "3 replies at once (llm.concurrency)" in caplog.messages


async def test_healthz_detail_shows_slots_in_use_and_the_queue(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hold(body: dict[str, Any]) -> None:
        await release.wait()

    async with FakeLLMServer(Behaviour(reply="one two", pause=hold), slots=1) as llm:
        settings = make_settings(tmp_path, llm={"base_url": llm.url})
        async with ParleyApp(settings, speech=False) as parley:
            detail = parley.health_checks().details()["llm"]
            assert isinstance(detail, dict)
            assert (detail["slots_in_use"], detail["slots"], detail["queued"]) == (0, 1, 0)
            first = asyncio.create_task(
                parley.engine.handle(message("a", channel="A"), RecordingTarget())
            )
            second = asyncio.create_task(
                parley.engine.handle(message("b", channel="B"), RecordingTarget())
            )
            await until(lambda: parley.engine.queue.depth == 1 and llm.in_flight == 1)
            detail = parley.health_checks().details()["llm"]
            assert isinstance(detail, dict)
            assert (detail["slots_in_use"], detail["slots"], detail["queued"]) == (1, 1, 1)
            assert detail["backends"] == [
                {
                    "url": llm.url,
                    "healthy": True,
                    "slots": 1,
                    "slots_from": "llama.cpp /props",
                    "in_flight": 1,
                }
            ]
            release.set()
            await asyncio.wait_for(asyncio.gather(first, second), HANG_GUARD_S)


# -- the slot is released before delivery --------------------------------------------------


class SlowFinalTarget(RecordingTarget):
    """A chat whose platform holds the final edit (as a 429 pause would) until told."""

    def __init__(self, key: str) -> None:
        super().__init__(key=key)
        self.final_started = asyncio.Event()
        self.platform_ready = asyncio.Event()

    async def finalize(self, message_id: str, text: str) -> str:
        self.final_started.set()
        await self.platform_ready.wait()
        return await super().finalize(message_id, text)


async def test_a_slow_final_edit_does_not_hold_the_llm_slot(tmp_path: Path) -> None:
    async with FakeLLMServer(Behaviour(reply="generated text"), slots=1) as llm:
        settings = make_settings(tmp_path, llm={"base_url": llm.url})
        async with ParleyApp(settings, speech=False) as parley:
            assert parley.engine.queue.slots == 1
            slow = SlowFinalTarget("test:A")
            a1 = asyncio.create_task(parley.engine.handle(message("a1", channel="A"), slow))
            await asyncio.wait_for(slow.final_started.wait(), HANG_GUARD_S)
            # A's reply is generated and waits on its platform: B generates on the only slot.
            assert parley.engine.queue.in_use == 0
            fast = RecordingTarget(key="test:B")
            await asyncio.wait_for(
                parley.engine.handle(message("b1", channel="B"), fast), HANG_GUARD_S
            )
            assert fast.text == "generated text" and fast.positions == []
            # A's channel keeps its place: its next turn waits for the delivery to finish.
            a2_target = RecordingTarget(key="test:A")
            a2 = asyncio.create_task(parley.engine.handle(message("a2", channel="A"), a2_target))
            await until(lambda: parley.engine.queue.waiting("test:A") == 1)
            assert not a1.done() and [last_user_text(r) for r in llm.requests] == ["a1", "b1"]
            slow.platform_ready.set()
            await asyncio.wait_for(asyncio.gather(a1, a2), HANG_GUARD_S)
            assert slow.text == "generated text" and a2_target.text == "generated text"
            assert [last_user_text(r) for r in llm.requests] == ["a1", "b1", "a2"]
            assert not any(use.waited for use in llm.slot_uses)


# -- prompt-cache affinity --------------------------------------------------------------


async def test_a_channel_keeps_its_slot_and_a_busy_one_falls_back_to_a_free_slot(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def hold_c(body: dict[str, Any]) -> None:
        if last_user_text(body) == "c1":
            await release.wait()

    async with FakeLLMServer(Behaviour(reply="ok then", pause=hold_c), slots=2) as llm:
        settings = make_settings(tmp_path, llm={"base_url": llm.url})
        async with ParleyApp(settings, speech=False) as parley:

            async def say(channel: str, text: str) -> RecordingTarget:
                target = RecordingTarget(key=f"test:{channel}")
                await parley.engine.handle(message(text, channel=channel), target)
                return target

            for turn in range(3):  # A and B take turns: each stays on its own slot
                await say("A", f"a{turn}")
                await say("B", f"b{turn}")
            slots_of = {
                text: use.slot
                for text, use in zip(
                    (last_user_text(r) for r in llm.requests), llm.slot_uses, strict=True
                )
            }
            assert {slots_of[f"a{t}"] for t in range(3)} == {slots_of["a0"]}
            assert {slots_of[f"b{t}"] for t in range(3)} == {slots_of["b0"]}
            assert slots_of["a0"] != slots_of["b0"]
            # C arrives: it takes the slot idle the longest (A's). While C generates there,
            # A's next turn does not wait for its slot: it goes to the free one.
            c1 = asyncio.create_task(say("C", "c1"))
            await until(lambda: len(llm.slot_uses) == 7)
            assert llm.slot_uses[-1].slot == slots_of["a0"]
            a_next = await asyncio.wait_for(say("A", "a3"), HANG_GUARD_S)
            assert a_next.text == "ok then" and not c1.done()
            assert llm.slot_uses[-1].asked == slots_of["b0"]
            assert not any(use.waited for use in llm.slot_uses)
            release.set()
            await asyncio.wait_for(c1, HANG_GUARD_S)
            assert [r.get("cache_prompt") for r in llm.requests] == [True] * 8
            assert parley.llm.pool.stats["hit"] == 4  # a1, a2, b1, b2


async def test_no_id_slot_for_a_server_without_props(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as parley:
        await parley.engine.handle(message("hi"), RecordingTarget())
    # OpenAI refuses unknown arguments: llama.cpp's own go only to llama.cpp.
    assert "id_slot" not in fake_llm.requests[0] and "cache_prompt" not in fake_llm.requests[0]


# -- a pool of servers ---------------------------------------------------------


async def test_two_servers_share_eight_chats_within_their_slots(tmp_path: Path) -> None:
    started = 0
    everyone = asyncio.Event()

    async def wait_for_all(body: dict[str, Any]) -> None:
        # Hold each stream until four are generating at once: the pool's full width.
        nonlocal started
        started += 1
        if started >= 4:
            everyone.set()
        await everyone.wait()

    behaviour = Behaviour(reply="a reply in several words", pause=wait_for_all)
    async with FakeLLMServer(behaviour, slots=2) as a, FakeLLMServer(behaviour, slots=2) as b:
        settings = make_settings(tmp_path, llm={"backends": [a.url, b.url]})
        async with ParleyApp(settings, speech=False) as parley:
            targets = [RecordingTarget(key=f"test:c{i}") for i in range(8)]
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        parley.engine.handle(message(f"m{i}", channel=f"c{i}"), t)
                        for i, t in enumerate(targets)
                    )
                ),
                HANG_GUARD_S,
            )
    assert all(t.text == "a reply in several words" for t in targets)
    assert (a.max_in_flight, b.max_in_flight) == (2, 2)  # both serve, neither past its slots
    assert len(a.requests) + len(b.requests) == 8 and a.requests and b.requests
    # Our slot tracking matches the servers': no request ever waited at a server.
    assert not any(use.waited for use in [*a.slot_uses, *b.slot_uses])
    assert sorted(p for t in targets for p in t.positions) == [1, 2, 3, 4]


async def test_a_server_stopped_mid_run_costs_only_its_open_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_streams = 0
    four = asyncio.Event()
    stopped = asyncio.Event()

    async def hold(body: dict[str, Any]) -> None:
        nonlocal open_streams
        if last_user_text(body).startswith("first"):
            open_streams += 1
            if open_streams == 4:
                four.set()
            await stopped.wait()

    behaviour = Behaviour(reply="partial words then more", pause=hold)
    async with FakeLLMServer(behaviour, slots=2) as a, FakeLLMServer(behaviour, slots=2) as b:
        settings = make_settings(tmp_path, llm={"backends": [a.url, b.url]})
        async with ParleyApp(settings, speech=False) as parley:
            firsts = [RecordingTarget(key=f"test:c{i}") for i in range(4)]
            tasks = [
                asyncio.create_task(parley.engine.handle(message(f"first {i}", channel=f"c{i}"), t))
                for i, t in enumerate(firsts)
            ]
            await asyncio.wait_for(four.wait(), HANG_GUARD_S)
            on_a = {last_user_text(r) for r in a.requests}
            await a.stop()  # killed mid-stream
            stopped.set()
            await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD_S)
            for i, target in enumerate(firsts):
                if f"first {i}" in on_a:  # cut off: what came is kept, with a clear note
                    assert target.text.startswith("partial ")
                    assert target.text.endswith(say(Msg.CUT_OFF))
                else:
                    assert target.text == "partial words then more"
            assert parley.engine.queue.slots == 2  # only b's slots count now
            before = len(b.requests)
            seconds = [RecordingTarget(key=f"test:c{i}") for i in range(4)]
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        parley.engine.handle(message(f"second {i}", channel=f"c{i}"), t)
                        for i, t in enumerate(seconds)
                    )
                ),
                HANG_GUARD_S,
            )
            assert all(t.text == "partial words then more" for t in seconds)
            assert len(b.requests) == before + 4  # new turns go to the other server
            assert b.max_in_flight == 2
    assert len(on_a) == 2
    assert sorted(statuses(tmp_path / "parley.db")) == ["complete"] * 6 + ["partial"] * 2
    assert any("is unhealthy" in m and a.url in m for m in caplog.messages)


async def test_an_unhealthy_server_is_probed_again_and_rejoins(tmp_path: Path) -> None:
    async with FakeLLMServer(slots=2) as a, FakeLLMServer(slots=2) as b:
        settings = make_settings(tmp_path, llm={"backends": [a.url, b.url]})
        async with ParleyApp(settings, speech=False) as parley:
            assert parley.engine.queue.slots == 4
            await a.stop()
            await parley.engine.handle(message("x", channel="one"), RecordingTarget())
            await parley.engine.handle(message("y", channel="two"), RecordingTarget())
            await until(lambda: parley.engine.queue.slots == 2)
            async with FakeLLMServer(slots=3, port=a.port) as back:
                await until(lambda: parley.engine.queue.slots == 5)  # re-probed, /props again
                target = RecordingTarget()
                await parley.engine.handle(message("z", channel="three"), target)
                assert target.text == "Hello from the fake model."
                assert back.requests  # the least busy server again
            assert len(b.requests) == 2


async def test_a_pool_with_every_server_down_says_so(tmp_path: Path) -> None:
    dead = ["http://127.0.0.1:9", "http://127.0.0.1:7"]
    settings = make_settings(tmp_path, llm={"backends": dead})
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.engine.queue.slots == 8  # counted, so turns fail fast rather than wait
        target = RecordingTarget()
        await asyncio.wait_for(parley.engine.handle(message("hi"), target), HANG_GUARD_S)
    assert target.notices and "can't reach the language model" in target.notices[0]


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'backends = ["http://a:8080"]\nbase_url = "http://b:8080"',
            "config: llm.backends = ['http://a:8080']: set llm.backends or llm.base_url",
        ),
        (
            'backends = ["http://a:8080", "http://a:8080/"]',
            "config: llm.backends = ['http://a:8080', 'http://a:8080/']: lists the same server",
        ),
        ('backends = ["a:8080"]', "config: llm.backends = ['a:8080']: must start with http://"),
        ('routing = "random"', "config: llm.routing = 'random': Input should be 'auto'"),
        ("concurrency = -1", "config: llm.concurrency = -1: Input should be greater than"),
    ],
)
def test_pool_settings_are_validated(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[llm]\n{toml}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value


def test_a_url_with_credentials_is_never_shown(tmp_path: Path) -> None:
    from bot.llm import LLMClient

    settings = make_settings(tmp_path, llm={"backends": ["http://user:s3cret@127.0.0.1:9"]})
    client = LLMClient(settings.llm, settings.llm.backends, "chat")
    assert "s3cret" not in str(client.status()) and "s3cret" not in client.capacity_source()


# -- the pool's bookkeeping, without a network --------------------------------------------


async def test_places_on_a_full_server_go_in_order_and_a_failed_over_reply_goes_first() -> None:
    from bot.llm_pool import BackendPool

    pool = BackendPool(["http://a"], "failover", default_slots=1)
    backend = pool.backends[0]
    held = await pool.acquire(backend, "x")
    order: list[str] = []

    async def wait(name: str, first: bool = False) -> None:
        lease = await pool.acquire(backend, name, first=first)
        order.append(name)
        pool.release(lease)

    late = asyncio.create_task(wait("late"))
    gone = asyncio.create_task(wait("gone"))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(wait("urgent", first=True))
    await asyncio.sleep(0)
    gone.cancel()  # a waiter that gave up passes its place on
    pool.release(held)
    await asyncio.wait_for(asyncio.gather(late, urgent, return_exceptions=True), HANG_GUARD_S)
    assert order == ["urgent", "late"] and backend.in_flight == 0


def test_capacity_counts_healthy_servers_or_the_serving_one() -> None:
    from bot.llm_pool import BackendPool

    pool = BackendPool(["http://a", "http://b"], "least-busy", default_slots=3)
    seen: list[int] = []
    pool.on_capacity(seen.append)
    a, b = pool.backends
    pool.set_slots(a, 4, "llama.cpp /props", llama=True)
    assert pool.capacity == 7
    pool.failed(a, "connection refused")
    assert pool.capacity == 3 and [x.url for x in pool.plan(None)] == ["http://b", "http://a"]
    pool.failed(b, "connection refused")
    assert pool.capacity == 7  # nobody answers: everyone counts, turns fail fast
    pool.recovered(a)
    assert seen == [7, 3, 7, 4]
    failover = BackendPool(["http://a", "http://b"], "failover", default_slots=2)
    failover.set_slots(failover.backends[1], 8, "llama.cpp /props", llama=True)
    assert failover.capacity == 2  # the standby's slots do not count until it serves
    failover.answered(failover.backends[1])
    assert failover.capacity == 8


async def test_slots_shows_another_client_only_for_slots_not_ours_lately() -> None:
    from bot.llm_pool import BackendPool

    now = [100.0]
    pool = BackendPool(["http://a"], "least-busy", default_slots=3, clock=lambda: now[0])
    backend = pool.backends[0]
    pool.set_slots(backend, 3, "llama.cpp /props", llama=True)
    mine = await pool.acquire(backend, "x")
    asked_at = pool.now()
    now[0] += 5.0  # /slots answered slowly; meanwhile our request ended
    pool.release(mine)
    assert not pool.slots_seen(backend, {mine.slot or 0}, asked_at)  # it was ours
    assert pool.slots_seen(backend, {2}, asked_at)  # nobody of ours was on slot 2
    assert backend.shared_until == now[0] + 60.0
    lease = await pool.acquire(backend, "x")
    assert (lease.slot, lease.affinity) == (None, "shared")
