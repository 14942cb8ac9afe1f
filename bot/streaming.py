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

Every other platform call of a chat goes through the same buckets (`EditScheduler.call`): notices,
command answers, voice uploads, each at its `Priority`. A 429 pauses the bucket for everyone and
the call is made again after the pause, until `final_deadline_s`, then `DeliveryError`: nothing is
dropped silently. Typing indicators (`EditScheduler.offer`) are made only when no other call waits
and the platform bucket keeps a token to spare; otherwise they are skipped, never queued: an
indicator is worth nothing once text shows. Queue positions ("#2 in line") are one coalesced
message per waiting chat (`QueueNotices`, `LatestMessage`): posted once, edited as the position
changes (only the latest position is written), deleted when nobody of the chat waits any more.

Priority order, and why: a reply's first message (the user sees nothing yet), then calls that
complete text (a final edit), then notices, command answers and a queue notice's first message
(each is a whole message the user waits for), then interim edits and queue-position edits (they
coalesce: a later one carries everything an earlier one would have shown), then typing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, Protocol, TypeVar

from bot import metrics
from bot.backoff import Backoff
from bot.errors import DeliveryError, RetryAfter
from bot.splitter import Cut, cut_first
from bot.types import RateBudget, TargetLimits, TextTarget

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MARKER = " ▌"

GLOBAL_WINDOW_S = 1.0  # platforms count a bot's requests per second
# The burst of every bucket: a short reply's first message and final edit go out back to back.
SHORT_REPLY_CALLS = 2.0

_INTERIM_RESERVE = 1.0  # tokens an interim edit leaves in its chat bucket
_BACKOFF_INITIAL_S = 0.5  # first wait after a network error; doubles up to _BACKOFF_MAX_S
_BACKOFF_MAX_S = 8.0
_MAX_RESENDS = 3  # parts sent again after their message was refused, per reply
_MAX_UNREADABLE = 2  # retries of a call whose answer the platform library could not read
_NETWORK_TRIES = 3  # attempts of a budgeted call (a notice) through network failures
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


class Priority(IntEnum):
    """Which waiting call gets its tokens first (lowest value); see the module docstring."""

    FIRST = 0  # a reply's first message: its chat shows nothing yet
    COMPLETE = 1  # a final edit, a full part, the first message of the next part
    NOTICE = 2  # a notice, a command answer, a voice upload, a queue notice's first message
    UPDATE = 3  # an interim edit, a queue notice's new position or its removal: coalesced
    TYPING = 4  # a typing indicator: made only when nothing waits (`EditScheduler.offer`)


class Budgeted(Protocol):
    """Where a call goes: its chat's bucket key and the limits of that chat and platform."""

    @property
    def chat_key(self) -> str: ...

    @property
    def limits(self) -> TargetLimits: ...


