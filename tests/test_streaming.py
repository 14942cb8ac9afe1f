"""The reply streamer on virtual time, against a fake platform that records every call.

Each test runs on `run_virtual`: sleeping jumps the clock, so seconds of platform time cost
nothing, and the same seed always gives the same run.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from adapters.telegram.config import TelegramSettings
from adapters.telegram.targets import chat_limits as telegram_limits
from bot.errors import DeliveryError, RetryAfter
from bot.streaming import (
    DEFAULT_MARKER,
    EditScheduler,
    ReplyStream,
    windowed_budget,
)
from bot.types import RateBudget, TargetLimits
from tests.fakes.markdown import markdown, rejoins, unclosed_fence
from tests.fakes.streaming import FakePlatform, Window, run_virtual

LIMITS = TargetLimits(
    max_chars=80,
    chat=RateBudget(rate=1.0, burst=2.0),
    platform=RateBudget(rate=30.0, burst=2.0),
    platform_key="fake",
)
ROOMY = TargetLimits(
    max_chars=1000,
    chat=RateBudget(rate=100.0, burst=100.0),
    platform=RateBudget(rate=100.0, burst=100.0),
    platform_key="fake",
)


def now() -> float:
    return asyncio.get_running_loop().time()


def over_budget(times: Iterable[float], budget: RateBudget) -> list[float]:
    """The calls a token bucket of `budget`, full at the first call, would not have allowed."""
    tokens, last, refused = budget.burst, None, []
    for at in sorted(times):
        if last is not None:
            tokens = min(budget.burst, tokens + (at - last) * budget.rate)
        last = at
        if tokens < 1.0 - 1e-6:
            refused.append(at)
        tokens -= 1.0
    return refused


def final_parts(platform: FakePlatform, ids: list[str]) -> list[str]:
    """The text each returned message was finalized with: exactly once, and still shown."""
    parts = []
    for message_id in ids:
        message = platform.messages[message_id]
        assert len(message.finalized) == 1, f"message {message_id} finalized {message.finalized}"
        assert not message.deleted
        assert message.text == message.finalized[0]
        parts.append(message.text)
    return parts


def shown_in_full(parts: list[str], reply: str) -> bool:
    """Whether the parts rejoin to the reply; a blank end of the reply is never sent."""
    blank_from = len(reply.rstrip())
    return any(rejoins(parts, reply[:end]) for end in range(blank_from, len(reply) + 1))


def leftovers(platform: FakePlatform, label: str, ids: list[str]) -> list[str]:
    """Messages of one reply still visible besides its final parts."""
    return [
        message_id
        for message_id, message in platform.messages.items()
        if message.label == label and message_id not in ids and not message.deleted
    ]


async def feed(stream: ReplyStream, pieces: Iterable[str], gap_s: float) -> float:
    """Append `pieces` one every `gap_s`; return when the last one arrived."""
    for piece in pieces:
        stream.append(piece)
        await asyncio.sleep(gap_s)
    return now()


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def pieces(text: str, sizes: list[int]) -> list[str]:
    """`text` cut into pieces of the given sizes, used in turn."""
    cut, start, size = [], 0, itertools.cycle(sizes)
    while start < len(text):
        end = start + next(size)
        cut.append(text[start:end])
        start = end
    return cut


def simulate(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_virtual(scenario())


# --- the first text, coalescing, the marker ---------------------------------------------------


def test_the_first_text_goes_out_at_once_with_the_marker() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        await asyncio.sleep(3.0)  # no budget is spent while nothing is there
        stream.append("Hello")
        await asyncio.sleep(0.2)
        assert [(c.at, c.op, c.text) for c in platform.calls] == [(3.0, "send", "Hello ▌")]
        await stream.finish()

    simulate(scenario)


def test_blank_text_is_not_sent() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        stream.append("\n\n")
        await asyncio.sleep(2.0)
        assert platform.calls == []
        stream.append("Hi")
        await asyncio.sleep(0.2)
        assert [c.text for c in platform.calls] == ["\n\nHi ▌"]
        await stream.finish()

    simulate(scenario)


def test_edits_are_coalesced_to_the_chat_budget() -> None:
    platform = FakePlatform()
    reply = "word " * 15  # 75 chars: one message

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        last_token = await feed(stream, chunks(reply, 1), 0.1)  # 7.5 s at 10 chars/s
        ids = await stream.finish()
        assert final_parts(platform, ids) == [reply]
        assert now() - last_token < 1.1  # the final edit waited for at most one refill

    simulate(scenario)
    times = [c.at for c in platform.calls]
    assert over_budget(times, LIMITS.chat) == []
    assert 6 <= len(platform.calls) <= 11  # ~1 per second, not one per character
    shown = [c.text.removesuffix(DEFAULT_MARKER) for c in platform.calls]
    assert all(reply.startswith(text) for text in shown)
    assert len(set(shown)) == len(shown)  # never the same text twice


def test_the_final_text_has_no_marker() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        await feed(stream, ["One ", "two ", "three."], 0.5)
        ids = await stream.finish()
        assert final_parts(platform, ids) == ["One two three."]

    simulate(scenario)
    assert platform.calls[-1].op == "finalize"
    assert all(c.text.endswith(DEFAULT_MARKER) for c in platform.calls[:-1])


def test_finish_can_replace_the_text() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        await feed(stream, ["draft ", "text"], 0.5)
        ids = await stream.finish("The final answer.")
        assert final_parts(platform, ids) == ["The final answer."]

    simulate(scenario)


def test_a_short_reply_lands_without_waiting() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        stream.append("Yes.")
        ids = await stream.finish()
        assert final_parts(platform, ids) == ["Yes."]

    simulate(scenario)
    assert [(c.at, c.op) for c in platform.calls] == [(0.0, "send"), (0.05, "finalize")]


def test_append_after_finish_is_a_bug() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        stream.append("Done.")
        await stream.finish()
        with pytest.raises(RuntimeError, match="after finish"):
            stream.append("more")

    simulate(scenario)


def test_a_blank_final_text_deletes_the_message() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        stream.append("thinking")
        await asyncio.sleep(0.5)
        assert await stream.finish("  ") == []

    simulate(scenario)
    assert [c.op for c in platform.calls] == ["send", "delete"]
    assert all(m.deleted for m in platform.messages.values())


def test_cancel_stops_without_a_final_edit() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        await feed(stream, chunks("a b c d e f g h", 2), 0.3)  # an edit is waiting for a token
        await stream.cancel()
        calls_at_cancel = len(platform.calls)
        await asyncio.sleep(10.0)
        assert len(platform.calls) == calls_at_cancel
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the scheduler stopped too
        assert await stream.finish() == []

    simulate(scenario)
    assert "finalize" not in [c.op for c in platform.calls]


def test_the_minimum_edit_interval_is_kept() -> None:
    platform = FakePlatform()
    limits = TargetLimits(
        max_chars=200,
        chat=RateBudget(rate=100.0, burst=100.0),
        platform=RateBudget(rate=100.0, burst=100.0),
        platform_key="fake",
        min_edit_interval_s=2.0,
    )

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", limits))
        await feed(stream, chunks("x " * 40, 2), 0.1)
        await stream.finish()

    simulate(scenario)
    times = [c.at for c in platform.calls]
    assert len(times) >= 3
    assert all(b - a >= 2.0 - 1e-9 for a, b in itertools.pairwise(times))


# --- long replies -----------------------------------------------------------------------------


def test_a_long_reply_continues_in_new_messages() -> None:
    platform = FakePlatform()
    code = "".join(f"value_{i} = {i}\n" for i in range(20))
    reply = f"Here is the code you asked for.\n\n```python\n{code}```\n\nThat is all. " * 2

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        await feed(stream, chunks(reply, 4), 0.05)
        ids = await stream.finish()
        parts = final_parts(platform, ids)
        assert len(parts) > 3
        assert all(len(part) <= LIMITS.max_chars for part in parts)
        assert not any(unclosed_fence(part) for part in parts)
        assert rejoins(parts, reply)
        assert any(part.startswith("```python\n") for part in parts[1:])
        assert leftovers(platform, "c", ids) == []

    simulate(scenario)
    assert platform.violations == []


def test_final_text_that_rewrites_frozen_parts_follows_them() -> None:
    platform = FakePlatform()
    reply = "A first paragraph that is long enough to fill a part.\n\n" * 3

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        await feed(stream, chunks(reply, 5), 0.1)
        ids = await stream.finish("Something else entirely.")
        parts = final_parts(platform, ids)
        assert len(parts) > 1
        assert reply.startswith("".join(parts[:-1]))  # frozen parts stay as they were
        assert parts[-1] == "Something else entirely."

    simulate(scenario)


# --- 429s, failures, refusals -----------------------------------------------------------------


def test_a_429_pauses_the_chat_and_later_text_goes_out_in_one_edit() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        stream.append("Start")
        await asyncio.sleep(0.5)
        platform.failures.append(RetryAfter(3.0))
        stream.append(" of")  # this edit is answered 429 at t=0.55
        await feed(stream, [f" w{i}" for i in range(40)], 0.1)
        await stream.finish()

    simulate(scenario)
    assert platform.violations == []  # nothing was sent in the pause
    after = [c for c in platform.calls if c.at >= 3.55]
    assert after[0].op == "edit"
    assert after[0].text.startswith("Start of w0 w1 w2")  # all text of the pause, in one edit


def test_a_global_429_pauses_every_chat() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        scheduler = EditScheduler()
        first = scheduler.open(platform.target("a", ROOMY))
        second = scheduler.open(platform.target("b", ROOMY))
        first.append("one")
        await asyncio.sleep(0.2)
        platform.failures.append(RetryAfter(2.0, is_global=True))
        first.append(" two")  # answered 429 (global) at t=0.25
        await asyncio.sleep(0.1)
        second.append("hello")  # must wait for the global pause
        await asyncio.sleep(3.0)
        await asyncio.gather(first.finish(), second.finish())

    simulate(scenario)
    assert platform.violations == []
    second_calls = [c for c in platform.calls if c.chat_key == "b"]
    assert second_calls[0].at >= 2.25


def test_the_final_edit_is_retried_until_it_lands() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        stream.append("Answer")
        await asyncio.sleep(0.5)
        platform.failures.extend([RetryAfter(1.0), OSError("reset"), TimeoutError(), RetryAfter(2)])
        ids = await stream.finish()
        assert final_parts(platform, ids) == ["Answer"]

    simulate(scenario)
    outcomes = [(c.op, c.outcome) for c in platform.calls]
    assert outcomes[1:] == [
        ("finalize", "429"),
        ("finalize", "failed"),
        ("finalize", "failed"),
        ("finalize", "429"),
        ("finalize", "ok"),
    ]
    assert platform.violations == []


def test_the_final_edit_gives_up_at_the_deadline() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler(final_deadline_s=30.0).open(platform.target("c", LIMITS))
        stream.append("Answer")
        await asyncio.sleep(0.5)
        platform.failures.extend(RetryAfter(5.0) for _ in range(100))
        with pytest.raises(DeliveryError, match="30 s"):
            await stream.finish()
        assert 30.5 <= now() <= 31.0

    simulate(scenario)
    assert platform.violations == []


def test_a_deleted_message_is_not_lost_the_part_goes_out_anew() -> None:
    platform = FakePlatform()
    reply = "The user deleted my message while I was still typing this answer."

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        stream.append(reply[:20])
        await asyncio.sleep(0.5)
        (first_message,) = platform.messages
        platform.gone(first_message)
        await feed(stream, chunks(reply[20:], 5), 0.2)
        ids = await stream.finish()
        assert final_parts(platform, ids) == [reply]

    simulate(scenario)
    assert [c.outcome for c in platform.calls].count("refused") == 1


def test_a_refused_first_message_surfaces_at_finish() -> None:
    platform = FakePlatform()

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", ROOMY))
        platform.failures.append(DeliveryError("bot was kicked"))
        stream.append("Hello")
        await asyncio.sleep(1.0)
        stream.append(" again")  # the writer has stopped; the text goes nowhere
        with pytest.raises(DeliveryError, match="kicked"):
            await stream.finish()

    simulate(scenario)
    assert len(platform.calls) == 1


def test_draft_targets_return_the_real_message_ids() -> None:
    platform = FakePlatform(drafts=True)
    reply = "A reply long enough to need two parts on this small limit, so it is split. " * 2

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS))
        await feed(stream, chunks(reply, 6), 0.1)
        ids = await stream.finish()
        assert all(not platform.messages[i].draft for i in ids)
        assert rejoins(final_parts(platform, ids), reply)

    simulate(scenario)


# --- sharing budgets --------------------------------------------------------------------------


def test_a_reply_that_shows_nothing_goes_before_edits_of_others() -> None:
    platform = FakePlatform()
    no_burst = TargetLimits(
        max_chars=80,
        chat=RateBudget(rate=1.0, burst=1.0),
        platform=RateBudget(rate=30.0, burst=2.0),
        platform_key="fake",
    )

    async def scenario() -> None:
        scheduler = EditScheduler()
        busy = scheduler.open(platform.target("c", no_burst, label="busy"))
        busy.append("streaming")  # sent at once: the bucket is empty until t=1
        await asyncio.sleep(0.1)
        busy.append(" more")  # asks first for the token of t=1
        await asyncio.sleep(0.1)
        new = scheduler.open(platform.target("c", no_burst, label="new"))
        new.append("Hi")  # asks later, but shows nothing yet
        await asyncio.sleep(5.0)
        await asyncio.gather(busy.finish(), new.finish())

    simulate(scenario)
    assert [(c.at, c.op, c.text) for c in platform.calls[:3]] == [
        (0.0, "send", "streaming ▌"),
        (1.0, "send", "Hi ▌"),
        (2.0, "edit", "streaming more ▌"),
    ]


def test_replies_in_one_chat_share_its_budget_round_robin() -> None:
    platform = FakePlatform()
    reply = "token " * 40  # 20 s of streaming
    limits = TargetLimits(
        max_chars=1000,
        chat=RateBudget(rate=1.0, burst=2.0),
        platform=RateBudget(rate=30.0, burst=2.0),
        platform_key="fake",
    )

    async def scenario() -> None:
        scheduler = EditScheduler()
        streams = [scheduler.open(platform.target("c", limits, label=f"r{i}")) for i in range(4)]
        await asyncio.gather(*(feed(s, chunks(reply, 3), 0.25) for s in streams))
        results = await asyncio.gather(*(s.finish() for s in streams))
        for ids in results:
            assert final_parts(platform, ids) == [reply]

    simulate(scenario)
    assert over_budget([c.at for c in platform.calls], limits.chat) == []
    edits: dict[str, int] = defaultdict(int)
    for call in platform.calls:
        if call.op == "edit":
            edits[platform.messages[call.message_id or ""].label] += 1
    assert sorted(edits) == ["r0", "r1", "r2", "r3"]
    assert max(edits.values()) - min(edits.values()) <= 1


# --- limits from settings ---------------------------------------------------------------------


def test_window_budgets_never_exceed_the_window() -> None:
    for calls, window in [(5, 5.0), (20, 60.0), (30, 1.0), (50, 1.0), (2, 1.0)]:
        budget = windowed_budget(calls, window)
        assert budget.burst >= 1.0
        assert budget.burst + budget.rate * window <= calls + 1e-9


# --- simulations ------------------------------------------------------------------------------


_WORDS = ["the", "reply", "streams", "here", "fine.", "ok,", "`code`", "**bold**"]


def _reply_text(rng: random.Random) -> str:
    """Prose and Python blocks, 50 to 1,500 characters."""
    paragraphs = []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.3:
            code = "".join(f"    x{i} = f({i})\n" for i in range(rng.randint(2, 12)))
            paragraphs.append(f"```python\ndef f():\n{code}```")
        else:
            paragraphs.append(" ".join(rng.choices(_WORDS, k=rng.randint(5, 60))))
    return "\n\n".join(paragraphs)


@pytest.mark.parametrize("retry_after_ratio", [0.0, 0.2])
def test_200_concurrent_replies_respect_every_budget(retry_after_ratio: float) -> None:
    rng = random.Random(7)
    platform = FakePlatform(latency_s=(0.03, 0.15), retry_after_ratio=retry_after_ratio, seed=7)
    telegram = TelegramSettings(max_message_chars=300)
    chats: list[tuple[str, TargetLimits]] = [
        *((f"tg-private-{i}", telegram_limits(telegram, is_private=True)) for i in range(60)),
        *((f"tg-group-{i}", telegram_limits(telegram, is_private=False)) for i in range(20)),
        *((f"dc-{i}", discord_limits(DiscordSettings(max_message_chars=200))) for i in range(20)),
    ]
    # One reply per private chat; four at once in each group, three in each Discord channel.
    plan = (
        chats[:60]
        + [c for c in chats[60:80] for _ in range(4)]
        + [c for c in chats[80:] for _ in range(3)]
    )
    assert len(plan) == 200
    replies = {f"r{i}": _reply_text(rng) for i in range(len(plan))}
    results: dict[str, list[str]] = {}

    async def one(label: str, chat: str, limits: TargetLimits, scheduler: EditScheduler) -> None:
        await asyncio.sleep(rng.uniform(0.0, 5.0))
        stream = scheduler.open(platform.target(chat, limits, label=label))
        sizes = [rng.randint(2, 12) for _ in range(20)]  # an LLM's tokens, a few chars each
        await feed(stream, pieces(replies[label], sizes), rng.uniform(0.02, 0.08))
        results[label] = await stream.finish()

    async def scenario() -> None:
        scheduler = EditScheduler(final_deadline_s=600.0)
        await asyncio.gather(
            *(one(f"r{i}", chat, limits, scheduler) for i, (chat, limits) in enumerate(plan))
        )

    simulate(scenario)

    assert platform.violations == []
    budgets = dict(chats)
    by_chat: dict[str, list[float]] = defaultdict(list)
    by_platform: dict[str, list[float]] = defaultdict(list)
    for call in platform.calls:
        limits = budgets[call.chat_key]
        by_chat[call.chat_key].append(call.at)
        by_platform[limits.platform_key].append(call.at)
    for chat, times in by_chat.items():
        assert over_budget(times, budgets[chat].chat) == [], chat
    for key, times in by_platform.items():
        budget = next(limits.platform for limits in budgets.values() if limits.platform_key == key)
        assert over_budget(times, budget) == [], key
    assert len(results) == len(plan)
    for label, ids in results.items():
        parts = final_parts(platform, ids)
        assert DEFAULT_MARKER not in "".join(parts)
        assert shown_in_full(parts, replies[label]), label
        assert leftovers(platform, label, ids) == []
    if retry_after_ratio:
        assert sum(c.outcome == "429" for c in platform.calls) > 100


@settings(max_examples=50, deadline=None)
@given(
    reply=markdown,
    piece_sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20),
    max_chars=st.integers(min_value=40, max_value=160),
    retry_after_ratio=st.sampled_from([0.0, 0.3]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_any_reply_in_any_pieces_ends_up_shown_in_full(
    reply: str, piece_sizes: list[int], max_chars: int, retry_after_ratio: float, seed: int
) -> None:
    platform = FakePlatform(retry_after_ratio=retry_after_ratio, seed=seed)
    limits = TargetLimits(
        max_chars=max_chars,
        chat=RateBudget(rate=1.0, burst=2.0),
        platform=RateBudget(rate=30.0, burst=2.0),
        platform_key="fake",
    )

    async def scenario() -> None:
        stream = EditScheduler(final_deadline_s=3600.0).open(platform.target("c", limits))
        await feed(stream, pieces(reply, piece_sizes), 0.05)
        ids = await stream.finish()
        parts = final_parts(platform, ids)
        assert shown_in_full(parts, reply)
        # Every part but the last closes its fences; the last is open only if the reply is.
        assert not any(unclosed_fence(part) for part in parts[:-1])
        assert unclosed_fence(parts[-1]) == unclosed_fence(reply)
        assert leftovers(platform, "c", ids) == []

    simulate(scenario)
    assert platform.violations == []
    assert over_budget([c.at for c in platform.calls], limits.chat) == []


# --- every other call under the same budgets --------------------------------------------------


NO_BURST = TargetLimits(
    max_chars=80,
    chat=RateBudget(rate=1.0, burst=1.0),
    platform=RateBudget(rate=30.0, burst=2.0),
    platform_key="fake",
)


def test_a_notice_goes_after_first_text_and_before_interim_edits() -> None:
    platform = FakePlatform()
    chat = platform.target("c", NO_BURST, label="notice")

    async def scenario() -> None:
        scheduler = EditScheduler()
        busy = scheduler.open(platform.target("c", NO_BURST, label="busy"))
        busy.append("streaming")  # sent at once: the bucket is empty until t=1
        await asyncio.sleep(0.1)
        busy.append(" more")  # asks first for the token of t=1
        await asyncio.sleep(0.1)
        notice = asyncio.ensure_future(scheduler.call(chat, lambda: chat.send("A notice")))
        await asyncio.sleep(0.1)
        new = scheduler.open(platform.target("c", NO_BURST, label="new"))
        new.append("Hi")  # asks last, but shows nothing yet
        await asyncio.sleep(5.0)
        await notice
        await asyncio.gather(busy.finish(), new.finish())

    simulate(scenario)
    assert [(c.at, c.op, c.text) for c in platform.calls[:4]] == [
        (0.0, "send", "streaming ▌"),
        (1.0, "send", "Hi ▌"),
        (2.0, "send", "A notice"),
        (3.0, "edit", "streaming more ▌"),
    ]


def test_a_429_on_a_notice_pauses_the_chat_and_the_notice_goes_after_the_pause() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS, label="notice")

    async def scenario() -> None:
        scheduler = EditScheduler()
        platform.failures.append(RetryAfter(3.0))
        notice = asyncio.ensure_future(scheduler.call(chat, lambda: chat.send("Heads up")))
        await asyncio.sleep(0.1)
        stream = scheduler.open(platform.target("c", LIMITS, label="reply"))
        stream.append("Hello")  # the chat is paused from t=0.05 (the 429's answer) to 3.05
        await notice
        await stream.finish()

    simulate(scenario)
    assert platform.violations == []  # nothing went out during the pause
    assert [(c.op, c.text, c.outcome) for c in platform.calls] == [
        ("send", "Heads up", "429"),
        ("send", "Hello ▌", "ok"),  # a reply's first text goes first after the pause
        ("send", "Heads up", "ok"),  # the notice was not dropped: it came again
        ("finalize", "Hello", "ok"),
    ]
    assert platform.calls[1].at >= 3.05


def test_a_notice_that_cannot_land_in_time_raises() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler(final_deadline_s=10.0)
        platform.failures.extend(RetryAfter(4.0) for _ in range(10))
        with pytest.raises(DeliveryError, match="10 s"):
            await scheduler.call(chat, lambda: chat.send("Heads up"))
        assert 10.0 <= now() <= 10.1

    simulate(scenario)
    assert [c.outcome for c in platform.calls] == ["429"] * 3


def test_a_notice_is_retried_through_network_failures_a_few_times() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler()
        platform.failures.extend([ConnectionError("reset"), TimeoutError()])
        await scheduler.call(chat, lambda: chat.send("one"))
        platform.failures.extend([ConnectionError("reset")] * 3)
        with pytest.raises(ConnectionError):
            await scheduler.call(chat, lambda: chat.send("two"))

    simulate(scenario)
    assert [(c.text, c.outcome) for c in platform.calls] == [
        ("one", "failed"),
        ("one", "failed"),
        ("one", "ok"),
        ("two", "failed"),
        ("two", "failed"),
        ("two", "failed"),
    ]


def test_typing_is_skipped_while_text_waits_and_leaves_a_token_for_text() -> None:
    platform = FakePlatform()
    typist = platform.target("t", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler()
        typing = asyncio.ensure_future(scheduler.offer(typist, typist.typing))
        # The indicator took a token but left one: a first text right after it goes at once.
        first = scheduler.open(platform.target("a", LIMITS))
        first.append("Hi")
        assert await typing  # nothing else was going on: it went
        assert [(c.at, c.op) for c in platform.calls] == [(0.0, "typing"), (0.0, "send")]
        # The platform bucket is empty now and a reply's first text waits for it.
        second = scheduler.open(platform.target("b", LIMITS))
        second.append("Hello")
        assert not await scheduler.offer(typist, typist.typing)  # skipped, not queued
        await asyncio.gather(first.finish(), second.finish())

    simulate(scenario)
    assert [c.op for c in platform.calls].count("typing") == 1


def _burst_timeline(chats: int, *, typing: bool) -> list[tuple[float, str, str, str]]:
    """The text calls of `chats` replies that start at once, each after a typing indicator.

    As in the engine: the reply's stream opens, typing is asked for at once and every 0.5 s
    until the first token, which comes 0.1-0.6 s later; then the reply streams for 3 s.
    """
    rng = random.Random(5)
    platform = FakePlatform(
        latency_s=(0.03, 0.12), windows=(Window("chat", 5, 5.0), Window("global", 50, 1.0))
    )
    limits = discord_limits(DiscordSettings())
    first_tokens = [rng.uniform(0.1, 0.6) for _ in range(chats)]

    async def one(i: int, scheduler: EditScheduler) -> None:
        target = platform.target(f"c{i}", limits)
        start = now()
        stream = scheduler.open(target)
        while typing and now() < start + first_tokens[i]:
            await scheduler.offer(target, target.typing)
            await asyncio.sleep(min(0.5, start + first_tokens[i] - now()))
        await asyncio.sleep(max(0.0, start + first_tokens[i] - now()))
        await feed(stream, [f"w{n} " for n in range(30)], 0.1)
        await stream.finish()

    async def scenario() -> None:
        scheduler = EditScheduler()
        await asyncio.gather(*(one(i, scheduler) for i in range(chats)))

    simulate(scenario)
    assert platform.violations == []
    assert not [c for c in platform.calls if c.outcome == "429"]
    if typing:
        assert any(c.op == "typing" for c in platform.calls)
    # Rounded: a bucket refilled at other moments adds up the same time in other float steps.
    return [(round(c.at, 9), c.op, c.chat_key, c.text) for c in platform.calls if c.op != "typing"]


def test_typing_never_delays_a_replys_text() -> None:
    """50 replies at once, each chat asking for typing until its first token: the text goes out
    at exactly the moments it would without any typing indicator."""
    assert _burst_timeline(50, typing=True) == _burst_timeline(50, typing=False)


# --- queue notices ----------------------------------------------------------------------------


def _in_line(position: int, waiting: int) -> str:
    return f"#{position} in line" + (f" ({waiting} waiting)" if waiting > 1 else "")


def test_a_chat_has_one_queue_notice_edited_to_its_latest_position() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler()
        notices = scheduler.queue_notices
        notices.wait(chat, chat, "turn 1", 5, _in_line)
        notices.wait(chat, chat, "turn 2", 6, _in_line)  # the same chat: the same message
        await asyncio.sleep(0.5)
        for position in (4, 3, 2):  # the line moves while the chat's budget is spent
            notices.wait(chat, chat, "turn 1", position, _in_line)
            notices.wait(chat, chat, "turn 2", position + 1, _in_line)
        await asyncio.sleep(3.0)
        notices.leave(chat, "turn 1")
        notices.leave(chat, "turn 2")
        await asyncio.sleep(3.0)

    simulate(scenario)
    assert [(c.op, c.text) for c in platform.calls] == [
        ("send", "#5 in line (2 waiting)"),  # the second turn came before the post went out
        ("edit", "#2 in line (2 waiting)"),  # only the latest position is written
        ("delete", ""),
    ]
    assert over_budget([c.at for c in platform.calls], LIMITS.chat) == []


def test_a_refused_queue_notice_is_posted_after_the_pause() -> None:
    platform = FakePlatform()
    chat = platform.target("c", LIMITS)

    async def scenario() -> None:
        scheduler = EditScheduler()
        platform.failures.append(RetryAfter(2.0))
        scheduler.queue_notices.wait(chat, chat, "turn", 3, _in_line)
        await asyncio.sleep(1.0)
        scheduler.queue_notices.wait(chat, chat, "turn", 2, _in_line)
        await asyncio.sleep(3.0)

    simulate(scenario)
    assert platform.violations == []
    assert [(c.op, c.text, c.outcome) for c in platform.calls] == [
        ("send", "#3 in line", "429"),
        ("send", "#2 in line", "ok"),  # after the pause, with the position of then
    ]
    assert platform.calls[1].at >= 2.05
    assert [m.text for m in platform.messages.values() if not m.deleted] == ["#2 in line"]


def test_a_queue_notice_stays_for_a_turn_that_comes_before_its_removal() -> None:
    platform = FakePlatform()
    chat = platform.target("c", NO_BURST)

    async def scenario() -> None:
        scheduler = EditScheduler()
        notices = scheduler.queue_notices
        notices.wait(chat, chat, "turn 1", 1, _in_line)
        await asyncio.sleep(0.1)
        notices.leave(chat, "turn 1")  # the removal waits for the chat's next token (t=1)
        await asyncio.sleep(0.1)
        notices.wait(chat, chat, "turn 2", 1, _in_line)
        await asyncio.sleep(3.0)
        assert await notices.take_over(chat, "turn 2") == "1"  # the message is turn 2's now
        notices.leave(chat, "turn 2")  # nothing to delete: the message is no notice any more
        await asyncio.sleep(3.0)

    simulate(scenario)
    assert [(c.op, c.text) for c in platform.calls] == [("send", "#1 in line")]
