"""Queue notices on virtual time: one "#n in line" message per waiting chat, kept up to date."""

from __future__ import annotations

import asyncio

from bot.delivery.scheduler import EditScheduler
from bot.errors import RetryAfter
from tests.fakes.simulation import LIMITS, NO_BURST, over_budget, simulate
from tests.fakes.streaming import FakePlatform


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


def _stopped_while_a_notice_goes(grace_s: float) -> tuple[FakePlatform, float]:
    """A chat's only turn leaves the line at t=0.1, its notice's deletion waiting for the chat's
    next token (t=1), and the adapter stops at once: the platform's calls, and when the stop
    let the connection close."""
    platform = FakePlatform()
    chat = platform.target("c", NO_BURST)
    closed_at: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        notices = EditScheduler().queue_notices
        notices.wait(chat, chat, "turn", 1, _in_line)
        await asyncio.sleep(0.1)
        notices.leave(chat, "turn")
        await notices.settle(grace_s)
        closed_at.append(loop.time())
        await asyncio.sleep(3.0)  # nothing is written after the stop

    simulate(scenario)
    return platform, closed_at[0]


def test_at_stop_a_notice_nobody_waits_behind_is_deleted_before_the_connection_closes() -> None:
    platform, closed_at = _stopped_while_a_notice_goes(grace_s=2.0)
    assert [(c.op, c.text) for c in platform.calls] == [("send", "#1 in line"), ("delete", "")]
    assert platform.calls[-1].at <= closed_at
    assert [m.text for m in platform.messages.values() if not m.deleted] == []


def test_at_stop_a_notice_waits_no_longer_than_its_grace() -> None:
    platform, closed_at = _stopped_while_a_notice_goes(grace_s=0.2)
    assert closed_at < 0.5
    assert [(c.op, c.text) for c in platform.calls] == [("send", "#1 in line")]
