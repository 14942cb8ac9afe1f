"""Updates confirmed only once their message is stored: long polling, and the webhook's tickets.

Telegram forgets an update once a getUpdates call asks for a later offset. PTB's Updater asks
as soon as it has queued a batch, so a message whose turn then failed to be stored (a full disk)
was gone for good. This poller asks itself (`Bot.get_updates`, handing each new update to
`Application.process_update`) and moves the offset only past updates that are settled: their
message stored, or nothing to store. While the store is out, the engine holds the message
(bot/hold.py) and its update stays unconfirmed, so Telegram keeps it should the process die;
one the engine could not hold is left to Telegram and tried again with backoff, for as long as
Telegram keeps it (`UPDATE_KEPT_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import telegram.error
from telegram import Update
from telegram.ext import Application

from adapters.telegram.errors import retry_after_seconds
from adapters.telegram.limits import UPDATE_KEPT_S
from bot.backoff import Backoff

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.5  # the wait before an unstored update's second try; doubles up to the max
RETRY_MAX_S = 30.0
KEEP_MARGIN_S = 600.0  # an update is given up this long before Telegram would drop it
SETTLE_WAIT_S = 0.5  # how long a poll waits on unsettled updates before asking again
# While every unsettled update waits for the store, polls come this often: each returns at once
# (an unconfirmed update is always there) and a new message can only be told it must wait.
HELD_POLL_S = 2.0
NETWORK_RETRY_S = 1.0  # the first wait after a failed getUpdates; doubles up to 30 s
NETWORK_RETRY_MAX_S = 30.0
FINAL_CONFIRM_TIMEOUT_S = 2.0  # at stop: confirming what was handled may not hold up shutdown


def kept_until(update: Update) -> float:
    """When (epoch seconds) Telegram stops keeping `update`, less a margin."""
    message = update.message
    sent = message.date.timestamp() if message is not None else time.time()
    return sent + UPDATE_KEPT_S - KEEP_MARGIN_S


@dataclass(slots=True)
class Ticket:
    """One update's passage: handlers claim it, then say when its message is stored or not."""

    update_id: int
    keep_until: float = math.inf  # epoch seconds: Telegram keeps the update unconfirmed till then
    attempt: int = 1
    claimed: bool = False
    settled: bool = False
    held: bool = False  # the engine holds its message until the store takes it
    failed_at: float | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(RETRY_INITIAL_S, RETRY_MAX_S))
    retry_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # settled, held or failed
    _poller: UpdatePoller | None = None

    def claim(self) -> None:
        """A handler took the update on: it settles when the handler says so."""
        self.claimed = True

    def stored(self) -> None:
        """The update's message is stored (or needs no storing): confirm it."""
        self.settled = True
        self.held = False
        self._changed()

    def hold(self) -> None:
        """Its message waits in memory for the store: the update stays unconfirmed meanwhile."""
        self.held = True
        self._changed()

    def not_stored(self) -> None:
        """Storing failed: leave the update unconfirmed and try it again after a while."""
        self.held = False
        self.failed_at = time.monotonic()
        self.retry_at = self.failed_at + self.backoff.next()
        self._changed()

    def retry(self) -> None:
        """The update comes again after a failure: one more try."""
        self.attempt += 1
        self.failed_at = None
        self.claimed = False
        self.changed.clear()

    def _changed(self) -> None:
        self.changed.set()
        if self._poller is not None:
            self._poller.wake()


class Tickets:
    """Every update's ticket by id, and which one PTB's handlers are running for now."""

    def __init__(self) -> None:
        self.by_id: dict[int, Ticket] = {}
        self.current: Ticket | None = None

    async def hand_over(
        self, application: Application[Any, Any, Any, Any, Any, Any], update: Update, ticket: Ticket
    ) -> None:
        """Run PTB's handlers for `update`; a handler that takes it on claims its ticket."""
        ticket.claimed = False
        self.current = ticket
        try:
            await application.process_update(update)
        finally:
            self.current = None
        if not ticket.claimed:
            ticket.settled = True  # no handler took it on: nothing to store
            ticket.changed.set()


