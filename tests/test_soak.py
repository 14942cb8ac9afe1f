"""Soak: 200 chats at once over each platform fake; nothing is lost and each chat keeps its order.

Every chat sends three messages at once, so each has a line of turns while the others stream.
The run is bounded (one round of 600 messages per platform); bench/bench_soak.py runs bigger
rounds with injected faults and reports the memory figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.chat_load import LoadResult
from tests.fakes.drivers import PlatformDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import echo_reply

CHATS = 200
PER_CHAT = 3
# Replies generated at once. The fake LLM answers instantly, so this only sets how many replies
# stream to the platform together; it is not a recommendation for a real llama-server.
SLOTS = 32
DEADLINE_S = 150.0  # a hang guard: a round that runs out reports what is missing


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


def assert_delivered(result: LoadResult) -> None:
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 0), result.problems
    assert result.answered == result.messages == CHATS * PER_CHAT


async def test_200_chats_lose_nothing_and_keep_order(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    settings = driver.settings(tmp_path, fake_llm.url, llm={"concurrency": SLOTS})
    async with driver.running(settings):
        result = await driver.load(CHATS).round(PER_CHAT, deadline_s=DEADLINE_S)
    assert_delivered(result)
