"""The turn-wide error boundary: an error nobody handles closes the reply and the bot goes on.

Through the real python-telegram-bot and the engine, with faults only outside the machine: an
LLM event no parser survives, and a platform answer the library cannot read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bot.delivery.stream import DEFAULT_MARKER
from bot.messages import Msg
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import echo_reply, telegram_bot, telegram_replies, telegram_settings
from tests.fakes.stored import stored_rows
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB = 501, 502
# JSON nested deeper than any decoder's recursion limit: json.loads raises RecursionError, which
# is no ValueError, so it escapes the stream parser as an error of a kind nobody expects.
UNPARSEABLE_EVENT = b"data: " + b"[" * 200_000 + b"\n\n"
NOTE = Msg.INTERNAL.value.split("(ref")[0].strip()


def statuses(tmp_path: Path) -> list[tuple[str, str]]:
    return stored_rows(tmp_path / "parley.db", "SELECT role, status FROM messages ORDER BY id")


async def test_an_unexpected_llm_event_closes_the_reply_and_the_bot_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    behaviour = Behaviour(
        reply="Part of an answer that breaks off here", raw_after=(3, UNPARSEABLE_EVENT)
    )
    async with FakeTelegramAPI() as api, FakeLLMServer(behaviour=behaviour) as llm:
        ann, bob = api.user(ANN, "Ann"), api.user(BOB, "Bob")
        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            api.send_text(api.private_chat(ann), ann, "tell me something")
            await api.wait_for(lambda a: any(NOTE in t for t in telegram_replies(a, ANN)))
            broken = telegram_replies(api, ANN)[-1]
            # The next message in that chat and in another chat are answered.
            llm.behaviour = Behaviour(reply=echo_reply)
            api.send_text(api.private_chat(ann), ann, "are you still there")
            api.send_text(api.private_chat(bob), bob, "hello from bob")
            await api.wait_for(lambda a: "echo are you still there" in telegram_replies(a, ANN))
            await api.wait_for(lambda a: "echo hello from bob" in telegram_replies(a, BOB))
    # What was streamed stays, the marker is gone, and the note says what happened.
    assert broken.startswith("Part of an")
    assert DEFAULT_MARKER.strip() not in broken
    assert NOTE in broken
    assert all(DEFAULT_MARKER.strip() not in text for text in telegram_replies(api, ANN))
    rows = statuses(tmp_path)
    assert ("assistant", "streaming") not in rows and ("assistant", "queued") not in rows
    assert rows[1] == ("assistant", "partial")
    # The traceback is logged with the chat and the turn's reference, which the note quotes.
    failed = [r for r in caplog.records if "failed while streaming" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    reference = broken.split("(ref ")[1].split(")")[0]
    assert reference in failed[0].getMessage() and f"telegram:{ANN}" in failed[0].getMessage()


class GarblingTelegram(FakeTelegramAPI):
    """Carries out edits but answers the next `garble` of them with a result PTB cannot read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.garble = 0

    async def _m_editmessagetext(self, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        result = await super()._m_editmessagetext(params, files)
        if self.garble > 0:
            self.garble -= 1
            return "not a message"  # PTB expects a Message object (or true)
        return result


async def test_an_unreadable_platform_answer_loses_no_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    reply = "A reply long enough to be edited a few times while it streams in slowly."
    async with (
        GarblingTelegram() as api,
        FakeLLMServer(behaviour=Behaviour(reply=reply, delay_s=0.05)) as llm,
    ):
        api.garble = 2
        ann = api.user(ANN, "Ann")
        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            api.send_text(api.private_chat(ann), ann, "stream something")
            await api.wait_for(lambda a: reply in telegram_replies(a, ANN))
    assert api.garble == 0  # both garbled answers were met
    assert telegram_replies(api, ANN)[-1] == reply  # the final text, without the marker
    assert ("assistant", "complete") in statuses(tmp_path)
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)
