"""What every platform adapter does, end to end: each test runs once per platform.

The tests drive the platform fakes through their drivers (tests/fakes/drivers.py); the bot is the
real app with the platform's real adapter. What only one platform does is tested in
tests/test_telegram_adapter.py and tests/test_discord_adapter.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.drivers import PlatformDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

REPLY = "Nice to meet you, Ann. How can I help today?"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=REPLY)


async def test_a_waiting_chat_is_told_its_place_in_line(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.first_delay_s = 0.5  # the first reply still thinks when the second comes
    ann, bob = driver.person("Ann"), driver.person("Bob")
    settings = driver.settings(tmp_path, fake_llm.url, llm={"concurrency": 1})
    async with driver.running(settings):
        await driver.say(ann, "first")
        await driver.say(bob, "second")
        # Only the replies are shown in the end: the notice is gone.
        await driver.wait_until(lambda: driver.shown(ann) == [REPLY] == driver.shown(bob))
    (notice,) = driver.queue_notices()  # whoever came second waited for the only slot
    assert notice.startswith("⏳ You're #1 in line")  # next in line
    assert driver.typing_shown(ann) and driver.typing_shown(bob)


async def test_a_restart_mid_conversation_keeps_the_history(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    settings = driver.settings(tmp_path, fake_llm.url)
    async with driver.running(settings):
        await driver.say(ann, "My name is Ann and I like sailing.")
        await driver.wait_until(lambda: REPLY in driver.shown(ann))
    async with driver.running(settings):
        await driver.say(ann, "What do I like?")
        await driver.wait_until(lambda: driver.shown(ann).count(REPLY) == 2)
    assert "I like sailing" in json.dumps(fake_llm.requests[1])


@pytest.mark.speech
async def test_a_voice_note_is_transcribed_shown_and_answered(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    from tests.fakes.audio_samples import KNOWN_SENTENCE, voice_note, word_error_rate

    ann = driver.person("Ann")
    async with driver.running(driver.settings(tmp_path, fake_llm.url), speech=True):
        await driver.send_voice_note(ann, voice_note(), duration_s=4)
        await driver.wait_until(lambda: REPLY in driver.shown(ann))
    assert driver.downloads() == 1
    transcript, answer = driver.shown(ann)
    assert transcript.startswith("🎤") and "lazy dog" in transcript.lower()
    assert answer == REPLY
    heard = last_user_text(fake_llm.requests[0])
    assert "brown fox" in heard.lower()
    assert word_error_rate(KNOWN_SENTENCE, heard) < 0.3
