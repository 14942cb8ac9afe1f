"""Turn order: one reply at a time per channel, in arrival order; LLM slots shared by all."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

PositionCallback = Callable[[int], Awaitable[None]]


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
    async def turn(self, channel_key: str, on_position: PositionCallback) -> AsyncIterator[None]:
        """Wait for this channel's earlier turns and for a free LLM slot, then run the body.

        `on_position(n)` is awaited once if the turn has to wait: n = 1 means "next in line".
        """
        loop = asyncio.get_running_loop()
        line = self._lines.setdefault(channel_key, deque())
        ticket: asyncio.Future[None] = loop.create_future()
        line.append(ticket)
        has_slot = False
        try:
            if len(line) > 1:
                await on_position(len(line) - 1)
                await ticket  # resolved by the turn ahead when it ends
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
            was_head = line[0] is ticket
            line.remove(ticket)
            if was_head and line and not line[0].done():
                line[0].set_result(None)
            if not line and self._lines.get(channel_key) is line:
                del self._lines[channel_key]

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self._free += 1
