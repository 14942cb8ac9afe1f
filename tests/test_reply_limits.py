"""Whole-reply limits: time, characters and messages, for streams that never end.

Reproduced before the fix, through the real python-telegram-bot against the fake: a stream with
content every 50 ms and never a finish_reason or [DONE] held the chat for ever (llm.timeout_s
only caught silence), opening new Telegram messages as the text grew; the chat's next message
was never answered. A stream of reasoning only did the same behind "#1 in line".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.delivery.stream import DEFAULT_MARKER
from bot.messages import Msg, say
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    QUEUE_NOTICE_PREFIX,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.stored import stored_rows
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB = 701, 702
ENDLESS = "and so on "


def reply_statuses(tmp_path: Path) -> list[str]:
    sql = "SELECT status FROM messages WHERE role = 'assistant' ORDER BY id"
    return [r[0] for r in stored_rows(tmp_path / "parley.db", sql)]


def no_marker(texts: list[str]) -> bool:
    return all(DEFAULT_MARKER.strip() not in text for text in texts)


async def run_endless(
    tmp_path: Path, behaviour: Behaviour, note: str, **sections: Any
) -> tuple[list[str], FakeLLMServer, FakeTelegramAPI]:
    """One endless reply in Ann's chat, then a normal question in Ann's and Bob's chats."""
    async with FakeTelegramAPI() as api, FakeLLMServer(behaviour=behaviour) as llm:
        ann, bob = api.user(ANN, "Ann"), api.user(BOB, "Bob")
        telegram = sections.pop("telegram", {})
        settings = telegram_settings(tmp_path, api, llm.url, **sections, **telegram)
        async with telegram_bot(settings):
            api.send_text(api.private_chat(ann), ann, "go on for ever")
            await api.wait_for(lambda a: any(note in t for t in telegram_replies(a, ANN)))
            first = telegram_replies(api, ANN)
            await eventually(lambda: llm.cancelled >= 1)  # the server saw the stream closed
            llm.behaviour = Behaviour(reply=echo_reply)
            api.send_text(api.private_chat(ann), ann, "next question")
            api.send_text(api.private_chat(bob), bob, "other chat")
            await api.wait_for(lambda a: "echo next question" in telegram_replies(a, ANN))
            await api.wait_for(lambda a: "echo other chat" in telegram_replies(a, BOB))
    return first, llm, api


async def test_an_endless_stream_stops_at_the_time_limit(tmp_path: Path) -> None:
    note = say(Msg.REPLY_TIMEOUT, seconds=2)
    first, _, _ = await run_endless(
        tmp_path,
        Behaviour(reply=ENDLESS, endless=True, delay_s=0.05),
        note,
        llm={"reply_timeout_s": 2.0},
    )
    assert first[-1].startswith("and so on") and first[-1].endswith(note)
    assert no_marker(first)
    assert reply_statuses(tmp_path)[0] == "partial"  # the text so far is kept, marked


async def test_an_endless_stream_stops_at_the_character_cap(tmp_path: Path) -> None:
    first, _, _ = await run_endless(
        tmp_path,
        Behaviour(reply=ENDLESS, endless=True, delay_s=0.005, words_per_chunk=3),
        say(Msg.REPLY_CAPPED),
        engine={"max_reply_chars": 300},
    )
    answer = first[-1].removesuffix(say(Msg.REPLY_CAPPED)).rstrip()
    assert len(answer) <= 300 and answer.startswith("and so on")
    assert no_marker(first)
    sql = "SELECT content FROM messages WHERE role = 'assistant' ORDER BY id"
    (stored,) = stored_rows(tmp_path / "parley.db", sql)[0]
    assert stored == answer and reply_statuses(tmp_path)[0] == "partial"


async def test_an_endless_stream_opens_no_more_than_the_message_cap(tmp_path: Path) -> None:
    first, _, _ = await run_endless(
        tmp_path,
        Behaviour(reply=ENDLESS, endless=True, delay_s=0.005, words_per_chunk=3),
        say(Msg.REPLY_CAPPED),
        engine={"max_reply_messages": 3},
        telegram={"max_message_chars": 200},
    )
    assert no_marker(first)
    # Three parts of the reply, the last carrying the note (or the note on its own when the
    # third part was full); never the endless run of messages seen before.
    assert 3 <= len(first) <= 4
    assert all(len(text) <= 200 for text in first)


async def test_a_reasoning_only_stream_does_not_hold_the_line(tmp_path: Path) -> None:
    note = say(Msg.REPLY_TIMEOUT, seconds=2)
    async with (
        FakeTelegramAPI() as api,
        FakeLLMServer(
            behaviour=Behaviour(reply="hmm ", endless=True, reasoning_only=True, delay_s=0.05)
        ) as llm,
    ):
        ann = api.user(ANN, "Ann")
        settings = telegram_settings(tmp_path, api, llm.url, llm={"reply_timeout_s": 2.0})
        async with telegram_bot(settings):
            api.send_text(api.private_chat(ann), ann, "think hard")
            await eventually(lambda: len(llm.requests) == 1)
            llm_behaviour_after = Behaviour(reply=echo_reply)
            api.send_text(api.private_chat(ann), ann, "and then answer")
            await api.wait_for(
                lambda a: any(m.text.startswith(QUEUE_NOTICE_PREFIX) for m in a.bot_messages(ANN))
            )
            llm.behaviour = llm_behaviour_after
            await api.wait_for(lambda a: note in telegram_replies(a, ANN))
            await api.wait_for(lambda a: "echo and then answer" in telegram_replies(a, ANN))
    assert telegram_replies(api, ANN) == [note, "echo and then answer"]
    assert reply_statuses(tmp_path) == ["failed", "complete"]
    await eventually(lambda: llm.cancelled >= 1)
