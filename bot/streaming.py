"""Show a reply while it is generated, in as few and as timely platform calls as budgets allow.

One `EditScheduler` serves the whole bot and `open()` gives a `ReplyStream` per reply. Every call
a stream makes (send, edit, finalize, delete) costs a token from its chat's bucket and one from its
platform's bucket. The buckets are shared, so ten replies in one chat split that chat's budget.

Policy:
- Coalescing: a stream asks for a token once its text changed and decides what to write only when
  the token is granted, so all text that arrived meanwhile goes out in one edit.
- Order: waiting calls are served by urgency, then first come, first served (round robin, as each
  stream queues again after its call): a reply's first message; then calls that complete text (a
  final edit, a full part, the next part's first message); then interim edits. A reply that shows
  nothing yet overtakes replies that already show some text.
- Reserve: interim edits leave one token in the chat bucket (when its burst allows), so a final
  edit or another reply's first message goes out at once instead of one refill later.
- 429: `RetryAfter` pauses the chat bucket (the platform bucket when global) for everyone; the
  stream then writes whatever text it has by the end of the pause, in one call.
- Unreadable answers: any other error from a call (say, a response the platform library could
  not parse) is retried `_MAX_UNREADABLE` times, then handled as a refusal.
- Final: `finish()` drops the marker and finalizes every part, retrying through 429s and network
  errors (`OSError`, exponential backoff) until `final_deadline_s`, then raises `DeliveryError`.
- Refusals: when an edit or finalize is refused for good (message deleted, too old), the part's
  text goes out again as a new message rather than being lost, at most `_MAX_RESENDS` times per
  reply. A refused send means the chat cannot be written to: the stream stops and `finish()`
  raises that `DeliveryError`.
- Long replies: a part that outgrows `max_chars` is frozen (finalized) at the best split point of
  `bot.splitter` and the reply goes on in a new message. Blank parts are never sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import operator
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, Protocol

from bot import metrics
from bot.backoff import Backoff
from bot.errors import DeliveryError, RetryAfter
from bot.splitter import Cut, cut_first
from bot.types import RateBudget, TextTarget

log = logging.getLogger(__name__)

DEFAULT_MARKER = " ▌"

GLOBAL_WINDOW_S = 1.0  # platforms count a bot's requests per second
# The burst of every bucket: a short reply's first message and final edit go out back to back.
SHORT_REPLY_CALLS = 2.0

_INTERIM_RESERVE = 1.0  # tokens an interim edit leaves in its chat bucket
_BACKOFF_INITIAL_S = 0.5  # first wait after a network error; doubles up to _BACKOFF_MAX_S
_BACKOFF_MAX_S = 8.0
_MAX_RESENDS = 3  # parts sent again after their message was refused, per reply
_MAX_UNREADABLE = 2  # retries of a call whose answer the platform library could not read
_TOKEN_SLACK = 1e-9  # float error of a refill that lands exactly on a whole token


class Clock(Protocol):
    """The scheduler's time source, injectable so simulations run on a fake clock."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def windowed_budget(calls: float, window_s: float) -> RateBudget:
    """A bucket that lets at most `calls` through in any `window_s` seconds.

    A bucket admits up to `burst + rate * window` calls in a window, so the burst is carved out
    of the window's allowance: the limit holds whether the platform counts in fixed or sliding
    windows, and as platforms count half-open windows, one call of headroom remains for network
    jitter (calls spaced here can arrive closer together). Below 2 calls per window a positive
    rate needs one call of slack.
    """
    burst = max(1.0, min(SHORT_REPLY_CALLS, calls / 2))
    rate = max(calls - burst, calls / 2) / window_s
    return RateBudget(rate=rate, burst=burst)


class _Urgency(IntEnum):
    """Which waiting call gets a token first (lowest value)."""

    FIRST = 0  # the reply shows nothing yet
    COMPLETE = 1  # a final edit, a full part, the first message of the next part
    UPDATE = 2  # an interim edit


