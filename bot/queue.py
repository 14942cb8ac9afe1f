"""Turn order: one reply at a time per channel, in arrival order; LLM slots shared by all."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

PositionCallback = Callable[[int], Awaitable[None]]
# Entered once the turn heads its channel's line, before it takes an LLM slot, and held until the
# turn ends: e.g. `lambda: store.channel_turn(channel_id, reply_row)`, the channel's line across
# processes. Waiting there holds no slot, so a turn waiting for another process never starves
# this process's other channels (and two processes can never wait on each other's slots).
Gate = Callable[[], AbstractAsyncContextManager[None]]


class TurnQueue:
    """Per channel a FIFO line; across channels at most `slots` replies run at once."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = slots
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    def waiting(self, channel_key: str) -> int:
        """How many turns of this channel wait behind the one being answered."""
        return max(0, len(self._lines.get(channel_key, ())) - 1)

    @property
    def in_use(self) -> int:
        """LLM slots held by replies being generated now (for the admin console)."""
        return self.slots - self._free

    @property
    def depth(self) -> int:
        """Turns waiting anywhere (for metrics)."""
        return sum(max(0, len(line) - 1) for line in self._lines.values()) + len(self._slot_waiters)

    @asynccontextmanager
    async def turn(
        self, channel_key: str, on_position: PositionCallback, gate: Gate | None = None
    ) -> AsyncIterator[None]:
        """Wait for this channel's earlier turns, then `gate`, then a free LLM slot; run the body.

        `on_position(n)` is awaited once if the turn has to wait: n = 1 means "next in line".
        """
        loop = asyncio.get_running_loop()
        line = self._lines.setdefault(channel_key, deque())
        ticket: asyncio.Future[None] = loop.create_future()
        line.append(ticket)
        try:
            if len(line) > 1:
                await on_position(len(line) - 1)
                await ticket  # resolved by the turn ahead when it ends
            async with gate() if gate is not None else nullcontext(), self._slot(line, on_position):
                yield
        finally:
            was_head = line[0] is ticket
            line.remove(ticket)
            if was_head and line and not line[0].done():
                line[0].set_result(None)
            if not line and self._lines.get(channel_key) is line:
                del self._lines[channel_key]

    @asynccontextmanager
    async def _slot(
        self, line: deque[asyncio.Future[None]], on_position: PositionCallback
    ) -> AsyncIterator[None]:
        """Hold one LLM slot; tell the slot position if the turn has to wait and was not told."""
        loop = asyncio.get_running_loop()
        has_slot = False
        try:
            if self._free > 0 and not self._slot_waiters:
                self._free -= 1
            else:
                slot: asyncio.Future[None] = loop.create_future()
                self._slot_waiters.append(slot)
                try:
                    if len(line) == 1:  # not already told a channel position
                        await on_position(len(self._slot_waiters))
                    await slot
                except BaseException:
                    if slot.done() and not slot.cancelled():
                        self._release_slot()  # handed a slot we can no longer use
                    else:
                        self._slot_waiters.remove(slot)
                    raise
            has_slot = True
            yield
        finally:
            if has_slot:
                self._release_slot()

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self._free += 1