class _Bucket:
    """A token bucket; no token is granted before `paused_until` (a 429's retry_after)."""

    __slots__ = ("burst", "paused_until", "rate", "stamp", "streams", "tokens", "unshown")

    def __init__(self, budget: RateBudget, now: float) -> None:
        self.rate = budget.rate
        self.burst = budget.burst
        self.tokens = budget.burst
        self.stamp = now
        self.paused_until = -math.inf
        self.streams = 0  # open streams drawing on it
        self.unshown = 0  # open replies that show nothing yet: each needs a token soon

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
    urgency: Priority
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
        self.queue_notices = QueueNotices(self)

    def open(self, target: TextTarget, *, marker: str = DEFAULT_MARKER) -> ReplyStream:
        """Start showing a reply in `target` (must be called from the event loop)."""
        return ReplyStream(self, target, self._lane(target), marker)

    async def call(
        self,
        where: Budgeted,
        make: Callable[[], Awaitable[T]],
        *,
        priority: Priority = Priority.NOTICE,
        what: str = "notice",
    ) -> T:
        """Make one platform call (`await make()`) under `where`'s budgets, at `priority`.

        A 429 (`RetryAfter`) pauses the bucket it names and the call is made again after the
        pause; a network failure (`OSError`) is retried after a backoff, `_NETWORK_TRIES` times
        in all. Past `final_deadline_s` without success: `DeliveryError`. A refusal
        (`DeliveryError`) or any other error is raised at once. `what` labels metrics and logs.
        """
        lane = self._lane(where)
        platform_key = where.limits.platform_key
        deadline = self.clock.now() + self.final_deadline_s
        backoff = Backoff(_BACKOFF_INITIAL_S, _BACKOFF_MAX_S, jitter=0.0)
        failures = 0
        lane.chat.streams += 1  # the chat's bucket is in use: it must not be forgotten meanwhile
        try:
            while True:
                request = self._request(lane, priority, deadline)
                try:
                    await self._acquire(request)
                except _Expired:
                    log.warning(
                        "%s in %s not delivered within %g s: giving up",
                        what,
                        where.chat_key,
                        self.final_deadline_s,
                    )
                    raise DeliveryError(
                        f"{what} not delivered within {self.final_deadline_s:g} s"
                    ) from None
                metrics.PLATFORM_CALLS.labels(platform_key, what).inc()
                try:
                    return await make()
                except RetryAfter as exc:
                    metrics.RATE_LIMITED.labels(platform_key).inc()
                    log.info(
                        "429 on a %s in %s: retrying after %.2f s",
                        what,
                        where.chat_key,
                        exc.retry_after,
                    )
                    self._pause(lane, exc)
                except OSError as exc:
                    failures += 1
                    if failures >= _NETWORK_TRIES:
                        raise
                    wait = min(backoff.next(), max(0.0, deadline - self.clock.now()))
                    log.info(
                        "%s in %s failed (%s): retrying in %.1f s", what, where.chat_key, exc, wait
                    )
                    await self.clock.sleep(wait)
        finally:
            lane.chat.streams -= 1

    async def offer(
        self, where: Budgeted, make: Callable[[], Awaitable[object]], *, what: str = "typing"
    ) -> bool:
        """Make a call that is worth nothing late (a typing indicator) only if it costs no text.

        It goes at once when no call waits for the platform's bucket and that bucket keeps, after
        it, a token for every open reply that shows nothing yet (at least one token); otherwise
        it is skipped and False returned. It draws on the
        platform bucket only: Telegram counts messages per chat (a chat action is none) and
        Discord's typing route has a bucket of its own, but both count it bot-wide. A 429
        pauses the platform bucket when global; a typing route's own 429 is no reason to
        delay the chat's text, so it only skips.
        """
        lane = self._lane(where)
        bucket = lane.platform
        now = self.clock.now()
        # A reply that shows nothing yet will want a token as soon as its first token comes
        # (it is why the indicator is asked for): those tokens must stay in the bucket.
        spare = max(bucket.reserve, float(bucket.unshown))
        if bucket.ready_at(now, 1.0 + spare) > now or self._waiting_on(bucket):
            return False
        bucket.take(now)
        metrics.PLATFORM_CALLS.labels(where.limits.platform_key, what).inc()
        try:
            await make()
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(where.limits.platform_key).inc()
            if exc.is_global:
                self._pause(lane, exc)
            return False
        return True

    def _lane(self, where: Budgeted) -> _Lane:
        """The buckets of `where`'s chat and platform, created (or updated) as needed."""
        limits = where.limits
        now = self.clock.now()
        for key in [key for key, bucket in self._chats.items() if bucket.idle(now)]:
            del self._chats[key]
        platform = self._platforms.get(limits.platform_key)
        if platform is None:
            platform = self._platforms[limits.platform_key] = _Bucket(limits.platform, now)
        else:
            platform.update(limits.platform)
        chat_key = (limits.platform_key, where.chat_key)
        chat = self._chats.get(chat_key)
        if chat is None:
            chat = self._chats[chat_key] = _Bucket(limits.chat, now)
        else:
            chat.update(limits.chat)
        return _Lane(chat, platform)

    def _waiting_on(self, bucket: _Bucket) -> bool:
        """Whether a call waits for a token of `bucket`."""
        return any(
            not r.granted.done() and bucket in (r.lane.chat, r.lane.platform) for r in self._pending
        )

    # --- used by ReplyStream ------------------------------------------------------------------

    def _request(self, lane: _Lane, urgency: Priority, deadline: float) -> _Request:
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
        request.urgency = min(request.urgency, Priority.COMPLETE)
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
            need = 1.0 + (chat.reserve if request.urgency is Priority.UPDATE else 0.0)
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
        lane.platform.unshown += 1
        self._unshown = True
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
            self._shows_something()

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
                self._shows_something()
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

    def _shows_something(self) -> None:
        """The reply's first message is out (or the reply ended): it needs no token soon."""
        if self._unshown:
            self._unshown = False
            self._lane.platform.unshown -= 1

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
    pause; a refused edit (the message was deleted) posts it anew, `_MAX_RESENDS` times at most.
    """

    def __init__(
        self,
        scheduler: EditScheduler,
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
        self._backoff = Backoff(_BACKOFF_INITIAL_S, _BACKOFF_MAX_S, jitter=0.0)

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
        lane = scheduler._lane(self._where)
        lane.chat.streams += 1
        try:
            while (step := self._step()) is not None:
                # The first message is news to the user; edits and the removal coalesce.
                priority = Priority.NOTICE if step[0] == "post" else Priority.UPDATE
                await scheduler._acquire(scheduler._request(lane, priority, math.inf))
                step = self._step()  # what changed while waiting goes into this call
                if step is None:
                    scheduler._refund(lane)
                    break
                await self._perform(lane, step)
        finally:
            lane.chat.streams -= 1
            self._task = None
            if self._on_idle is not None:
                self._on_idle()

    async def _perform(self, lane: _Lane, step: _LatestStep) -> None:
        kind, text = step
        platform_key = self._where.limits.platform_key
        metrics.PLATFORM_CALLS.labels(platform_key, f"{self._what}_{kind}").inc()
        self._in_call = True
        try:
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
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(platform_key).inc()
            log.info(
                "429 on a %s message in %s: retrying after %.2f s",
                self._what,
                self._where.chat_key,
                exc.retry_after,
            )
            self._scheduler._pause(lane, exc)
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

    def _refused(self, kind: str, exc: DeliveryError) -> None:
        if kind == "post" or exc.reason == "forbidden":
            log.info("%s message not shown in %s: %s", self._what, self._where.chat_key, exc)
            self._stopped = True
            return
        # The message is gone (deleted by a user, too old): an edit posts it anew.
        self._message = self._shown = None
        if kind == "edit":
            self._resends += 1
            if self._resends > _MAX_RESENDS:
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

    def __init__(self, scheduler: EditScheduler) -> None:
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

    def _forget_if_idle(self, key: tuple[str, str]) -> None:
        chat = self._chats.get(key)
        if chat is not None and not chat.turns and chat.message.idle:
            del self._chats[key]


def _chat_of(where: Budgeted) -> tuple[str, str]:
    return (where.limits.platform_key, where.chat_key)
