"""Turn order: one reply at a time per channel, in arrival order; LLM slots shared by all.

A turn holds its channel's place from arrival to the end of its delivery, but an LLM slot only
while it generates (`TurnSlot.release()`): a slow platform never keeps another chat waiting.
"""

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


class TurnSlot:
    """A turn's LLM slot: `release()` frees it as soon as generation ends.

    Delivery (final edits, 429 waits, the voice note) goes on without it, while the turn still
    holds its channel's place: the channel's next turn waits for the end of the `turn()` block.
    """

    def __init__(self, queue: TurnQueue) -> None:
        self._queue = queue
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the slot to the next turn waiting for one (idempotent)."""
        if self._held:
            self._held = False
            self._queue._release_slot()


class TurnQueue:
    """Per channel a FIFO line; across channels at most `slots` replies generate at once."""

    def __init__(self, slots: int) -> None:
        self._slots = max(1, slots)
        self._in_use = 0
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def slots(self) -> int:
        """Replies that may generate at once."""
        return self._slots

    @property
    def in_use(self) -> int:
        """Slots held now (replies generating)."""
        return self._in_use

    def resize(self, slots: int) -> None:
        """Change the number of slots (an LLM server went down or came back).

        Fewer: replies generating now finish; new ones wait until the count is under the new
        size. More: waiting turns start at once.
        """
        self._slots = max(1, slots)
        while self._in_use < self._slots and self._wake_next():
            pass

    def waiting(self, channel_key: str) -> int:
        """How many turns of this channel wait behind the one being answered."""
        return max(0, len(self._lines.get(channel_key, ())) - 1)

    @property
    def waiting_for_slot(self) -> int:
        """Turns at the head of their channel's line waiting for a free slot."""
        return len(self._slot_waiters)

    @property
    def depth(self) -> int:
        """Turns waiting anywhere (for metrics)."""
        return sum(max(0, len(line) - 1) for line in self._lines.values()) + len(self._slot_waiters)

    @asynccontextmanager
    async def turn(
        self, channel_key: str, on_position: PositionCallback, gate: Gate | None = None
    ) -> AsyncIterator[TurnSlot]:
        """Wait for this channel's earlier turns, then `gate`, then a free LLM slot; run the body.

        The body gets the `TurnSlot`: releasing it early lets another channel generate while
        this turn delivers; the channel's line moves on only when the body ends.
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
            async with (
                gate() if gate is not None else nullcontext(),
                self._slot(line, on_position) as slot,
            ):
                yield slot
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
    ) -> AsyncIterator[TurnSlot]:
        """Hold one LLM slot; tell the slot position if the turn has to wait and was not told."""
        loop = asyncio.get_running_loop()
        if self._in_use < self._slots and not self._slot_waiters:
            self._in_use += 1
        else:
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                if len(line) == 1:  # not already told a channel position
                    await on_position(len(self._slot_waiters))
                await waiter  # resolved by a released slot, handed over with its count
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release_slot()  # handed a slot we can no longer use
                else:
                    self._slot_waiters.remove(waiter)
                raise
        slot = TurnSlot(self)
        try:
            yield slot
        finally:
            slot.release()

    def _release_slot(self) -> None:
        self._in_use -= 1
        if self._in_use < self._slots:
            self._wake_next()

    def _wake_next(self) -> bool:
        """Hand one slot to the next waiter; False when nobody waits."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._in_use += 1  # counted now: no newcomer can take it before the waiter runs
                waiter.set_result(None)
                return True
        return False