class _Bucket:
    """A token bucket; no token is granted before `paused_until` (a 429's retry_after)."""

    __slots__ = ("burst", "paused_until", "rate", "stamp", "streams", "tokens")

    def __init__(self, budget: RateBudget, now: float) -> None:
        self.rate = budget.rate
        self.burst = budget.burst
        self.tokens = budget.burst
        self.stamp = now
        self.paused_until = -math.inf
        self.streams = 0  # open streams drawing on it

    def update(self, budget: RateBudget) -> None:
        """Adopt a new budget (the settings changed) without refilling."""
        self.rate, self.burst = budget.rate, budget.burst
        self.tokens = min(self.tokens, self.burst)

    @property
    def reserve(self) -> float:
        """Tokens an interim edit must leave behind."""
        return min(_INTERIM_RESERVE, max(0.0, self.burst - 1.0))

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def ready_at(self, now: float, need: float) -> float:
        """When the bucket will hold `need` tokens that a pause does not hold back."""
        self._refill(now)
        missing = need - self.tokens
        ready = now if missing <= _TOKEN_SLACK else now + missing / self.rate
        return max(ready, self.paused_until)

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def refund(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    def idle(self, now: float) -> bool:
        """Unused and full: forgetting it changes nothing."""
        self._refill(now)
        return self.streams == 0 and self.tokens >= self.burst and now >= self.paused_until


@dataclass(frozen=True, slots=True)
class _Lane:
    """The two buckets every call of one reply draws on."""

    chat: _Bucket
    platform: _Bucket


@dataclass(eq=False, slots=True)
class _Request:
    """A call waiting for its tokens."""

    lane: _Lane
    urgency: _Urgency
    seq: int
    deadline: float
    granted: asyncio.Future[None]


_ORDER = operator.attrgetter("urgency", "seq")  # urgency first, then first come, first served


class _Expired(Exception):
    """A request's deadline passed before its tokens came."""


class EditScheduler:
    """Token buckets shared by all replies: one per TextTarget.chat_key, one per platform_key."""

    def __init__(self, clock: Clock | None = None, *, final_deadline_s: float = 60.0) -> None:
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.final_deadline_s = final_deadline_s
        self._chats: dict[tuple[str, str], _Bucket] = {}
        self._platforms: dict[str, _Bucket] = {}
        self._pending: list[_Request] = []
        self._seq = itertools.count()
        self._kick = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._next_look = math.inf

    def open(self, target: TextTarget, *, marker: str = DEFAULT_MARKER) -> ReplyStream:
        """Start showing a reply in `target` (must be called from the event loop)."""
        limits = target.limits
        now = self.clock.now()
        for key in [key for key, bucket in self._chats.items() if bucket.idle(now)]:
            del self._chats[key]
        platform = self._platforms.get(limits.platform_key)
        if platform is None:
            platform = self._platforms[limits.platform_key] = _Bucket(limits.platform, now)
        else:
            platform.update(limits.platform)
        chat_key = (limits.platform_key, target.chat_key)
        chat = self._chats.get(chat_key)
        if chat is None:
            chat = self._chats[chat_key] = _Bucket(limits.chat, now)
        else:
            chat.update(limits.chat)
        return ReplyStream(self, target, _Lane(chat, platform), marker)

    # --- used by ReplyStream ------------------------------------------------------------------

    def _request(self, lane: _Lane, urgency: _Urgency, deadline: float) -> _Request:
        future = asyncio.get_running_loop().create_future()
        return _Request(lane, urgency, next(self._seq), deadline, future)

    async def _acquire(self, request: _Request) -> None:
        """Wait until `request` holds a token of both its buckets; `_Expired` past its deadline."""
        self._pending.append(request)
        look = self._grant()
        if not request.granted.done():
            if self._dispatcher is None:
                self._dispatcher = asyncio.create_task(self._dispatch(), name="edit-scheduler")
            elif look < self._next_look:
                self._kick.set()
        try:
            await request.granted
        except asyncio.CancelledError:
            if request.granted.done() and not request.granted.cancelled():
                self._refund(request.lane)  # granted, but its stream stopped before the call
            self._withdraw(request)
            raise

    def _hurry(self, request: _Request, deadline: float) -> None:
        """A waiting interim edit now carries the final text."""
        request.urgency = min(request.urgency, _Urgency.COMPLETE)
        request.deadline = deadline
        self._kick.set()

    def _pause(self, lane: _Lane, error: RetryAfter) -> None:
        bucket = lane.platform if error.is_global else lane.chat
        bucket.paused_until = max(bucket.paused_until, self.clock.now() + error.retry_after)

    def _refund(self, lane: _Lane) -> None:
        """Give back the tokens of a grant that ended up making no call."""
        lane.chat.refund()
        lane.platform.refund()
        self._kick.set()

    # --- granting -----------------------------------------------------------------------------

    def _withdraw(self, request: _Request) -> None:
        if request in self._pending:
            self._pending.remove(request)
        self._kick.set()

    def _grant(self) -> float:
        """Grant, in order, every waiting call whose buckets have a token; when to look again."""
        now = self.clock.now()
        look = math.inf
        waiting: list[_Request] = []
        # A bucket short of tokens holds back every later call on it (FIFO), so each bucket is
        # asked once per pass: a pass costs O(waiting calls) even when hundreds wait.
        blocked: set[_Bucket] = set()
        for request in sorted(self._pending, key=_ORDER):
            if request.granted.done():  # its stream was cancelled
                continue
            if now >= request.deadline:
                request.granted.set_exception(_Expired())
                continue
            waiting.append(request)
            look = min(look, request.deadline)
            chat, platform = request.lane.chat, request.lane.platform
            if chat in blocked or platform in blocked:
                continue
            need = 1.0 + (chat.reserve if request.urgency is _Urgency.UPDATE else 0.0)
            chat_ready, platform_ready = chat.ready_at(now, need), platform.ready_at(now, 1.0)
            if chat_ready <= now and platform_ready <= now:
                chat.take(now)
                platform.take(now)
                request.granted.set_result(None)
                waiting.pop()
                continue
            for bucket, ready in ((chat, chat_ready), (platform, platform_ready)):
                if ready > now:
                    blocked.add(bucket)
                    look = min(look, ready)
        self._pending = waiting
        return look

    async def _dispatch(self) -> None:
        """Grant waiting calls as tokens come back; ends when nothing waits."""
        try:
            while True:
                self._kick.clear()
                self._next_look = self._grant()
                if not self._pending:
                    return
                await self._sleep_until(self._next_look)
        finally:
            self._dispatcher = None
            self._next_look = math.inf

    async def _sleep_until(self, moment: float) -> None:
        """Sleep until `moment`, or until a new, hurried or withdrawn request needs a look."""
        kicked = asyncio.ensure_future(self._kick.wait())
        timer = asyncio.ensure_future(self.clock.sleep(max(0.0, moment - self.clock.now())))
        try:
            await asyncio.wait((kicked, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            kicked.cancel()
            timer.cancel()


@dataclass(frozen=True, slots=True)
class _Step:
    """The next call of a stream."""

    kind: Literal["send", "edit", "finalize", "delete"]
    text: str = ""
    cut: Cut | None = None  # for the finalize of a full part: where the next part starts


class ReplyStream:
    """One reply being shown: append deltas as they arrive, then finish."""

    def __init__(
        self, scheduler: EditScheduler, target: TextTarget, lane: _Lane, marker: str
    ) -> None:
        self._scheduler = scheduler
        self._target = target
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
        self._request: _Request | None = None
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
        self._backoff = Backoff(_BACKOFF_INITIAL_S, _BACKOFF_MAX_S, jitter=0.0)
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
                self._scheduler._hurry(self._request, self._deadline)
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
                    self._scheduler._refund(self._lane)
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

    def _urgency(self, step: _Step) -> _Urgency:
        if self._message is None and not self._ids:
            return _Urgency.FIRST
        if step.kind == "edit" and self._final is None:
            return _Urgency.UPDATE
        return _Urgency.COMPLETE

    async def _wait_interval(self, step: _Step) -> None:
        if step.kind != "send":
            gap = self._written_at + self._limits.min_edit_interval_s - self._scheduler.clock.now()
            if gap > 0:
                await self._scheduler.clock.sleep(gap)

    async def _take_token(self, step: _Step) -> None:
        scheduler = self._scheduler
        request = scheduler._request(self._lane, self._urgency(step), self._deadline)
        self._request = request
        try:
            await scheduler._acquire(request)
        except _Expired:
            raise DeliveryError(
                f"final text not delivered within {scheduler.final_deadline_s:g} s"
            ) from None
        finally:
            self._request = None

    async def _perform(self, step: _Step) -> None:
        target = self._target
        self._written_at = self._scheduler.clock.now()
        metrics.PLATFORM_CALLS.labels(target.limits.platform_key, step.kind).inc()
        try:
            if step.kind == "send":
                self._message = await target.send(step.text)
                self._shown = step.text
            elif step.kind == "edit":
                await target.edit(self._require_message(), step.text)
                self._shown = step.text
            elif step.kind == "finalize":
                self._ids.append(await target.finalize(self._require_message(), step.text))
                self._message, self._shown = None, ""
                if step.cut is not None:
                    self._next_part(step.cut)
                else:
                    self._done = True
            else:
                await target.delete(self._require_message())
                self._message, self._done = None, True
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(target.limits.platform_key).inc()
            log.debug(
                "429 on %s in %s: pausing %.2f s", step.kind, target.chat_key, exc.retry_after
            )
            self._scheduler._pause(self._lane, exc)
        except DeliveryError as exc:
            self._refused(step, exc)
        except OSError as exc:  # a network failure the adapter did not retry
            await self._back_off(step, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. an answer the platform library can't parse
            await self._unreadable_answer(step, exc)
        else:
            self._backoff.reset()
            self._unreadable = 0

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
        if self._resends > _MAX_RESENDS:
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
