"""The reply stream: one reply shown while it is generated, in as few calls as its budgets allow.

Text is coalesced while a call waits for its tokens, a long reply continues in new messages at
`bot.splitter`'s split points, and `finish()` makes the final text visible through 429s and
network errors until the deadline. How and why: docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bot import metrics
from bot.backoff import Backoff
from bot.delivery.budgets import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    MAX_RESENDS,
    BudgetScheduler,
    Expired,
    Lane,
    Priority,
    Request,
)
from bot.errors import DeliveryError, RetryAfter
from bot.splitter import Cut, cut_first
from bot.types import TextTarget

log = logging.getLogger(__name__)

DEFAULT_MARKER = " ▌"  # ends a reply's text while it is still being written

_MAX_UNREADABLE = 2  # retries of a call whose answer the platform library could not read


@dataclass(frozen=True, slots=True)
class PartShown:
    """A reply part's platform message, reported as soon as the platform returns its id.

    `part` counts the reply's messages from 0; `done` is False while the message may still end
    in the streaming marker, True once its final text is shown or it is deleted.
    """

    part: int
    message_id: str
    done: bool


# Told of every PartShown, awaited before the stream's next call (e.g. to record the ids).
PartSink = Callable[[PartShown], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Step:
    """The next call of a stream."""

    kind: Literal["send", "edit", "finalize", "delete"]
    text: str = ""
    cut: Cut | None = None  # for the finalize of a full part: where the next part starts


class ReplyStream:
    """One reply being shown: append deltas as they arrive, then finish."""

    def __init__(
        self,
        scheduler: BudgetScheduler,
        target: TextTarget,
        lane: Lane,
        marker: str,
        on_part: PartSink | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._target = target
        self._on_part = on_part
        self._limits = target.limits
        self._lane = lane
        self._marker = marker
        self._chunks: list[str] = []
        self._changed = asyncio.Event()
        # Finishing: what finish() was given, then the resolved final text and its deadline.
        self._finishing = False
        self._final_arg: str | None = None
        self._final: str | None = None
        self._deadline = math.inf
        self._done = False
        self._request: Request | None = None
        self._ids: list[str] = []  # the final message of every part so far
        # The open part: its text is `_reopen + reply[_base:]`, shown in `_message`.
        self._base = 0
        self._reopen = ""
        self._message: str | None = None
        self._shown = ""
        self._written_at = -math.inf
        self._resends = 0
        self._unreadable = 0
        # Exact delays (no jitter): simulations on a virtual clock must be repeatable.
        self._backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S, jitter=0.0)
        lane.chat.streams += 1
        self._task = asyncio.create_task(self._write_loop(), name=f"reply:{target.chat_key}")

    def append(self, delta: str) -> None:
        """Add generated text; never blocks, the writer task picks it up."""
        if self._finishing:
            raise RuntimeError("append() after finish()")
        if delta:
            self._chunks.append(delta)
            self._changed.set()

    @property
    def refused(self) -> DeliveryError | None:
        """Why the chat refused this reply for good (the user blocked the bot, the chat is gone).

        Set once the writer has stopped on it: the reply's generation is then pointless.
        """
        task = self._task
        if task.done() and not task.cancelled() and isinstance(task.exception(), DeliveryError):
            return task.exception()  # type: ignore[return-value]
        return None

    @property
    def parts(self) -> int:
        """Platform messages this reply has filled or opened so far."""
        return len(self._ids) + (self._message is not None)

    @property
    def max_chars(self) -> int:
        """The longest message the target takes."""
        return self._limits.max_chars

    @property
    def text(self) -> str:
        """Everything appended so far."""
        if len(self._chunks) > 1:
            self._chunks[:] = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    async def finish(self, final_text: str | None = None) -> list[str]:
        """Stop streaming; make the final text (default: all appended text) visible without marker.

        Returns the message ids of all parts. Parts already frozen cannot change: a `final_text`
        that does not start with their text is shown in full after them.
        """
        if self._task.cancelled():  # cancel() came first: what is shown stays
            return list(self._ids)
        if not self._finishing:
            self._finishing = True
            self._final_arg = final_text
            self._deadline = self._scheduler.clock.now() + self._scheduler.final_deadline_s
            if self._request is not None:
                self._scheduler.hurry(self._request, self._deadline)
            self._changed.set()
        await self._task
        return list(self._ids)

    async def cancel(self) -> None:
        """Stop the writer task without a final edit (used on shutdown)."""
        self._task.cancel()
        await asyncio.wait((self._task,))
        if not self._task.cancelled():
            self._task.exception()  # retrieved on purpose: an abandoned reply's error is moot

    # --- the writer task ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while not self._done:
                step = self._plan()
                if step is None:
                    if not self._done:
                        await self._changed.wait()
                        self._changed.clear()
                    continue
                await self._wait_interval(step)
                await self._take_token(step)
                step = self._plan()  # what arrived while waiting goes into this call
                if step is None:
                    self._scheduler.refund(self._lane)
                    continue
                await self._perform(step)
        finally:
            self._lane.chat.streams -= 1

    def _reply(self) -> str:
        return self.text if self._final is None else self._final

    def _plan(self) -> _Step | None:
        """The next call to make, if any; steps over what needs no call (blank parts)."""
        if self._finishing and self._final is None:
            self._resolve_final()
        limit = self._limits.max_chars
        source = self._reopen + self._reply()[self._base :]
        while (cut := cut_first(source, limit)) is not None and not cut.head.strip():
            self._next_part(cut)  # a blank head is dropped; the open message carries on
            source = self._reopen + self._reply()[self._base :]
        if cut is not None:
            return (
                _Step("send", cut.head)
                if self._message is None
                else _Step("finalize", cut.head, cut)
            )
        if self._final is not None:
            if source.strip():
                return _Step("send" if self._message is None else "finalize", source)
            if self._message is not None:
                return _Step("delete")
            self._done = True
            return None
        if not source.strip():
            return None
        shown = source + self._marker
        if len(shown) > limit:
            shown = source
        if self._message is None:
            return _Step("send", shown)
        return None if shown == self._shown else _Step("edit", shown)

    def _resolve_final(self) -> None:
        text = self.text
        final = text if self._final_arg is None else self._final_arg
        frozen = text[: self._base]
        if not final.startswith(frozen):
            final = frozen + final  # the frozen parts stay; the new text follows them
            self._reopen = ""
        self._final = final

    def _next_part(self, cut: Cut) -> None:
        self._base += cut.consumed - len(self._reopen)
        self._reopen = cut.reopen

    def _urgency(self, step: _Step) -> Priority:
        if self._message is None and not self._ids:
            return Priority.FIRST
        if step.kind == "edit" and self._final is None:
            return Priority.UPDATE
        return Priority.COMPLETE

    async def _wait_interval(self, step: _Step) -> None:
        if step.kind != "send":
            gap = self._written_at + self._limits.min_edit_interval_s - self._scheduler.clock.now()
            if gap > 0:
                await self._scheduler.clock.sleep(gap)

    async def _take_token(self, step: _Step) -> None:
        scheduler = self._scheduler
        request = scheduler.request(self._lane, self._urgency(step), self._deadline)
        self._request = request
        try:
            await scheduler.acquire(request)
        except Expired:
            raise DeliveryError(
                f"final text not delivered within {scheduler.final_deadline_s:g} s"
            ) from None
        finally:
            self._request = None

    async def _perform(self, step: _Step) -> None:
        target = self._target
        self._written_at = self._scheduler.clock.now()
        metrics.PLATFORM_CALLS.labels(target.limits.platform_key, step.kind).inc()
        shown: PartShown | None = None
        try:
            shown = await self._scheduler.counted(self._lane.platform, self._make(step))
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(target.limits.platform_key).inc()
            log.debug(
                "429 on %s in %s: pausing %.2f s", step.kind, target.chat_key, exc.retry_after
            )
            self._scheduler.pause(self._lane, exc)
        except DeliveryError as exc:
            self._refused(step, exc)
        except OSError as exc:  # a network failure the adapter did not retry
            await self._back_off(step, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. an answer the platform library can't parse
            await self._unreadable_answer(step, exc)
        else:
            self._backoff.reset()
            self._unreadable = 0
            if shown is not None and self._on_part is not None:
                await self._on_part(shown)

    async def _make(self, step: _Step) -> PartShown | None:
        """The platform call of `step`, and what it changes in the stream; the message it
        shows or finishes, for the record of the reply's messages."""
        target = self._target
        part = len(self._ids)
        if step.kind == "send":
            self._message = await target.send(step.text)
            self._shown = step.text
            return PartShown(part, self._message, done=False)
        if step.kind == "edit":
            await target.edit(self._require_message(), step.text)
            self._shown = step.text
            return None
        if step.kind == "finalize":
            self._ids.append(await target.finalize(self._require_message(), step.text))
            self._message, self._shown = None, ""
            if step.cut is not None:
                self._next_part(step.cut)
            else:
                self._done = True
            return PartShown(part, self._ids[-1], done=True)
        message_id = self._require_message()
        await target.delete(message_id)
        self._message, self._done = None, True
        return PartShown(part, message_id, done=True)

    def _require_message(self) -> str:
        if self._message is None:
            raise RuntimeError("no open message to write to")
        return self._message

    def _refused(self, step: _Step, exc: DeliveryError) -> None:
        if step.kind == "send" or exc.reason == "forbidden":  # the chat refuses the bot itself
            raise exc
        if step.kind == "delete":  # already gone, or it stays: either way nothing is lost
            self._message, self._done = None, True
            return
        self._resends += 1
        if self._resends > MAX_RESENDS:
            raise exc
        log.warning(
            "%s refused in %s (%s): sending the part anew", step.kind, self._target.chat_key, exc
        )
        self._message, self._shown = None, ""

    async def _unreadable_answer(self, step: _Step, exc: Exception) -> None:
        """A call failed in a way nobody classified: retry it a little, then treat it as refused.

        The platform may have carried it out, so an edit is retried (it is idempotent) and only
        then is the part sent anew; the reply's text is never dropped.
        """
        self._unreadable += 1
        log.warning(
            "%s in %s failed unexpectedly (%d of %d tries)",
            step.kind,
            self._target.chat_key,
            self._unreadable,
            _MAX_UNREADABLE + 1,
            exc_info=exc,
        )
        if self._unreadable <= _MAX_UNREADABLE:
            await self._back_off(step, exc)
            return
        self._unreadable = 0
        self._refused(step, DeliveryError(f"{step.kind} failed: {exc!r}", reason="unknown"))

    async def _back_off(self, step: _Step, exc: Exception) -> None:
        clock = self._scheduler.clock
        wait = self._backoff.next()
        log.warning(
            "%s failed in %s (%s): retrying in %.1f s", step.kind, self._target.chat_key, exc, wait
        )
        await clock.sleep(min(wait, max(0.0, self._deadline - clock.now())))
