"""Messages held while the store cannot take them, stored as soon as it can.

A storage outage (PostgreSQL restarting or failing over, a full disk) must neither lose a
message nor answer it with an apology it cannot keep. The message waits in memory, its
platform update unconfirmed where the platform redelivers (Telegram), while storing it is
retried with the one backoff policy; its chat hears once that the answer is delayed. It is given
up only when the platform would no longer keep the update (or after `HOLD_MAX_S`), or when the
hold is full: then a platform that redelivers gets the update back unconfirmed, to try later,
and on the others the user hears that the message could not be saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from bot.backoff import Backoff
from bot.errors import MessageNotStored, StorageError, StorageProblem

log = logging.getLogger(__name__)

T = TypeVar("T")

HOLD_MAX_MESSAGES = 500  # messages waiting in memory at once
HOLD_MAX_BYTES = 64 * 1024 * 1024  # their text and pictures together
HOLD_MAX_S = 24 * 3600.0  # the longest a message waits, whatever the platform
RETRY_INITIAL_S = 0.5  # the first wait after a failed write; doubles up to RETRY_MAX_S
RETRY_MAX_S = 5.0  # a database back from a restart is used within this long
# Failures that pass: the database restarting or out of reach, a full disk, a read-only
# standby. Any other ("error": a statement the database refuses) would fail the same way again.
PASSING: frozenset[StorageProblem] = frozenset({"full", "read_only", "io", "busy", "unavailable"})

Tell = Callable[[StorageProblem], Awaitable[None]]  # tells the chat its answer is delayed


class StorageHold:
    """The messages waiting for the store, bounded in count and bytes, and the chats told so."""

    def __init__(
        self,
        *,
        max_messages: int = HOLD_MAX_MESSAGES,
        max_bytes: int = HOLD_MAX_BYTES,
        max_s: float = HOLD_MAX_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_s = max_s
        self.clock = clock
        self.messages = 0  # held now
        self.bytes = 0
        self.told: set[str] = set()  # chats told their answer is delayed, until one is stored

    def status(self) -> dict[str, int]:
        """What waits now, for /healthz."""
        return {"messages": self.messages, "bytes": self.bytes}

    @contextlib.asynccontextmanager
    async def place(
        self,
        chat: str,
        size: int,
        *,
        tell: Tell,
        until: float | None = None,
        held: Callable[[], None] | None = None,
        wait: bool = True,
    ) -> AsyncIterator[Place]:
        """A message's place while it is stored: `Place.run` retries its writes.

        `until` (epoch seconds): when the platform stops redelivering its update (None: it
        does not redeliver). `held()` is called when it starts waiting in memory. Every message
        counts from the start, so those queued behind a waiting one count too; the bounds
        decide at its first failed write whether it may wait; one that may not `wait` (its
        caller waits on an open request) never does.
        """
        deadline = self.clock() + self.max_s
        place = Place(self, chat, tell, min(deadline, until or math.inf), until, held, wait)
        self.messages += 1
        self.bytes += size
        try:
            yield place
        finally:
            self.messages -= 1
            self.bytes -= size


class Place:
    """One message on its way into the store (see `StorageHold.place`)."""

    def __init__(
        self,
        hold: StorageHold,
        chat: str,
        tell: Tell,
        deadline: float,
        until: float | None,
        held: Callable[[], None] | None,
        wait: bool = True,
    ) -> None:
        self._hold = hold
        self._wait = wait
        self._chat = chat
        self._tell = tell
        self._deadline = deadline
        self._redelivered = until is not None
        self._held = held
        self._admitted: bool | None = None  # decided at the first failed write
        self._waiting = False  # a write failed: it waits for the store
        self._since = 0.0

    def _admit(self) -> bool:
        """Whether the message may wait: decided once, by the bounds at its first failure."""
        if self._admitted is None:
            hold = self._hold
            self._admitted = hold.messages <= hold.max_messages and hold.bytes <= hold.max_bytes
            self._since = time.monotonic()
        return self._admitted

    async def run(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write()`, retried while the store fails in a way that passes.

        MessageNotStored when it is given up: `final` unless the platform keeps the update to
        deliver it again.
        """
        backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        while True:
            try:
                result = await write()
            except StorageError as exc:
                await self._failed(exc)
                left = self._deadline - self._hold.clock()
                await asyncio.sleep(min(backoff.next(), max(0.0, left)))
                continue
            if backoff.attempts:
                log.info(
                    "a held message of %s is written, after %.1f s",
                    self._chat,
                    time.monotonic() - self._since,
                )
            self._hold.told.discard(self._chat)
            return result

    async def _failed(self, exc: StorageError) -> None:
        """The store failed once more: wait (MessageNotStored when the message cannot)."""
        if exc.problem not in PASSING:
            raise MessageNotStored(exc) from exc
        if not self._wait:  # its caller asks again: nothing waits, nobody is told to wait
            raise MessageNotStored(exc, final=False) from exc
        room = self._admit()
        if room and not self._waiting:
            self._waiting = True
            log.warning(
                "holding a message of %s until the store takes it (%s); %d held",
                self._chat,
                exc.problem,
                self._hold.messages,
            )
            if self._held is not None:
                self._held()
        if self._hold.clock() >= self._deadline:
            log.warning("a held message of %s is given up: it waited too long", self._chat)
            raise MessageNotStored(exc) from exc
        if (room or self._redelivered) and self._chat not in self._hold.told:
            self._hold.told.add(self._chat)
            await self._tell(exc.problem)
        if not room:
            log.warning(
                "the hold is full (%d messages, %d bytes): a message of %s is not held",
                self._hold.messages,
                self._hold.bytes,
                self._chat,
            )
            raise MessageNotStored(exc, final=not self._redelivered) from exc