class UpdatePoller:
    """getUpdates in a loop, each update handed to PTB's handlers, confirmed once settled."""

    def __init__(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        *,
        timeout_s: float,
        allowed_updates: Sequence[str],
    ) -> None:
        self._application = application
        self._timeout_s = timeout_s
        self._allowed = list(allowed_updates)
        self.tickets = Tickets()
        self._tickets = self.tickets.by_id
        self._next_offset: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._network = Backoff(NETWORK_RETRY_S, NETWORK_RETRY_MAX_S)
        self._confirmed: int | None = None  # the offset Telegram last heard from us

    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """A ticket changed: the next poll may confirm more, or retry now."""
        self._wake.set()

    async def start(self) -> None:
        """Clear a webhook (polling and webhooks exclude each other) and start the loop."""
        await self._application.bot.delete_webhook()
        self._task = asyncio.create_task(self._loop(), name="telegram-polling")

    async def stop(self) -> None:
        """End the loop, then confirm what was settled, briefly (the network may be gone)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        offset = self._offset()
        if offset is None or offset == self._confirmed:
            return
        try:
            async with asyncio.timeout(FINAL_CONFIRM_TIMEOUT_S):
                await self._application.bot.get_updates(
                    offset=offset, timeout=dtm.timedelta(0), allowed_updates=self._allowed
                )
        except (TimeoutError, telegram.error.TelegramError) as exc:
            log.info("Telegram: handled updates not confirmed at stop (%s); they come again", exc)

    def _offset(self) -> int | None:
        """Below every unsettled update: Telegram keeps those and hands them out again."""
        unsettled = [t.update_id for t in self._tickets.values() if not t.settled]
        return min(unsettled) if unsettled else self._next_offset

    async def _loop(self) -> None:
        while True:
            offset = self._offset()
            waiting = any(not t.settled for t in self._tickets.values())
            try:
                updates = await self._application.bot.get_updates(
                    offset=offset,
                    timeout=dtm.timedelta(seconds=0 if waiting else self._timeout_s),
                    allowed_updates=self._allowed,
                )
            except telegram.error.RetryAfter as exc:
                await asyncio.sleep(retry_after_seconds(exc))
                continue
            except telegram.error.InvalidToken:
                log.error("Telegram: the token was revoked; polling stops")
                raise
            except telegram.error.TelegramError as exc:  # the network, a 5xx, a Conflict
                wait = self._network.next()
                log.warning("Telegram: getUpdates failed (%s); retrying in %.1f s", exc, wait)
                await asyncio.sleep(wait)
                continue
            self._network.reset()
            self._confirmed = offset
            handed = await self._hand_over(updates)
            self._forget_settled()
            if not handed and any(not t.settled for t in self._tickets.values()):
                await self._until_something_changes()

    async def _hand_over(self, updates: Sequence[Update]) -> int:
        """Give new updates, and failed ones whose wait is over, to the handlers; how many."""
        handed = 0
        now = time.monotonic()
        for update in updates:
            ticket = self._tickets.get(update.update_id)
            if ticket is None:
                ticket = Ticket(update.update_id, kept_until(update), _poller=self)
                self._tickets[update.update_id] = ticket
                self._next_offset = max(self._next_offset or 0, update.update_id + 1)
            elif ticket.settled or ticket.failed_at is None or now < ticket.retry_at:
                continue  # already handled, being handled, or not yet due again
            else:
                ticket.retry()
                log.info("Telegram: update %d again (try %d)", update.update_id, ticket.attempt)
            await self.tickets.hand_over(self._application, update, ticket)
            handed += 1
        return handed

    def _forget_settled(self) -> None:
        """Tickets below the offset are confirmed: Telegram will not send them again."""
        offset = self._offset()
        if offset is None:
            return
        for update_id in [i for i, t in self._tickets.items() if t.settled and i < offset]:
            del self._tickets[update_id]

    async def _until_something_changes(self) -> None:
        """Nothing new came: wait for a ticket to settle or fail, or a retry to fall due."""
        now = time.monotonic()
        due = [t.retry_at - now for t in self._tickets.values() if t.failed_at is not None]
        busy = [t for t in self._tickets.values() if not t.settled and t.failed_at is None]
        poll = HELD_POLL_S if busy and all(t.held for t in busy) else SETTLE_WAIT_S
        wait = max(0.0, min([poll, *due]))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)
