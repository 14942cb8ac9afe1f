"""Early answers in a voice channel: started at the speaker's first short pause.

The real ParleyApp (engine, store, Whisper, piper) and DiscordAdapter run against the fake
Discord and the fake voice server; a fake human speaks piper speech in real time and the fake
voice server records what reaches them. No assertion is about time; waits are hang guards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.discord.voice.endings import sounds_finished
from tests.fakes.discord_voice.harness import UTTERANCE_TIMEOUT_S, transcribe, voice_bot, words
from tests.fakes.discord_voice.server import speech
from tests.fakes.discord_world import DiscordWorld
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.stored import stored_rows

pytestmark = pytest.mark.speech

ALICE = DiscordWorld.ALICE
BOT_ID = DiscordWorld.BOT.id
# Said with a pause in the middle: Whisper hears the first part as "I would like to know about."
WORDS_SO_FAR = "I would like to know about"
THE_REST = "the weather in London tomorrow morning"
# The fake LLM's answers: to the whole utterance, and to the words before the pause.
ANSWER = "The weather today is sunny and warm. It is a good day for a walk in the park."
ANSWER_WORDS = {"weather", "sunny", "warm", "park"}
GUESSED = "Once upon a time there was a friendly green dragon."
GUESSED_WORDS = {"once", "upon", "time", "green", "dragon"}
# Long enough for the early answer to be made and held back during the test's pause (a hang
# guard waits for that) even while other work shares the cores.
PAUSE_MS = 3000
SILENCE = 0.01  # |sample| below this ends the speech (piper's clips end in near-silence)


def trimmed(pcm: np.ndarray) -> np.ndarray:
    """`pcm` without its trailing near-silence: the pause is the test's own."""
    loud = np.flatnonzero(np.abs(pcm) > SILENCE)
    return pcm[: loud[-1] + 1] if loud.size else pcm


def weather_for_the_whole(body: dict[str, Any]) -> str:
    return ANSWER if "london" in last_user_text(body).lower() else GUESSED


def stored_turns(tmp_path: Path) -> list[tuple[str, str, str]]:
    rows = stored_rows(
        tmp_path / "parley.db", "SELECT role, content, status FROM messages ORDER BY id"
    )
    return [(str(role), str(content), str(status)) for role, content, status in rows]


@pytest.mark.parametrize(
    ("heard", "language", "finished"),
    [
        ("What is the capital of France?", "en", True),
        ("Tell me a story.", "en", True),
        ("I would like to know about.", "en", False),  # Whisper's full stop after a cut thought
        ("What is the weather in?", "en", False),
        ("Tell me a long story and...", "en", False),
        ("Please tell me a story about", "en", False),
        ("Hmm", "en", False),
        ("Quelle est la capitale de la France ?", "fr", True),
        ("Je voudrais savoir pour.", "fr", False),
        ("Raconte-moi une histoire avec.", "fr", False),
        ("Raconte-moi une histoire avec.", "auto", False),  # any language's open words
        ("Tell me a story about", "fr", False),  # no full stop: never whole
    ],
)
def test_a_whole_sentence_or_question_is_told_from_a_cut_thought(
    heard: str, language: str, finished: bool
) -> None:
    assert sounds_finished(heard, language) is finished


async def test_a_pause_mid_thought_gets_one_answer_to_the_whole_utterance(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=weather_for_the_whole)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE, voice_pause_ms=PAUSE_MS) as bot:
        (alice,) = bot.humans
        call = bot.conversation
        first, rest = trimmed(await speech(WORDS_SO_FAR)), await speech(THE_REST)
        await alice.say(first)
        # The pause: the words so far are answered, and that answer waits to be heard.
        await bot.voice.wait_for(lambda: call.early_answer_held, UTTERANCE_TIMEOUT_S)
        (guess,) = bot.requests()
        assert {"like", "know"} <= words(guess) and "london" not in words(guess), guess
        went_on = time.monotonic()
        await alice.say(rest, lead_in_s=0.0)
        heard = await bot.heard_answer(alice)
        # One answer, to the whole utterance: the last request has all of it.
        assert call.turns == 1 and call.withdrawn == 1
        whole = bot.requests()[-1]
        assert {"like", "know", "london", "tomorrow"} <= words(whole), whole
        # Nothing of the withdrawn answer reached Alice: no sound during her pause, and what
        # she heard is the answer to the whole.
        assert heard.frames and all(f.arrival > went_on for f in heard.frames if f.speech)
        transcript = await transcribe(bot.transcriber, heard.speech_pcm())
        assert words(transcript) >= ANSWER_WORDS and not GUESSED_WORDS & words(transcript), (
            transcript
        )
        # The history: one question (the whole utterance) and one answer.
        (question, answer) = stored_turns(tmp_path)
        assert question == ("user", whole, "complete")
        assert answer == ("assistant", ANSWER, "complete")
        # The linked text channel: the words heard (all of them), then the answer.
        said, written = bot.channel_text()[-2:]
        assert said.startswith("🎙️ **Alice**:") and "London" in said, said
        assert written == ANSWER
        assert not any(GUESSED in text for text in bot.channel_text())
