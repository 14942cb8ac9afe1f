"""The reply stream on virtual time, against a fake platform that records every call.

Each test runs on `run_virtual`: sleeping jumps the clock, so seconds of platform time cost
nothing, and the same seed always gives the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from adapters.telegram.config import TelegramSettings
from adapters.telegram.targets import chat_limits as telegram_limits
from bot.delivery.scheduler import EditScheduler
from bot.delivery.stream import DEFAULT_MARKER, PartShown
from bot.errors import DeliveryError, RetryAfter
from bot.types import RateBudget, TargetLimits
from tests.fakes.markdown import markdown, rejoins, unclosed_fence
from tests.fakes.simulation import (
    LIMITS,
    chunks,
    feed,
    final_parts,
    now,
    over_budget,
    simulate,
)
from tests.fakes.streaming import FakePlatform

ROOMY = TargetLimits(
    max_chars=1000,
    chat=RateBudget(rate=100.0, burst=100.0),
    platform=RateBudget(rate=100.0, burst=100.0),
    platform_key="fake",
)


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


def pieces(text: str, sizes: list[int]) -> list[str]:
    """`text` cut into pieces of the given sizes, used in turn."""
    cut, start, size = [], 0, itertools.cycle(sizes)
    while start < len(text):
        end = start + next(size)
        cut.append(text[start:end])
        start = end
    return cut


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
    limits = dataclasses.replace(ROOMY, max_chars=200, min_edit_interval_s=2.0)

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


def test_every_part_is_reported_as_soon_as_the_platform_returns_its_id() -> None:
    platform = FakePlatform(drafts=True)
    reply = "A reply long enough to need two parts on this small limit, so it is split. " * 2
    reported: list[tuple[PartShown, int]] = []  # with the calls made by then

    async def record(shown: PartShown) -> None:
        reported.append((shown, len(platform.calls)))

    async def scenario() -> None:
        stream = EditScheduler().open(platform.target("c", LIMITS), on_part=record)
        await feed(stream, chunks(reply, 6), 0.1)
        ids = await stream.finish()
        parts = [shown.part for shown, _ in reported]
        assert parts == sorted(parts) and len(ids) >= 2
        assert [shown.done for shown, _ in reported] == [False, True] * len(ids)
        # Each part is open from its first message until its final text is shown (here a
        # draft, then the real message that replaces it).
        assert [shown.message_id for shown, _ in reported if shown.done] == ids
        for shown, calls in reported:
            call = platform.calls[calls - 1]  # the call just answered, nothing after it
            assert call.op == ("finalize" if shown.done else "send")
            assert shown.done or platform.messages[shown.message_id].draft

    simulate(scenario)


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
    limits = dataclasses.replace(LIMITS, max_chars=max_chars)

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
