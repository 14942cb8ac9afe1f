"""Turn order: per channel in arrival order, bounded across channels, queue positions told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bot.queue import TurnQueue


async def test_positions_order_and_slot_bound() -> None:
    queue = TurnQueue(slots=2)
    running: list[str] = []
    order: list[str] = []
    peak = 0
    told: dict[str, list[int]] = {}
    gate = asyncio.Event()

    async def turn(channel: str, name: str) -> None:
        nonlocal peak

        async def on_position(n: int) -> None:
            told.setdefault(name, []).append(n)

        async with queue.turn(channel, on_position):
            running.append(name)
            peak = max(peak, len(running))
            order.append(name)
            await gate.wait()
            running.remove(name)

    tasks = [
        asyncio.create_task(turn("a", "a1")),
        asyncio.create_task(turn("a", "a2")),
        asyncio.create_task(turn("a", "a3")),
        asyncio.create_task(turn("b", "b1")),
        asyncio.create_task(turn("c", "c1")),
    ]
    await asyncio.sleep(0.01)
    assert told == {"a2": [1], "a3": [2], "c1": [1]}
    assert queue.depth == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    assert [n for n in order if n.startswith("a")] == ["a1", "a2", "a3"]
    assert queue.depth == 0


async def test_a_cancelled_waiter_does_not_block_the_line() -> None:
    queue = TurnQueue(slots=1)
    gate = asyncio.Event()
    done: list[str] = []

    async def turn(name: str) -> None:
        async def ignore(n: int) -> None:
            return None

        async with queue.turn("a", ignore):
            await gate.wait()
            done.append(name)

    first = asyncio.create_task(turn("first"))
    second = asyncio.create_task(turn("second"))
    third = asyncio.create_task(turn("third"))
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, third)
    assert done == ["first", "third"]
    assert second.cancelled()


async def test_a_turn_waiting_at_its_gate_holds_no_slot() -> None:
    # The gate is where a turn waits for its channel's earlier turns in other processes.
    queue = TurnQueue(slots=1)
    events: list[str] = []
    opened = asyncio.Event()

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        events.append("gate wait")
        await opened.wait()
        events.append("gate open")
        yield
        events.append("gate closed")

    async def nothing(n: int) -> None:
        return None

    async def turn(channel: str, name: str, with_gate: bool) -> None:
        async with queue.turn(channel, nothing, gate if with_gate else None):
            events.append(name)

    gated = asyncio.create_task(turn("a", "a1", True))
    behind = asyncio.create_task(turn("a", "a2", False))
    await asyncio.sleep(0.01)
    # Another channel gets the only slot while a1 waits at its gate; a2 waits behind a1.
    await asyncio.wait_for(turn("b", "b1", False), 5)
    assert events == ["gate wait", "b1"]
    opened.set()
    await asyncio.wait_for(asyncio.gather(gated, behind), 5)
    assert events == ["gate wait", "b1", "gate open", "a1", "gate closed", "a2"]
    assert queue.depth == 0 and queue.in_use == 0


async def test_a_released_slot_serves_another_channel_while_the_turn_keeps_its_line() -> None:
    queue = TurnQueue(slots=1)
    delivered = asyncio.Event()
    events: list[str] = []

    async def nothing(n: int) -> None:
        return None

    async def generate_then_deliver() -> None:
        async with queue.turn("a", nothing) as slot:
            events.append("a1 generated")
            slot.release()  # generation over: delivery goes on without the slot
            slot.release()  # idempotent
            await delivered.wait()
            events.append("a1 delivered")

    async def turn(channel: str, name: str) -> None:
        async with queue.turn(channel, nothing):
            events.append(name)

    first = asyncio.create_task(generate_then_deliver())
    behind = asyncio.create_task(turn("a", "a2"))
    await asyncio.wait_for(turn("b", "b1"), 5)  # the only slot is free again
    assert events == ["a1 generated", "b1"] and not behind.done()
    delivered.set()
    await asyncio.wait_for(asyncio.gather(first, behind), 5)
    assert events == ["a1 generated", "b1", "a1 delivered", "a2"]
    assert queue.in_use == 0 and queue.depth == 0


async def test_resizing_lets_waiters_in_or_holds_newcomers_back() -> None:
    queue = TurnQueue(slots=1)
    gate = asyncio.Event()
    running: list[str] = []

    async def nothing(n: int) -> None:
        return None

    async def turn(channel: str) -> None:
        async with queue.turn(channel, nothing):
            running.append(channel)
            await gate.wait()

    tasks = [asyncio.create_task(turn(c)) for c in "abc"]
    await asyncio.sleep(0.01)
    assert running == ["a"] and queue.waiting_for_slot == 2
    queue.resize(3)  # a server came back: both waiters start at once
    await asyncio.sleep(0.01)
    assert running == ["a", "b", "c"] and queue.in_use == 3
    queue.resize(1)  # a server went down: the running ones finish, newcomers wait
    late = asyncio.create_task(turn("d"))
    await asyncio.sleep(0.01)
    assert queue.waiting_for_slot == 1 and queue.slots == 1
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks, late), 5)
    assert running[-1] == "d" and queue.in_use == 0
