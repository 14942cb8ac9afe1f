"""Queue notices: one message per waiting chat that shows its latest place in line.

`LatestMessage` keeps one message showing the latest of a changing text, coalesced under the
chat's budgets; `QueueNotices` gives each waiting chat one such message. Why: docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot import metrics
from bot.backoff import Backoff
from bot.delivery.budgets import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    MAX_RESENDS,
    Budgeted,
    BudgetScheduler,
    Lane,
    Priority,
)
from bot.errors import DeliveryError, RetryAfter

log = logging.getLogger(__name__)


class MessageOps(Protocol):
    """How to post, edit and delete one kind of message (say, a queue notice) in one chat.

    Errors as for `TextTarget`: `RetryAfter`, `DeliveryError`, `OSError`.
    """

    async def post(self, text: str) -> str:
        """Post the message; returns its id."""
        ...

    async def edit(self, message_id: str, text: str) -> None: ...

    async def delete(self, message_id: str) -> None: ...


_LatestStep = tuple[Literal["post", "edit", "delete"], str]


class LatestMessage:
    """One message that shows the latest of a changing text ("#3 in line", then "#2").

    `show(text)` never blocks: a writer task posts the message, edits it as the text changes and
    deletes it after `show(None)`, each call under the chat's budgets. What changed while it
    waited for a token goes out in one call, so a text that changes ten times while the
    platform is busy costs one edit. A 429 pauses the bucket and the write is made after the
    pause; a refused edit (the message was deleted) posts it anew, `MAX_RESENDS` times at most.
    """

    def __init__(
        self,
        scheduler: BudgetScheduler,
        where: Budgeted,
        ops: MessageOps,
        *,
        what: str = "queue",
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._where = where
        self._ops = ops
        self._what = what
        self._on_idle = on_idle
        self._want: str | None = None
        self._shown: str | None = None
        self._message: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_call = False
        self._stopped = False  # detached, or the chat refused the message
        self._resends = 0
        self._backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S, jitter=0.0)

    @property
    def message_id(self) -> str | None:
        """The message shown now, if any."""
        return self._message

    @property
    def idle(self) -> bool:
        """Nothing to write, and nothing shown that is still looked after."""
        return self._task is None and (self._message is None or self._stopped)

    def show(self, text: str | None) -> None:
        """Show `text` from now on (post or edit); None: delete the message."""
        if self._stopped:
            return
        self._want = text
        if self._task is None and self._step() is not None:
            self._task = asyncio.create_task(self._write_loop(), name=f"{self._what}-message")

    async def settled(self) -> None:
        """Wait until the writer has written what was asked (or given up)."""
        while self._task is not None:
            await asyncio.wait((self._task,))

    async def detach(self) -> str | None:
        """Stop writing (a write on its way lands first) and hand over the message's id.

        The message stays as it is, for the caller to reuse: e.g. a queue notice becomes the
        notice that tells why the turn failed.
        """
        self._stopped = True
        task = self._task
        if task is not None:
            if not self._in_call:
                task.cancel()  # waiting for a token or a backoff: nothing is on its way
            await asyncio.wait((task,))
        return self._message

    def _step(self) -> _LatestStep | None:
        if self._stopped:
            return None
        if self._want is None:
            return None if self._message is None else ("delete", "")
        if self._message is None:
            return ("post", self._want)
        return None if self._want == self._shown else ("edit", self._want)

    async def _write_loop(self) -> None:
        scheduler = self._scheduler
        lane = scheduler.lane(self._where)
        lane.chat.streams += 1
        try:
            while (step := self._step()) is not None:
                # The first message is news to the user; edits and the removal coalesce.
                priority = Priority.NOTICE if step[0] == "post" else Priority.UPDATE
                await scheduler.acquire(scheduler.request(lane, priority, math.inf))
                step = self._step()  # what changed while waiting goes into this call
                if step is None:
                    scheduler.refund(lane)
                    break
                await self._perform(lane, step)
        finally:
            lane.chat.streams -= 1
            self._task = None
            if self._on_idle is not None:
                self._on_idle()

    async def _perform(self, lane: Lane, step: _LatestStep) -> None:
        kind, text = step
        platform_key = self._where.limits.platform_key
        metrics.PLATFORM_CALLS.labels(platform_key, f"{self._what}_{kind}").inc()
        self._in_call = True
        try:
            await self._scheduler.counted(lane.platform, self._make(kind, text))
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(platform_key).inc()
            log.info(
                "429 on a %s message in %s: retrying after %.2f s",
                self._what,
                self._where.chat_key,
                exc.retry_after,
            )
            self._scheduler.pause(lane, exc)
        except DeliveryError as exc:
            self._refused(kind, exc)
        except OSError as exc:
            wait = self._backoff.next()
            log.info(
                "%s message in %s failed (%s): retrying", self._what, self._where.chat_key, exc
            )
            self._in_call = False
            await self._scheduler.clock.sleep(wait)
        # A courtesy message: an error nobody classified stops it, never the turn it serves.
        except Exception:
            log.exception("%s message in %s failed", self._what, self._where.chat_key)
            self._stopped = True
        else:
            self._backoff.reset()
        finally:
            self._in_call = False

    async def _make(self, kind: str, text: str) -> None:
        """The platform call of one step, and what it changes in the notice."""
        if kind == "post":
            self._message = await self._ops.post(text)
            self._shown = text
        elif kind == "edit":
            assert self._message is not None
            await self._ops.edit(self._message, text)
            self._shown = text
        else:
            assert self._message is not None
            await self._ops.delete(self._message)
            self._message = self._shown = None

    def _refused(self, kind: str, exc: DeliveryError) -> None:
        if kind == "post" or exc.reason == "forbidden":
            log.info("%s message not shown in %s: %s", self._what, self._where.chat_key, exc)
            self._stopped = True
            return
        # The message is gone (deleted by a user, too old): an edit posts it anew.
        self._message = self._shown = None
        if kind == "edit":
            self._resends += 1
            if self._resends > MAX_RESENDS:
                self._stopped = True


# The text of a chat's queue notice: (the best position of its waiting turns, how many wait).
QueueText = Callable[[int, int], str]


@dataclass(slots=True)
class _WaitingChat:
    message: LatestMessage
    text: QueueText
    turns: dict[object, int] = field(default_factory=dict)  # waiting turn -> its position

    def render(self) -> str:
        return self.text(min(self.turns.values()), len(self.turns))


class QueueNotices:
    """One "#n in line" message per waiting chat, however many of its turns wait.

    A turn that waits calls `wait()` (again whenever its position changes); once its reply
    starts or it ends, `leave()`. The message shows the best position of the chat's waiting
    turns and is deleted when none waits any more; a turn that comes to wait before the
    deletion went out keeps the message instead. The first waiting turn's `MessageOps` place
    the message (the question it quotes, its topic).
    """

    def __init__(self, scheduler: BudgetScheduler) -> None:
        self._scheduler = scheduler
        self._chats: dict[tuple[str, str], _WaitingChat] = {}

    def wait(
        self, where: Budgeted, ops: MessageOps, turn: object, position: int, text: QueueText
    ) -> None:
        """`turn` waits at `position` (1 = next in line)."""
        key = _chat_of(where)
        chat = self._chats.get(key)
        if chat is None:
            message = LatestMessage(
                self._scheduler, where, ops, on_idle=lambda: self._forget_if_idle(key)
            )
            chat = self._chats[key] = _WaitingChat(message, text)
        chat.turns[turn] = position
        chat.message.show(chat.render())

    def leave(self, where: Budgeted, turn: object) -> None:
        """`turn` waits no more: its reply started, or it ended."""
        key = _chat_of(where)
        chat = self._chats.get(key)
        if chat is None or chat.turns.pop(turn, None) is None:
            return
        chat.message.show(chat.render() if chat.turns else None)
        self._forget_if_idle(key)

    async def take_over(self, where: Budgeted, turn: object) -> str | None:
        """The chat's notice message for `turn` to reuse, if only `turn` waits; else None.

        The message stops showing positions and is the caller's from now on. When other turns
        of the chat still wait, `turn` just leaves (it has to post its own message).
        """
        key = _chat_of(where)
        chat = self._chats.get(key)
        if chat is None or turn not in chat.turns:
            return None
        if len(chat.turns) > 1:
            self.leave(where, turn)
            return None
        del self._chats[key]
        return await chat.message.detach()

    async def settle(self, timeout_s: float) -> None:
        """At stop, once no turn waits: let the notices' last writes (their deletions) land, for
        `timeout_s` at most, so no chat is left showing a place in line; then stop writing."""
        messages = [chat.message for chat in self._chats.values()]
        if not messages:
            return
        writes = [asyncio.ensure_future(message.settled()) for message in messages]
        _, pending = await asyncio.wait(writes, timeout=timeout_s)
        for write in pending:
            write.cancel()
        for message in messages:
            await message.detach()

    def _forget_if_idle(self, key: tuple[str, str]) -> None:
        chat = self._chats.get(key)
        if chat is not None and not chat.turns and chat.message.idle:
            del self._chats[key]


def _chat_of(where: Budgeted) -> tuple[str, str]:
    return (where.limits.platform_key, where.chat_key)
