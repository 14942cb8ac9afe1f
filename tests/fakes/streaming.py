"""Fakes for reply-streaming simulations: virtual time and a chat platform with rate limits.

`run_virtual` runs a coroutine on an event loop whose clock jumps to the next timer whenever every
task waits, so minutes of platform time pass in milliseconds and every run is deterministic.
`FakePlatform` keeps messages like Discord or Telegram do, records every call with its virtual
time, answers 429 at random or when a window limit is exceeded, and notes every breach of its
rules (a call during a 429 pause, two calls in flight for one message, an oversized text).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import selectors
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from bot.delivery.notices import MessageOps
from bot.errors import DeliveryError, RetryAfter
from bot.types import TargetLimits, TextTarget

T = TypeVar("T")


class SimulationDeadlock(RuntimeError):
    """Every task waits for something that no timer will bring."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; a wait for the next timer advances the loop's clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationDeadlock("every task is waiting and no timer is set")
        self._loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, starting at 0."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on virtual time; cancel whatever it left running."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers))
        loop.close()


# "typing" is an indicator: counted bot-wide only, as Discord's typing route and Telegram's chat
# actions are not a chat's messages.
Op = Literal["send", "edit", "finalize", "delete", "typing"]
Outcome = Literal["ok", "429", "refused", "failed"]


@dataclass(slots=True)
class Call:
    """One request as the platform saw it."""

    at: float  # when it arrived (the streamer had its tokens then)
    done_at: float  # when its answer reached the bot
    op: Op
    chat_key: str
    message_id: str | None
    text: str
    outcome: Outcome


@dataclass(slots=True)
class Message:
    chat_key: str
    label: str  # the FakeTarget that sent it: one reply, when each reply has its own target
    text: str
    draft: bool = False
    finalized: list[str] = field(default_factory=list)  # the text of every finalize call
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    """A hard limit: at most `calls` accepted in any `window_s`, per chat or per platform."""

    scope: Literal["chat", "global"]
    calls: int
    window_s: float


