"""Many conversations at once through the real adapters: achieved latencies against the budgets.

Each conversation is one private chat (Telegram) or DM channel (Discord) with one question; the
fake LLM streams every reply for 7 s (140 words at 20 words/s). The platform fakes enforce the
platforms' limits and answer 429 past them (Telegram: 3 + 1/s per chat, 30/s overall, every
method counted; Discord: 5 per 5 s per channel, 50/s overall, typing included). Conversations
arrive all at once or as a Poisson stream (mean span 10 s, seeded). The LLM is an external
llama.cpp server advertising 64 slots at /props, llm.concurrency unset (`--slots`).

Measured per conversation, on the fakes' clocks (the same process, the same monotonic clock):
- first text: first token leaving the LLM -> the platform receiving the reply's first message;
- final text: last token leaving the LLM -> the platform receiving the complete text;
- updates/s: the reply's writes the platform received while its tokens streamed;
- 429s of any method.

Against what the budgets allow for the same arrivals (`Bounds`, computed from the measured token
times and Parley's budgets, no network time): the earliest each first message and each final
text could leave if nothing else were sent (first messages before finals, first come first
served, as Parley orders them), and the most updates per second the chat buckets and the
bot-wide window leave each conversation. The ratio achieved/bound is printed beside each figure.

The targets, checked at 50 conversations at once; the run exits 1 if one is missed: Telegram
first text p95 <= 1.1 x its bound, final text p95 < 1.9 s, >= 0.54 updates/s per chat; Discord
first text p95 <= 1.1 s; 0 x 429 at every level; every reply complete.

    .venv/bin/python bench/bench_load.py --platform telegram,discord --chats 1,10,50,200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits
from adapters.telegram.config import TelegramSettings
from adapters.telegram.targets import chat_limits
from bot.delivery.budgets import platform_windows
from bot.types import RateBudget, TargetLimits
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    QUEUE_NOTICE_PREFIX,
    discord_bot,
    discord_settings,
    telegram_bot,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI, FloodControl

WORDS = 140
WORDS_PER_S = 20.0  # a 7 s reply
POISSON_SPAN_S = 10.0  # Poisson arrivals: N conversations over this long on average
DEADLINE_S = 600.0  # a run gives up after this
FIRST_USER_ID = 50_000
DISCORD_CHANNEL_LIMIT = (5, 5.0)  # what the Discord fake enforces per channel ...
DISCORD_GLOBAL_LIMIT = (50, 1.0)  # ... and for the whole bot
TELEGRAM_WRITES = {"sendmessage", "editmessagetext", "sendmessagedraft"}
# The targets, for 50 conversations at once.
ACCEPT_CHATS = 50
TELEGRAM_FIRST_P95_FACTOR = 1.1  # x the budgets' bound
TELEGRAM_FINAL_P95_S = 1.9
TELEGRAM_UPDATES_PER_S = 0.54
DISCORD_FIRST_P95_S = 1.1
# The acceptance's LLM: an external llama.cpp server advertising 64 slots at /props, with no
# llm.concurrency set (Parley asks it). Past 64 conversations the rest wait in line.
EXTERNAL_SLOTS = 64


@dataclass
class Chat:
    """One conversation as measured."""

    question: str
    reply: str
    first_token: float = 0.0
    last_token: float = 0.0
    first_text: float | None = None
    final_text: float | None = None
    updates: int = 0


@dataclass
class Run:
    """One platform, one level, one arrival pattern."""

    platform: str
    chats: int
    arrival: str
    limits: TargetLimits
    conversations: list[Chat] = field(default_factory=list)
    rate_limited: int = 0
    limited_calls: list[str] = field(default_factory=list)  # what got the 429s, for the report
    seconds: float = 0.0

    @property
    def complete(self) -> int:
        return sum(c.final_text is not None for c in self.conversations)


# --- bounds from the budgets ------------------------------------------------------------------


class _Bucket:
    """A token bucket, full at the start (as Parley's are)."""

    def __init__(self, budget: RateBudget) -> None:
        self.rate, self.burst = budget.rate, budget.burst
        self.tokens, self.stamp = budget.burst, -1e9

    def ready(self, now: float) -> float:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        return now if tokens >= 1.0 - 1e-9 else now + (1.0 - tokens) / self.rate

    def take(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - 1.0
        self.stamp = now


class _Window:
    """A platform's places for text: `calls` in any `window_s`, counted from their grants;
    interim edits (`paced`) spaced `window_s / calls` apart once half the window is taken."""

    def __init__(self, budget: RateBudget) -> None:
        self.calls, _, self.window_s = platform_windows(budget)
        self.taken: deque[float] = deque()
        self.next_paced = -1e9

    def ready(self, now: float, *, paced: bool = False) -> float:
        while self.taken and self.taken[0] + self.window_s <= now:
            self.taken.popleft()
        ready = now if len(self.taken) < self.calls else self.taken[0] + self.window_s
        return max(ready, self.next_paced) if paced and 2 * len(self.taken) >= self.calls else ready

    def take(self, now: float, *, paced: bool = False) -> None:
        self.taken.append(now)
        if paced:
            self.next_paced = max(self.next_paced, now) + self.window_s / self.calls


def earliest(
    calls: list[tuple[float, int, int]],
    limits: TargetLimits,
    covers: dict[int, int] | None = None,
) -> list[float]:
    """When each call could leave at the earliest: `(ready_at, priority, chat)` each.

    Waiting calls go by priority, then first come, first served, each when both its chat's and
    the platform's bucket hold a token: the order Parley's scheduler keeps. `covers[i] = j`:
    call i, made once call j is ready, makes j too (a first message that leaves after the
    reply's last token shows the final text at once).
    """
    covers = covers or {}
    done: set[int] = set()
    platform = _Window(limits.platform)
    chats: dict[int, _Bucket] = defaultdict(lambda: _Bucket(limits.chat))
    order = sorted(range(len(calls)), key=lambda i: calls[i][0])
    leaves = [0.0] * len(calls)
    waiting: list[tuple[int, float, int]] = []
    now, nxt = -1e9, 0
    while nxt < len(order) or waiting:
        while nxt < len(order) and calls[order[nxt]][0] <= now:
            i = order[nxt]
            if i not in done:
                heapq.heappush(waiting, (calls[i][1], calls[i][0], i))
            nxt += 1
        granted = None
        if waiting and platform.ready(now) <= now:
            for entry in sorted(waiting):
                if chats[calls[entry[2]][2]].ready(now) <= now:
                    granted = entry
                    break
        if granted is not None:
            waiting.remove(granted)
            heapq.heapify(waiting)
            i = granted[2]
            platform.take(now)
            chats[calls[i][2]].take(now)
            leaves[i] = now
            covered = covers.get(i)
            if covered is not None and calls[covered][0] <= now:
                leaves[covered] = now
                done.add(covered)
                waiting = [entry for entry in waiting if entry[2] != covered]
                heapq.heapify(waiting)
            continue
        moments = [calls[order[nxt]][0]] if nxt < len(order) else []
        if waiting:
            moments.append(platform.ready(now))
            moments.extend(chats[calls[e[2]][2]].ready(now) for e in waiting)
        later = [m for m in moments if m > now]
        now = min(later) if later else now
    return leaves


def most_updates(windows: list[tuple[float, float]], limits: TargetLimits) -> list[float]:
    """The most writes per second each conversation could get while its tokens stream.

    Every conversation writes whenever its chat's bucket and the platform's window allow (paced,
    as interim edits are), the one that wrote longest ago first; once its tokens end it still
    needs its final edit, which goes first (as Parley's do): a max-min fair share of what the
    budgets leave.
    """
    platform = _Window(limits.platform)
    chats = [_Bucket(limits.chat) for _ in windows]
    counts = [0] * len(windows)
    last = [-1e9] * len(windows)
    finals = set(range(len(windows)))  # final edits still to make
    now = min((start for start, _ in windows), default=0.0)
    while finals:
        due = sorted((z, i) for i in finals if (z := windows[i][1]) <= now)
        active = [i for i, (a, z) in enumerate(windows) if a <= now <= z]
        if platform.ready(now) <= now:
            final = next((i for _, i in due if chats[i].ready(now) <= now), None)
            if final is not None:
                platform.take(now)
                chats[final].take(now)
                finals.discard(final)
                continue
            ready = [i for i in active if chats[i].ready(now) <= now]
            if ready and platform.ready(now, paced=True) <= now:
                i = min(ready, key=lambda j: last[j])
                platform.take(now, paced=True)
                chats[i].take(now)
                counts[i] += 1
                last[i] = now
                continue
        moments = [platform.ready(now), platform.ready(now, paced=True)]
        moments += [chats[i].ready(now) for i in active]
        moments += [chats[i].ready(now) for _, i in due]
        moments += [t for a, z in windows for t in (a, z) if t > now]
        later = [m for m in moments if m > now]
        if not later:
            break
        now = min(later)
    return [n / (z - a) if z > a else 0.0 for n, (a, z) in zip(counts, windows, strict=True)]


FIRST, COMPLETE = 0, 1  # Parley's priorities of a first message and a final edit


@dataclass(frozen=True)
class Bounds:
    """What the budgets allow for a run's arrivals."""

    first: list[float]  # earliest first text after the first token, per conversation
    final: list[float]  # earliest final text after the last token
    updates: list[float]  # most updates per second while streaming

    @staticmethod
    def of(run: Run) -> Bounds:
        chats = run.conversations
        calls = [(c.first_token, FIRST, i) for i, c in enumerate(chats)]
        calls += [(c.last_token, COMPLETE, i) for i, c in enumerate(chats)]
        n = len(chats)
        leaves = earliest(calls, run.limits, covers={i: n + i for i in range(n)})
        first = [leaves[i] - c.first_token for i, c in enumerate(chats)]
        final = [leaves[n + i] - c.last_token for i, c in enumerate(chats)]
        updates = most_updates([(c.first_token, c.last_token) for c in chats], run.limits)
        return Bounds(first, final, updates)


# --- measuring --------------------------------------------------------------------------------


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def arrivals(chats: int, pattern: str, seed: int) -> list[float]:
    """Offsets of the conversations' first messages: all at 0, or a Poisson stream."""
    if pattern == "burst":
        return [0.0] * chats
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(chats):
        offsets.append(at)
        at += rng.expovariate(chats / POISSON_SPAN_S)
    return offsets


def reply_for(question: str) -> str:
    return f"{question}: " + " ".join(f"w{i}" for i in range(WORDS - 1))


def _llm(chats: dict[str, Chat]) -> FakeLLMServer:
    """The fake LLM, noting when each reply's first and last token leave it."""

    def on_chunk(body: dict[str, Any], index: int, total: int) -> None:
        chat = chats[last_user_text(body)]
        now = time.monotonic()
        if index == 0:
            chat.first_token = now
        if index == total - 1:
            chat.last_token = now

    behaviour = Behaviour(
        reply=lambda body: chats[last_user_text(body)].reply,
        delay_s=1 / WORDS_PER_S,
        on_chunk=on_chunk,
    )
    return FakeLLMServer(behaviour=behaviour)


def _score(chat: Chat, writes: list[tuple[float, str]]) -> None:
    """Fill in what the platform showed, from its writes to this chat (time, text)."""
    shown = [(at, text) for at, text in sorted(writes) if not text.startswith(QUEUE_NOTICE_PREFIX)]
    if shown:
        chat.first_text = shown[0][0]
    chat.final_text = next((at for at, text in shown if text.strip() == chat.reply), None)
    chat.updates = sum(chat.first_token <= at <= chat.last_token for at, _ in shown)


class _Completion:
    """Whether every reply's final text has reached the platform, looking at new calls only.

    Checked after every call the fake answers: rescanning every message each time would cost
    the machine more than the bot does at 200 chats.
    """

    def __init__(
        self,
        replies: set[str],
        calls: Callable[[], list[Any]],
        text_of: Callable[[Any], str | None],
    ) -> None:
        """`text_of(call)`: what a call showed ("" for nothing), None while it is unanswered."""
        self._missing = set(replies)
        self._calls = calls
        self._text_of = text_of
        self._seen = 0

    def __call__(self) -> bool:
        calls = self._calls()
        while self._seen < len(calls):
            text = self._text_of(calls[self._seen])
            if text is None:
                break  # looked at again once answered
            self._missing.discard(text)
            self._seen += 1
        return not self._missing


def _discord_text(call: Any) -> str | None:
    """The content a successful Discord write showed, "" for none, None while unanswered."""
    if not call.status:
        return None
    body = call.body if isinstance(call.body, dict) else {}
    return str(body.get("content", "")) if call.status < 300 else ""


async def _arrive(offsets: list[float], send: Callable[[int], Awaitable[None]]) -> None:
    start = time.monotonic()
    for index, offset in enumerate(offsets):
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        await send(index)


def _llm_section(chats: int, slots: int | None) -> dict[str, Any]:
    # With `slots`, the server advertises them and Parley asks (concurrency 0); else one slot
    # per conversation, so that the platforms' budgets are all that is measured.
    return {"concurrency": 0 if slots else chats, "timeout_s": DEADLINE_S}


async def run_telegram(chats: int, pattern: str, seed: int, slots: int | None) -> Run:
    tg = TelegramSettings()
    run = Run("Telegram", chats, pattern, chat_limits(tg, is_private=True))
    by_question = {f"q{i}": Chat(f"q{i}", reply_for(f"q{i}")) for i in range(chats)}
    run.conversations = list(by_question.values())
    flood = FloodControl(every_method=True)
    with tempfile.TemporaryDirectory() as tmp:
        llm = _llm(by_question)
        if slots:
            llm.slots = slots
        async with llm, FakeTelegramAPI(flood=flood) as api:
            settings = telegram_settings(
                Path(tmp),
                api,
                llm.url,
                llm=_llm_section(chats, slots),
                private_rate=tg.private_rate,
                group_rate=tg.group_rate,
                global_rate=tg.global_rate,
            )
            users = [api.user(FIRST_USER_ID + i, f"user{i}") for i in range(chats)]
            async with telegram_bot(settings):
                started = time.monotonic()

                async def send(index: int) -> None:
                    user = users[index]
                    api.send_text(api.private_chat(user), user, run.conversations[index].question)

                replies = {c.reply for c in run.conversations}
                done = _Completion(
                    replies,
                    lambda: api.calls,
                    lambda call: str(call.params.get("text", "")).strip() if call.ok else "",
                )

                await _arrive(arrivals(chats, pattern, seed), send)
                with contextlib.suppress(TimeoutError):  # the table shows what is missing
                    async with asyncio.timeout(DEADLINE_S):
                        await api.until(lambda _: done())
                run.seconds = time.monotonic() - started
            writes: dict[int, list[tuple[float, str]]] = defaultdict(list)
            for call in api.calls:
                if call.method.lower() in TELEGRAM_WRITES and call.ok:
                    writes[call.params["chat_id"]].append((call.at, str(call.params["text"])))
            limited = [c for c in api.calls if c.error is not None and c.error.status == 429]
            run.rate_limited = len(limited)
            run.limited_calls = [f"{c.method} at {c.at:.3f}" for c in limited]
    for chat, user in zip(run.conversations, users, strict=True):
        _score(chat, writes[user["id"]])
    return run


async def run_discord(chats: int, pattern: str, seed: int, slots: int | None) -> Run:
    run = Run("Discord", chats, pattern, channel_limits(DiscordSettings()))
    by_question = {f"q{i}": Chat(f"q{i}", reply_for(f"q{i}")) for i in range(chats)}
    run.conversations = list(by_question.values())
    with tempfile.TemporaryDirectory() as tmp:
        llm = _llm(by_question)
        if slots:
            llm.slots = slots
        fake = FakeDiscord(
            channel_write_limit=DISCORD_CHANNEL_LIMIT, global_limit=DISCORD_GLOBAL_LIMIT
        )
        async with llm, fake:
            defaults = DiscordSettings()
            settings = discord_settings(
                Path(tmp),
                fake,
                llm.url,
                llm=_llm_section(chats, slots),
                channel_edits=defaults.channel_edits,
                channel_window_s=defaults.channel_window_s,
                global_rate=defaults.global_rate,
            )
            users = [FakeUser(FIRST_USER_ID + i, f"user{i}") for i in range(chats)]
            channels = [fake.dm_channel(user) for user in users]
            async with discord_bot(settings):
                started = time.monotonic()

                async def send(index: int) -> None:
                    question = run.conversations[index].question
                    # Posted in its own task: the gateway dispatch is not what arrives late.
                    asyncio.get_running_loop().create_task(
                        fake.post_message(users[index], question, dm=True)
                    )

                replies = {c.reply for c in run.conversations}
                done = _Completion(replies, lambda: fake.calls, _discord_text)

                await _arrive(arrivals(chats, pattern, seed), send)
                limit = time.monotonic() + DEADLINE_S
                while not done() and time.monotonic() < limit:  # the table shows what is missing
                    with contextlib.suppress(TimeoutError):  # the fake's hang guard
                        await fake.wait_until(done)
                run.seconds = time.monotonic() - started
            writes: dict[int, list[tuple[float, str]]] = defaultdict(list)
            for call in fake.calls:
                body = call.body if isinstance(call.body, dict) else {}
                if call.channel_id is not None and call.status < 300 and "content" in body:
                    writes[call.channel_id].append((call.at, str(body["content"])))
            limited = [c for c in fake.calls if c.status == 429]
            run.rate_limited = len(limited)
            run.limited_calls = [f"{c.method} {c.path} at {c.at:.3f}" for c in limited]
    for chat, channel in zip(run.conversations, channels, strict=True):
        _score(chat, writes[channel])
    return run


# --- report -----------------------------------------------------------------------------------


def _vs(achieved: float, bound: float) -> str:
    """`achieved (bound, ratio)`; no ratio when the bound is ~0 (nothing had to wait)."""
    ratio = f"{achieved / bound:.2f}x" if bound >= 0.05 else "-"
    return f"{achieved:.2f} ({bound:.2f}, {ratio})"


def report(run: Run) -> tuple[str, list[str]]:
    """The run's table row and the acceptance failures it shows."""
    shown = [c for c in run.conversations if c.first_text is not None and c.first_token]
    bounds = Bounds.of(run)
    firsts = [c.first_text - c.first_token for c in shown if c.first_text is not None]
    finals = [c.final_text - c.last_token for c in shown if c.final_text is not None]
    rates = [c.updates / (c.last_token - c.first_token) for c in shown]
    row = (
        f"| {run.platform} | {run.chats} | {run.arrival} "
        f"| {_vs(percentile(firsts, 0.5), percentile(bounds.first, 0.5))} "
        f"| {_vs(percentile(firsts, 0.95), percentile(bounds.first, 0.95))} "
        f"| {_vs(percentile(finals, 0.5), percentile(bounds.final, 0.5))} "
        f"| {_vs(percentile(finals, 0.95), percentile(bounds.final, 0.95))} "
        f"| {statistics.median(rates):.2f} (min {min(rates):.2f}; bound "
        f"{statistics.median(bounds.updates):.2f}, "
        f"{statistics.median(rates) / statistics.median(bounds.updates):.2f}x) "
        f"| {run.rate_limited} | {run.complete}/{run.chats} | {run.seconds:.1f} |"
    )
    problems = []
    label = f"{run.platform}, {run.chats} {run.arrival}"
    if run.rate_limited:
        problems.append(f"{label}: {run.rate_limited} x 429 ({', '.join(run.limited_calls[:5])})")
    if run.complete < run.chats:
        problems.append(f"{label}: {run.chats - run.complete} replies incomplete")
    if run.chats == ACCEPT_CHATS and run.arrival == "burst":
        first_p95, bound_p95 = percentile(firsts, 0.95), percentile(bounds.first, 0.95)
        if run.platform == "Telegram":
            if first_p95 > TELEGRAM_FIRST_P95_FACTOR * bound_p95:
                problems.append(
                    f"{label}: first text p95 {first_p95:.2f} s > "
                    f"{TELEGRAM_FIRST_P95_FACTOR:g} x the budgets' {bound_p95:.2f} s"
                )
            if percentile(finals, 0.95) >= TELEGRAM_FINAL_P95_S:
                problems.append(
                    f"{label}: final text p95 {percentile(finals, 0.95):.2f} s >= "
                    f"{TELEGRAM_FINAL_P95_S:g} s"
                )
            if statistics.median(rates) < TELEGRAM_UPDATES_PER_S:
                problems.append(
                    f"{label}: {statistics.median(rates):.2f} updates/s per chat < "
                    f"{TELEGRAM_UPDATES_PER_S:g}"
                )
        elif first_p95 > DISCORD_FIRST_P95_S:
            problems.append(f"{label}: first text p95 {first_p95:.2f} s > {DISCORD_FIRST_P95_S} s")
    return row, problems


RUNNERS = {"telegram": run_telegram, "discord": run_discord}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--platform", default="telegram,discord", help="telegram, discord")
    parser.add_argument("--chats", default="1,10,50,200", help="comma-separated levels")
    parser.add_argument("--arrival", default="burst,poisson", help="burst, poisson")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--dump", type=Path, help="write every conversation's figures (JSON)")
    parser.add_argument(
        "--slots",
        type=int,
        default=EXTERNAL_SLOTS,
        help="the fake LLM advertises this many slots and llm.concurrency is 0 (0: one per chat)",
    )
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("PTB_TIMEDELTA", "1")
    print(
        f"{WORDS} words per reply at {WORDS_PER_S:g} words/s; seconds, achieved (bound, "
        "achieved/bound); bound: what the budgets allow for the same token times\n"
    )
    print(
        "| platform | chats | arrival | first text p50 | first text p95 | final text p50 "
        "| final text p95 | updates/s per chat, median | 429s | complete | run s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    problems: list[str] = []
    dumped: list[dict[str, Any]] = []
    for platform in args.platform.split(","):
        for chats in (int(n) for n in args.chats.split(",")):
            for pattern in args.arrival.split(","):
                run = asyncio.run(RUNNERS[platform](chats, pattern, args.seed, args.slots or None))
                row, missed = report(run)
                print(row, flush=True)
                problems += missed
                dumped.append(
                    {
                        "platform": run.platform,
                        "chats": run.chats,
                        "arrival": run.arrival,
                        "conversations": [dataclasses.asdict(c) for c in run.conversations],
                    }
                )
    if args.dump is not None:
        args.dump.write_text(json.dumps(dumped, indent=1))
    if problems:
        print("\nBOUNDS MISSED:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
