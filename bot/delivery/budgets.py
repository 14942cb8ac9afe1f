"""Budgets: the buckets every platform call draws on, and the order waiting calls go in.

One `BudgetScheduler` serves the whole bot: a call costs a token from its chat's bucket (a token
bucket) and a place in its platform's window (a sliding window, exact to the platform's count),
granted by `Priority`, then first come, first served. How budgets, priorities and 429 pauses
work, and why: docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import operator
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

from bot import metrics
from bot.backoff import Backoff
from bot.errors import DeliveryError, RetryAfter
from bot.types import RateBudget, TargetLimits

log = logging.getLogger(__name__)

T = TypeVar("T")

GLOBAL_WINDOW_S = 1.0  # platforms count a bot's requests per second
# The burst of every bucket: a short reply's first message and final edit go out back to back.
SHORT_REPLY_CALLS = 2.0

# Retries, shared by the reply streams and queue notices.
BACKOFF_INITIAL_S = 0.5  # first wait after a network error; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
MAX_RESENDS = 3  # parts (or notices) sent again after their message was refused, per reply

_INTERIM_RESERVE = 1.0  # tokens an interim edit leaves in its chat bucket
# Places of each platform window kept for typing indicators, out of text's reach: the platforms
# count indicators bot-wide, and a place stays taken for a whole window, so an indicator taking
# one of text's places could hold back a reply's text by up to a window. Two, as many as the old
# shared bucket's burst let through at once; only a window that still leaves text a short
# reply's calls has them.
TYPING_PLACES = 2
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
    """A chat's token bucket that lets at most `calls` through in any `window_s` seconds.

    A bucket admits up to `burst + rate * window` calls in a window, so the burst is carved out
    of the window's allowance: the limit holds whether the platform counts in fixed or sliding
    windows, and as platforms count half-open windows, one call of headroom remains for network
    jitter (calls spaced here can arrive closer together). Below 2 calls per window a positive
    rate needs one call of slack.
    """
    burst = max(1.0, min(SHORT_REPLY_CALLS, calls / 2))
    rate = max(calls - burst, calls / 2) / window_s
    return RateBudget(rate=rate, burst=burst)


def platform_budget(calls: float, window_s: float) -> RateBudget:
    """A platform's bot-wide budget: `calls` in any `window_s` seconds, all at once if need be.

    The scheduler keeps a platform's budget as sliding windows (`Window`) of `burst` calls per
    `burst / rate` seconds, so this is the whole window's count as the burst.
    """
    return RateBudget(rate=calls / window_s, burst=calls)


def platform_windows(budget: RateBudget) -> tuple[int, int, float]:
    """A platform budget's places for text and for typing indicators, and their window's length.

    `burst` calls per `burst / rate` seconds (at least one, at no more than `rate` a second),
    of which `TYPING_PLACES` are the indicators' when text keeps `SHORT_REPLY_CALLS` of them.
    """
    calls = max(1, math.floor(budget.burst + _TOKEN_SLACK))
    typing = TYPING_PLACES if calls - TYPING_PLACES >= SHORT_REPLY_CALLS else 0
    return calls - typing, typing, calls / budget.rate


class Priority(IntEnum):
    """Which waiting call gets its tokens first (lowest value); see docs/delivery.md."""

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


class Bucket:
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
        """Spend a token (the caller checked `ready_at`)."""
        self._refill(now)
        self.tokens -= 1.0

    def refund(self) -> None:
        """Give back a token that bought no call."""
        self.tokens = min(self.burst, self.tokens + 1.0)

    def idle(self, now: float) -> bool:
        """Unused and full: forgetting it changes nothing."""
        self._refill(now)
        return self.streams == 0 and self.tokens >= self.burst and now >= self.paused_until


class Window:
    """At most `calls` calls in any `window_s` seconds, each counted until `window_s` after its
    answer; no place is granted before `paused_until` (a global 429).

    A call takes its place when it is granted and keeps it until `window_s` after its answer
    came (`answered`). The platform counts a call when it arrives, after the grant and before
    the answer, so however late calls reach the platform, no window of `window_s` on the
    platform's clock holds more than `calls` of them. A call given back unmade (`refund`) frees
    its place at once.

    Paced calls (notices and interim edits) are spaced `window_s / calls` apart once half the
    window is taken: places taken in a burst come free in a burst one window later, so a window
    that a burst of queue notices or interim edits filled would keep the replies' first and
    final texts that come a moment later waiting for most of a window, while spaced calls free
    a place every `window_s / calls`. Only the calls that show a reply's first text or complete
    one (`FIRST`, `COMPLETE`) may take the second half at once.
    """

    __slots__ = ("_answers", "_next_paced", "calls", "in_flight", "paused_until", "window_s")

    def __init__(self, calls: int, window_s: float) -> None:
        self.calls = calls
        self.window_s = window_s
        self.in_flight = 0  # granted calls not answered yet
        self._answers: deque[float] = deque()  # when calls were answered, oldest first
        self._next_paced = -math.inf  # the earliest moment of the next paced call
        self.paused_until = -math.inf

    def update(self, calls: int, window_s: float) -> None:
        """Adopt a new budget (the settings changed); the calls already counted stay counted."""
        self.calls, self.window_s = calls, window_s

    def _expire(self, now: float) -> None:
        answers = self._answers
        while answers and answers[0] + self.window_s <= now:
            answers.popleft()

    def ready_at(self, now: float, *, paced: bool = False) -> float:
        """When a place will be free that a pause (and for a `paced` call, the pace) does not
        hold back; inf: not before a call in flight is answered."""
        self._expire(now)
        taken = self.in_flight + len(self._answers)
        over = taken + 1 - self.calls  # places to wait for
        if over <= 0:
            ready = now
        elif over <= len(self._answers):
            ready = self._answers[over - 1] + self.window_s
        else:
            ready = math.inf
        if paced and 2 * taken >= self.calls:
            ready = max(ready, self._next_paced)
        return max(ready, self.paused_until)

    def take(self, now: float, *, paced: bool = False) -> None:
        """Take a place for a call (the caller checked `ready_at`)."""
        self._expire(now)
        self.in_flight += 1
        if paced:
            self._next_paced = max(self._next_paced, now) + self.window_s / self.calls

    def answered(self, now: float) -> None:
        """A granted call was answered (or failed): its place frees `window_s` from now."""
        if self.in_flight > 0:
            self.in_flight -= 1
            self._answers.append(now)

    def refund(self) -> None:
        """Give back the place of a call that was not made."""
        self.in_flight = max(0, self.in_flight - 1)


@dataclass(frozen=True, slots=True)
class Lane:
    """What every call of one chat draws on: its chat's bucket and its platform's text window;
    typing indicators take a place of the platform's `typing` window instead."""

    chat: Bucket
    platform: Window
    typing: Window


