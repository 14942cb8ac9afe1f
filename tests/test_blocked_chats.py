"""A user who blocks the bot mid-reply: the generation stops at once, nobody's next reply waits.

Reproduced before the fix: with every call to a chat answered 403, the bot kept reading the
LLM stream for the rest of the reply (14 s in the report), holding the LLM slot and the chat's
line, and that chat's next reply after unblocking came late.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import telegram_bot, telegram_replies, telegram_settings
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB = 1001, 1002
BLOCKED = "Forbidden: bot was blocked by the user"
WRITE_METHODS = ("sendMessage", "editMessageText", "sendChatAction", "deleteMessage")
# A reply that would stream for about a minute: long past any wait below.
LONG = " ".join(f"word{i}" for i in range(1200))


def reply(body: dict[str, Any]) -> str:
    question = last_user_text(body)
    return LONG if question == "tell me everything" else f"echo {question}"


async def test_a_blocked_chat_stops_its_generation_and_delays_no_one(tmp_path: Path) -> None:
    blocked: set[int] = set()
    async with (
        FakeTelegramAPI() as api,
        FakeLLMServer(Behaviour(reply=reply, delay_s=0.05)) as llm,
    ):
        for method in WRITE_METHODS:
            api.fail(
                method,
                status=403,
                description=BLOCKED,
                times=10**6,
                when=lambda params: int(params.get("chat_id", 0)) in blocked,
            )
        ann, bob = api.user(ANN, "Ann"), api.user(BOB, "Bob")
        settings = telegram_settings(tmp_path, api, llm.url, llm={"concurrency": 1})
        async with telegram_bot(settings):
            api.send_text(api.private_chat(ann), ann, "tell me everything")
            await api.wait_for(lambda a: telegram_replies(a, ANN))  # streaming has begun
            blocked.add(ANN)
            # The stream is closed at the server long before the reply would have ended.
            await eventually(lambda: llm.cancelled == 1, limit_s=20)
            # With a single LLM slot, another chat's question is answered...
            api.send_text(api.private_chat(bob), bob, "anyone there?")
            await api.wait_for(lambda a: "echo anyone there?" in telegram_replies(a, BOB))
            # ...and so is Ann's next one once she unblocks the bot.
            blocked.clear()
            api.send_text(api.private_chat(ann), ann, "sorry, back again")
            await api.wait_for(lambda a: "echo sorry, back again" in telegram_replies(a, ANN))
    refused = [c for c in api.calls if c.error is not None and c.error.status == 403]
    assert refused, "the block was in force"
    # The first refusal ends the reply: no part is sent anew into a chat that refuses the bot.
    assert [c.method for c in refused] == ["editMessageText"]
    assert [last_user_text(b) for b in llm.requests] == [
        "tell me everything",
        "anyone there?",
        "sorry, back again",
    ]
