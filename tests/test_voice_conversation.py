"""Talking with the bot in a Discord voice channel, end to end through the real adapter.

The real ParleyApp (engine, store, Whisper, piper) and DiscordAdapter run against the fake
Discord (REST, gateway, slash commands) and the fake voice server (wss://, UDP, DAVE). A fake
human runs /join in #general and speaks piper speech into the call; what the bot says back is
decrypted and decoded at the fake human's side and transcribed with Whisper.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.discord_voice.harness import transcribe, voice_bot, words
from tests.fakes.discord_voice.server import FakeHuman
from tests.fakes.discord_world import DiscordWorld
from tests.fakes.llm_server import Behaviour, FakeLLMServer

pytestmark = pytest.mark.speech

ALICE, BOB, CAROL = DiscordWorld.ALICE, DiscordWorld.BOB, DiscordWorld.CAROL
QUESTION = "what is the capital of France"
# Words tiny.en hears reliably after Opus (it heard "Francis" for "France is").
ANSWER = "The weather today is sunny and warm. It is a good day for a walk in the park."
ANSWER_WORDS = {"weather", "sunny", "warm", "good", "day", "park"}
BOT_ID = DiscordWorld.BOT.id
FAST = 3.0  # the fake humans send 3x faster than real time where timing is not under test


def heard_speech(human: FakeHuman) -> int:
    """Frames with sound `human` heard from the bot."""
    heard = human.heard.get(BOT_ID)
    return heard.speech_frames if heard is not None else 0


@pytest.fixture
def llm_behaviour() -> Behaviour:
    # Slow enough that the first sentence is spoken while the rest is still being written.
    return Behaviour(reply=ANSWER, delay_s=0.25)


async def test_join_from_a_text_channel_then_talk(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        await alice.say_text(QUESTION, pace=FAST)
        (asked,) = await bot.asked(1)
        assert {"what", "capital", "france"} <= words(asked), asked
        # The first sentence is heard while the LLM is still writing the second.
        await bot.voice.wait_for(lambda: heard_speech(alice) > 0)
        assert fake_llm.in_flight == 1
        heard = await bot.heard_answer(alice)
        assert heard.plain_speech == 0 and heard.dave_failed == 0
        transcript = await transcribe(bot.transcriber, heard.speech_pcm())
        assert words(transcript) >= ANSWER_WORDS, transcript
        said, answer = bot.channel_text()[-2:]
        assert said.startswith("🎙️ **Alice**:") and "capital" in said.lower(), said
        assert answer == ANSWER