@dataclass(eq=False, slots=True)
class Request:
    """A call waiting for its tokens."""

    lane: Lane
    urgency: Priority
    seq: int
    deadline: float
    granted: asyncio.Future[None]


_ORDER = operator.attrgetter("urgency", "seq")  # urgency first, then first come, first served


class Expired(Exception):
    """A request's deadline passed before its tokens came."""


class BudgetScheduler:
    """Budgets shared by all platform calls: a `Bucket` per chat_key, a `Window` per platform_key.

    `EditScheduler` (bot.delivery.scheduler) adds the reply streams and queue notices on top.
    """

    def __init__(self, clock: Clock | None = None, *, final_deadline_s: float = 60.0) -> None:
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.final_deadline_s = final_deadline_s
        self._chats: dict[tuple[str, str], Bucket] = {}
        self._platforms: dict[str, tuple[Window, Window]] = {}  # text's and typing's
        self._pending: list[Request] = []
        self._seq = itertools.count()
        self._kick = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._next_look = math.inf

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
        lane = self.lane(where)
        platform_key = where.limits.platform_key
        deadline = self.clock.now() + self.final_deadline_s
        backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S, jitter=0.0)
        failures = 0
        lane.chat.streams += 1  # the chat's bucket is in use: it must not be forgotten meanwhile
        try:
            while True:
                request = self.request(lane, priority, deadline)
                try:
                    await self.acquire(request)
                except Expired:
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
                    return await self.counted(lane.platform, make())
                except RetryAfter as exc:
                    metrics.RATE_LIMITED.labels(platform_key).inc()
                    log.info(
                        "429 on a %s in %s: retrying after %.2f s",
                        what,
                        where.chat_key,
                        exc.retry_after,
                    )
                    self.pause(lane, exc)
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

        It goes at once when a place of the platform's typing window is free, no call waits for
        the platform's text window and no global 429 pauses it; otherwise it is skipped and
        False returned. The typing window's places are never text's (`TYPING_PLACES`): Telegram
        counts messages per chat (a chat action is none) and Discord's typing route has a
        bucket of its own, but both count indicators bot-wide. A 429 pauses the platform when
        global; a typing route's own 429 is no reason to delay the chat's text, so it only skips.
        """
        lane = self.lane(where)
        now = self.clock.now()
        ready = max(lane.typing.ready_at(now), lane.platform.paused_until)
        if ready > now or self._waiting_on(lane.platform):
            return False
        lane.typing.take(now)
        metrics.PLATFORM_CALLS.labels(where.limits.platform_key, what).inc()
        try:
            await self.counted(lane.typing, make())
        except RetryAfter as exc:
            metrics.RATE_LIMITED.labels(where.limits.platform_key).inc()
            if exc.is_global:
                self.pause(lane, exc)
            return False
        return True

    def lane(self, where: Budgeted) -> Lane:
        """The buckets of `where`'s chat and platform, created (or updated) as needed."""
        limits = where.limits
        now = self.clock.now()
        for key in [key for key, bucket in self._chats.items() if bucket.idle(now)]:
            del self._chats[key]
        text_calls, typing_calls, window_s = platform_windows(limits.platform)
        windows = self._platforms.get(limits.platform_key)
        if windows is None:
            windows = self._platforms[limits.platform_key] = (
                Window(text_calls, window_s),
                Window(typing_calls, window_s),
            )
        else:
            windows[0].update(text_calls, window_s)
            windows[1].update(typing_calls, window_s)
        chat_key = (limits.platform_key, where.chat_key)
        chat = self._chats.get(chat_key)
        if chat is None:
            chat = self._chats[chat_key] = Bucket(limits.chat, now)
        else:
            chat.update(limits.chat)
        return Lane(chat, *windows)

    def _waiting_on(self, bucket: Bucket | Window) -> bool:
        """Whether a call waits for a token of `bucket`."""
        return any(
            not r.granted.done() and bucket in (r.lane.chat, r.lane.platform) for r in self._pending
        )

    # --- used by the reply streams and queue notices -----------------------------------------

    def request(self, lane: Lane, urgency: Priority, deadline: float) -> Request:
        """A call on `lane` that will wait for its tokens (pass it to `acquire`)."""
        future = asyncio.get_running_loop().create_future()
        return Request(lane, urgency, next(self._seq), deadline, future)

    async def acquire(self, request: Request) -> None:
        """Wait until `request` holds a token of both its buckets; `Expired` past its deadline."""
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
                self.refund(request.lane)  # granted, but its stream stopped before the call
            self._withdraw(request)
            raise

    def hurry(self, request: Request, deadline: float) -> None:
        """A waiting interim edit now carries the final text."""
        request.urgency = min(request.urgency, Priority.COMPLETE)
        request.deadline = deadline
        self._kick.set()

    def pause(self, lane: Lane, error: RetryAfter) -> None:
        """A 429: no token of the bucket it names (the chat's, or the platform's) until it ends."""
        bucket = lane.platform if error.is_global else lane.chat
        bucket.paused_until = max(bucket.paused_until, self.clock.now() + error.retry_after)

    def refund(self, lane: Lane) -> None:
        """Give back the tokens of a grant that ended up making no call."""
        lane.chat.refund()
        lane.platform.refund()
        self._kick.set()

    async def counted(self, window: Window, call: Awaitable[T]) -> T:
        """Make a granted call: its place in `window` counts until a window after its answer."""
        try:
            return await call
        finally:
            window.answered(self.clock.now())
            if self._pending:  # the place frees at a new moment: the dispatcher looks again
                self._kick.set()

    # --- granting -----------------------------------------------------------------------------

    def _withdraw(self, request: Request) -> None:
        if request in self._pending:
            self._pending.remove(request)
        self._kick.set()

    def _grant(self) -> float:
        """Grant, in order, every waiting call whose buckets have a token; when to look again."""
        now = self.clock.now()
        look = math.inf
        waiting: list[Request] = []
        # A bucket short of tokens holds back every later call on it (FIFO), so each bucket is
        # asked once per pass: a pass costs O(waiting calls) even when hundreds wait.
        blocked: set[Bucket | Window] = set()
        for request in sorted(self._pending, key=_ORDER):
            if request.granted.done():  # its stream was cancelled
                continue
            if now >= request.deadline:
                request.granted.set_exception(Expired())
                continue
            waiting.append(request)
            look = min(look, request.deadline)
            chat, platform = request.lane.chat, request.lane.platform
            if chat in blocked or platform in blocked:
                continue
            # Interim edits leave a token in their chat (reserve). Notices and interim edits
            # are paced bot-wide (`Window`); every later call in this order is one of them too,
            # so a paced one that must wait rightly holds back the rest.
            paced = request.urgency >= Priority.NOTICE
            need = 1.0 + (chat.reserve if request.urgency is Priority.UPDATE else 0.0)
            chat_ready = chat.ready_at(now, need)
            platform_ready = platform.ready_at(now, paced=paced)
            if chat_ready <= now and platform_ready <= now:
                chat.take(now)
                platform.take(now, paced=paced)
                request.granted.set_result(None)
                waiting.pop()
                continue
            for bucket, ready in ((chat, chat_ready), (platform, platform_ready)):
                if ready > now:  # inf (a full window waiting for answers) waits for a kick
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