class FakePlatform:
    """The messages of many chats and every call made to them."""

    def __init__(
        self,
        *,
        latency_s: tuple[float, float] = (0.05, 0.05),
        retry_after_ratio: float = 0.0,
        retry_after_s: tuple[float, float] = (0.2, 2.0),
        global_ratio: float = 0.05,
        windows: tuple[Window, ...] = (),
        drafts: bool = False,
        seed: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.retry_after_ratio = retry_after_ratio
        self.retry_after_s = retry_after_s
        self.global_ratio = global_ratio
        self.windows = windows
        self.drafts = drafts
        self.rng = random.Random(seed)
        # Typing indicators draw their latencies from their own stream, so a run with them
        # gives the text calls the same latencies as a run without.
        self._typing_rng = random.Random(seed + 1)
        self.messages: dict[str, Message] = {}
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.failures: deque[Exception] = deque()  # raised by the next calls, in order
        self._ids = itertools.count(1)
        self._in_flight: set[str] = set()
        self._paused_until: dict[str, float] = {}  # by chat key, or platform key when global
        self._accepted: dict[tuple[str, str], deque[float]] = {}

    def target(self, chat_key: str, limits: TargetLimits, label: str = "") -> FakeTarget:
        return FakeTarget(self, chat_key, limits, label or chat_key)

    def gone(self, message_id: str) -> None:
        """Someone deleted the message: edits of it are refused from now on."""
        self.messages[message_id].deleted = True

    def ok_calls(self, chat_key: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.outcome == "ok" and chat_key in (None, c.chat_key)]

    async def call(
        self, target: FakeTarget, op: Op, message_id: str | None, text: str = ""
    ) -> str | None:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        chat = target.chat_key
        self._check_rules(target, op, message_id, text, arrived)
        latency = (self._typing_rng if op == "typing" else self.rng).uniform(*self.latency_s)
        # The platform counts a request when it arrives, as a real one does: a call answered
        # late still took its place in the window of its arrival.
        failure = self.failures.popleft() if self.failures else None
        if failure is None:
            failure = self._rate_limited(target, op, arrived)
        if failure is None:
            self._note_accepted(target, op, arrived)
        if message_id is not None:
            self._in_flight.add(message_id)
        try:
            await asyncio.sleep(latency)
        finally:
            if message_id is not None:
                self._in_flight.discard(message_id)
        answered = loop.time()

        def record(outcome: Outcome) -> None:
            self.calls.append(Call(arrived, answered, op, chat, message_id, text, outcome))

        if isinstance(failure, RetryAfter):
            scope = target.limits.platform_key if failure.is_global else chat
            self._paused_until[scope] = answered + failure.retry_after
            record("429")
            raise failure
        if failure is not None:
            record("failed")
            raise failure
        if message_id is not None and self.messages[message_id].deleted:
            record("refused")
            raise DeliveryError("message to edit not found")
        record("ok")
        return self._apply(target, op, message_id, text)

    def _check_rules(
        self, target: FakeTarget, op: Op, message_id: str | None, text: str, now: float
    ) -> None:
        chat, platform = target.chat_key, target.limits.platform_key
        paused = self._paused_until.get(platform, -1.0)
        if op != "typing":
            paused = max(paused, self._paused_until.get(chat, -1.0))
        if now < paused:
            self.violations.append(f"{now:.3f}: {op} in {chat} during a 429 pause")
        if message_id is not None and message_id in self._in_flight:
            self.violations.append(f"{now:.3f}: {op} of {message_id} while another is in flight")
        if op not in ("delete", "typing") and not text.strip():
            self.violations.append(f"{now:.3f}: {op} with a blank text")
        if len(text) > target.limits.max_chars:
            self.violations.append(f"{now:.3f}: {op} with {len(text)} chars")

    def _rate_limited(self, target: FakeTarget, op: Op, now: float) -> RetryAfter | None:
        """A 429 for a call over a window limit, or by chance (`retry_after_ratio`)."""
        for window in self._windows_of(op):
            times = self._accepted.setdefault(_window_key(window, target), deque())
            while times and times[0] <= now - window.window_s:
                times.popleft()
            if len(times) >= window.calls:
                wait = times[0] + window.window_s - now
                return RetryAfter(wait, is_global=window.scope == "global")
        rng = self._typing_rng if op == "typing" else self.rng
        if rng.random() < self.retry_after_ratio:
            wait = rng.uniform(*self.retry_after_s)
            return RetryAfter(wait, is_global=rng.random() < self.global_ratio)
        return None

    def _note_accepted(self, target: FakeTarget, op: Op, now: float) -> None:
        for window in self._windows_of(op):
            self._accepted.setdefault(_window_key(window, target), deque()).append(now)

    def _windows_of(self, op: Op) -> tuple[Window, ...]:
        if op == "typing":
            return tuple(w for w in self.windows if w.scope == "global")
        return self.windows

    def _apply(self, target: FakeTarget, op: Op, message_id: str | None, text: str) -> str | None:
        if op == "typing":
            return None
        if op == "send":
            new_id = str(next(self._ids))
            self.messages[new_id] = Message(target.chat_key, target.label, text, self.drafts)
            return new_id
        assert message_id is not None
        message = self.messages[message_id]
        if op == "edit":
            message.text = text
        elif op == "delete":
            message.deleted = True
        elif message.draft:  # a draft is replaced by the real message
            message.deleted = True
            message.finalized.append(text)
            real_id = str(next(self._ids))
            self.messages[real_id] = Message(
                message.chat_key, message.label, text, finalized=[text]
            )
            return real_id
        else:
            message.text = text
            message.finalized.append(text)
        return message_id


def _window_key(window: Window, target: FakeTarget) -> tuple[str, str]:
    scope = target.limits.platform_key if window.scope == "global" else target.chat_key
    return (window.scope, scope)


class FakeTarget:
    """One chat of a `FakePlatform`, as an adapter's `TextTarget`."""

    def __init__(
        self, platform: FakePlatform, chat_key: str, limits: TargetLimits, label: str
    ) -> None:
        self.platform = platform
        self.label = label
        self._chat_key = chat_key
        self._limits = limits

    @property
    def chat_key(self) -> str:
        return self._chat_key

    @property
    def limits(self) -> TargetLimits:
        return self._limits

    async def send(self, text: str) -> str:
        message_id = await self.platform.call(self, "send", None, text)
        assert message_id is not None
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        await self.platform.call(self, "edit", message_id, text)

    async def finalize(self, message_id: str, text: str) -> str:
        final_id = await self.platform.call(self, "finalize", message_id, text)
        assert final_id is not None
        return final_id

    async def delete(self, message_id: str) -> None:
        await self.platform.call(self, "delete", message_id)

    async def typing(self) -> None:
        await self.platform.call(self, "typing", None)

    # `bot.delivery.notices.MessageOps`, for queue notices: the same calls.

    async def post(self, text: str) -> str:
        return await self.send(text)


# The reply streamer takes any TextTarget, queue notices any MessageOps: mypy fails here if this
# fake drifts from them.
_IS_A_TEXT_TARGET: type[TextTarget] = FakeTarget
_ARE_MESSAGE_OPS: type[MessageOps] = FakeTarget
