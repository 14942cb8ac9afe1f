"""Talking with the bot in a Discord voice channel, end to end through the real adapter.

The real ParleyApp (engine, store, Whisper, piper) and DiscordAdapter run against the fake
Discord (REST, gateway, slash commands) and the fake voice server (wss://, UDP, DAVE). A fake
human runs /join in #general and speaks piper speech into the call; what the bot says back is
decrypted and decoded at the fake human's side and transcribed with Whisper (the bot's own
model: one per process). No assertion is about time; waits are hang guards.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.discord.voice.wake import wake_word_rest
from bot.messages import Msg, say
from tests.fakes.discord_voice.harness import transcribe, voice_bot, words
from tests.fakes.discord_voice.media import OpusEncoder, stereo_frames
from tests.fakes.discord_voice.server import FakeHuman, speech
from tests.fakes.discord_world import DiscordWorld
from tests.fakes.llm_server import (
    Behaviour,
    FakeLLMServer,
    FakeToolCall,
    last_user_text,
    tool_messages,
    tool_results,
)
from tests.fakes.mcp_servers import command
from tests.fakes.waits import HANG_GUARD_S

pytestmark = pytest.mark.speech

ALICE, BOB, CAROL = DiscordWorld.ALICE, DiscordWorld.BOB, DiscordWorld.CAROL
BOT_ID = DiscordWorld.BOT.id
QUESTION = "what is the capital of France"
DRAGON = "please tell me a story about a dragon"
LONG_PHRASE = "I would like to know the weather in London tomorrow morning near the station"
# Answers in words tiny.en hears reliably after Opus (it heard "Francis" for "France is").
ANSWER = "The weather today is sunny and warm. It is a good day for a walk in the park."
ANSWER_WORDS = {"weather", "sunny", "warm", "good", "day", "park"}
SHORT_ANSWER = "The weather today is sunny and warm."
STORY = "Once upon a time there was a friendly green dragon."
STORY_WORDS = {"once", "upon", "time", "green", "dragon"}
LONG_STORY = " ".join(
    [
        STORY,
        "It lived in a cave high up in the mountains.",
        "Every morning it flew over the forest and the river.",
        "The people of the village brought it bread and apples.",
        "In return the dragon kept the village warm in winter.",
    ]
)
FAST = 3.0  # the fake humans send 3x faster than real time where timing is not under test
SPEECH_FRAMES_PER_S = 50  # 20 ms frames


def heard_speech(human: FakeHuman) -> int:
    """Frames with sound `human` heard from the bot."""
    heard = human.heard.get(BOT_ID)
    return heard.speech_frames if heard is not None else 0


def story_or_weather(body: dict[str, Any]) -> str:
    """The fake LLM: a story when asked for one, else the weather."""
    return STORY if "dragon" in last_user_text(body).lower() else SHORT_ANSWER


def long_story_or_weather(body: dict[str, Any]) -> str:
    """The fake LLM: a long story (five sentences) when asked for one, else the weather."""
    return LONG_STORY if "dragon" in last_user_text(body).lower() else SHORT_ANSWER


def held_after_first_sentence(release: asyncio.Event) -> Behaviour:
    """The fake LLM writes ANSWER's first sentence, then the rest only once `release` is set:
    what a test checks "while the LLM is still writing" holds however slow the machine is."""

    async def hold(body: dict[str, Any]) -> None:
        await release.wait()

    first_sentence = ANSWER.split(". ")[0].split()
    return Behaviour(reply=ANSWER, words_per_chunk=len(first_sentence), pause=hold)


@pytest.fixture
def llm_behaviour() -> Behaviour:
    # Slow enough that the first sentence is spoken while the rest is still being written.
    return Behaviour(reply=ANSWER, delay_s=0.25)


@pytest.mark.parametrize(
    ("heard", "rest"),
    [
        ("Parley, what is the capital of France?", "what is the capital of France?"),
        ("Hey Parley, tell me a story.", "tell me a story."),
        ("Harley, what time is it?", "what time is it?"),  # Whisper's spelling of the name
        ("Parley.", ""),  # the name alone: the speaker's next utterance counts
        ("What is the capital of France, Parley?", None),  # not at the start
        ("Tell me a story.", None),
    ],
)
def test_the_wake_word_is_the_name_at_the_start(heard: str, rest: str | None) -> None:
    assert wake_word_rest(heard, "Parley") == rest


async def test_join_from_a_text_channel_then_talk(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    rest_of_the_answer = asyncio.Event()
    fake_llm.behaviour = held_after_first_sentence(rest_of_the_answer)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        await alice.say_text(QUESTION, pace=FAST)
        (asked,) = await bot.asked(1)
        # Whisper's words, not a fixed string: after Opus, tiny.en sometimes hears "France" as
        # "friends" or "Francis"; the point is that the request carries what was transcribed.
        assert {"what", "capital"} <= words(asked), asked
        # The first sentence is heard while the LLM is still writing the second (it writes
        # that only once Alice heard the first: a bot waiting for the whole reply would hang).
        await bot.voice.wait_for(lambda: heard_speech(alice) > 0)
        assert fake_llm.in_flight == 1
        rest_of_the_answer.set()
        heard = await bot.heard_answer(alice)
        assert heard.plain_speech == 0 and heard.dave_failed == 0  # end-to-end encrypted
        transcript = await transcribe(bot.transcriber, heard.speech_pcm())
        assert words(transcript) >= ANSWER_WORDS, transcript
        # The linked text channel shows both sides: the words heard, then the answer.
        said, answer = bot.channel_text()[-2:]
        assert said.startswith("🎙️ **Alice**:") and words(asked) <= words(said), (said, asked)
        assert answer == ANSWER
        assert bot.conversation.session.stats.dave_failed == 0


async def test_a_turn_that_calls_a_tool_is_answered_aloud(
    tmp_path: Path, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tool that takes a second and a half: the listener hears "One moment." meanwhile.
    servers = {"fake": {"command": command("stdio"), "tools": ["wait"]}}
    monkeypatch.setenv("PARLEY_TOOLS__ENABLED", "true")
    monkeypatch.setenv("PARLEY_TOOLS__SERVERS", json.dumps(servers))
    weather = json.dumps({"seconds": 1.5, "text": "sunny and warm"})

    def answer(body: dict[str, Any]) -> str:
        (result,) = tool_results(body)
        return f"The weather today is {result['content'].splitlines()[1]}."

    fake_llm.behaviour = Behaviour(
        reply=answer,
        tool_calls=lambda body: [] if tool_results(body) else [FakeToolCall("wait", weather)],
    )
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        tools = bot.running.app.tools
        assert tools is not None
        await tools.wait_settled(HANG_GUARD_S)
        (alice,) = bot.humans
        await alice.say_text(QUESTION, pace=FAST)
        heard = await bot.heard_answer(alice)
        assert heard.plain_speech == 0 and heard.dave_failed == 0
        transcript = words(await transcribe(bot.transcriber, heard.speech_pcm()))
        assert {"one", "moment", "weather", "sunny", "warm"} <= transcript, transcript
        first, second = fake_llm.requests
        assert {"what", "capital"} <= words(last_user_text(first))
        assert [m["tool_call_id"] for m in tool_messages(second)] == fake_llm.call_ids
        # The linked text channel shows the tool, then the answer (never "One moment.").
        assert bot.channel_text()[-1] == f"🔧 `wait`…\n\n{SHORT_ANSWER}"


async def test_barge_in_stops_the_answer_and_the_interruption_is_answered(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=long_story_or_weather)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        interruption = await speech(QUESTION)  # ready before the bot starts talking
        await alice.say_text(DRAGON, pace=FAST)
        await bot.voice.wait_for(lambda: heard_speech(alice) >= SPEECH_FRAMES_PER_S // 2)
        await alice.say(interruption)  # real time: the onset is what stops the bot
        first, second = await bot.asked(2)
        # The story (five sentences) was cut at Alice's first words: by the time her question
        # reached the LLM only its beginning had been heard.
        cut = heard_speech(alice)
        assert cut < 5 * SPEECH_FRAMES_PER_S, cut
        assert "dragon" in first.lower() and "capital" in second.lower(), (first, second)
        heard = await bot.heard_answer(alice, answers=2)
        assert heard.plain_speech == 0
        # The text channel still has the whole story.
        assert LONG_STORY in bot.channel_text()


async def test_two_speakers_take_turns_answered_in_order_one_at_a_time(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=story_or_weather)
    async with voice_bot(tmp_path, fake_llm, ALICE, BOB, join=ALICE) as bot:
        alice, bob = bot.humans
        # Bob starts while Alice is still talking: their streams overlap on the wire.
        await asyncio.gather(
            alice.say_text(QUESTION, pace=FAST), bob.say_text(DRAGON, lead_in_s=0.8, pace=FAST)
        )
        first, second = await bot.asked(2)
        assert "capital" in first.lower() and "dragon" in second.lower(), (first, second)
        heard = await bot.heard_answer(bob, answers=2)
        assert fake_llm.max_in_flight == 1  # never two answers at once
        transcript = words(await transcribe(bot.transcriber, heard.speech_pcm()))
        assert transcript >= {"weather", "sunny"} | STORY_WORDS, transcript
        alice_said, first_answer, bob_said, second_answer = bot.channel_text()[-4:]
        assert alice_said.startswith("🎙️ **Alice**:") and bob_said.startswith("🎙️ **Bob**:")
        assert (first_answer, second_answer) == (SHORT_ANSWER, STORY)


async def test_a_speaker_leaving_mid_utterance_is_not_answered(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=SHORT_ANSWER)
    async with voice_bot(tmp_path, fake_llm, ALICE, BOB, join=ALICE) as bot:
        alice, bob = bot.humans
        epoch = bot.voice.group.epoch
        await bob.say_text(LONG_PHRASE, stop_after_s=1.5, pace=FAST)
        await bot.voice.wait_for(lambda: bot.conversation.ignored >= 1)
        # Bob's removal re-keyed the group; Alice is still heard and answered.
        await bot.voice.dave_settled()
        assert bot.voice.group.epoch > epoch and BOB.id not in bot.voice.group.members
        await alice.say_text(QUESTION, pace=FAST)
        (asked,) = await bot.asked(1)
        assert "capital" in asked.lower(), asked
        heard = await bot.heard_answer(alice)
        assert heard.speech_frames > 0 and heard.dave_failed == 0
        assert len(fake_llm.requests) == 1  # Bob's half sentence never reached the LLM


async def test_a_rekey_while_the_bot_speaks_keeps_its_answer_heard(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    rest_of_the_answer = asyncio.Event()
    fake_llm.behaviour = held_after_first_sentence(rest_of_the_answer)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        await alice.say_text(QUESTION, pace=FAST)
        await bot.voice.wait_for(lambda: heard_speech(alice) > 0)
        epoch = bot.voice.group.epoch
        carol = await bot.voice.join(CAROL)  # a new member: Add, commit, a new epoch
        await bot.voice.dave_settled()
        assert bot.voice.group.epoch > epoch
        # The second sentence is written (and spoken) only now, in the new epoch.
        rest_of_the_answer.set()
        heard = await bot.heard_answer(alice)
        # Alice decrypted every frame, before and after the bot moved to the new epoch...
        assert heard.dave_failed == 0 and heard.plain_speech == 0
        transcript = await transcribe(bot.transcriber, heard.speech_pcm())
        assert words(transcript) >= ANSWER_WORDS, transcript
        # ... and Carol, who came in mid-answer, heard the rest of it end-to-end encrypted.
        carol_heard = carol.heard[BOT_ID]
        assert carol_heard.speech_frames > 0 and carol_heard.plain_speech == 0


async def test_packets_from_an_unknown_ssrc_are_never_answered(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=SHORT_ANSWER)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        # Real speech from an SSRC no SPEAKING ever named (a stranger, or junk).
        encoder = OpusEncoder()
        stranger = [encoder.encode(frame) for frame in stereo_frames(await speech(DRAGON))]
        bot.voice.send_stranger_audio(bot.voice.new_ssrc(), stranger)
        stats = bot.conversation.session.stats
        await bot.voice.wait_for(lambda: stats.unknown_ssrc_dropped > 0)
        await alice.say_text(QUESTION, pace=FAST)
        (asked,) = await bot.asked(1)
        assert "capital" in asked.lower(), asked
        await bot.heard_answer(alice)
        assert len(fake_llm.requests) == 1 and stats.utterances == 1


@pytest.mark.parametrize("fault", ["dropped", "crashed-resume"])
async def test_the_voice_server_drops_the_bot_and_it_comes_back(
    tmp_path: Path, fake_llm: FakeLLMServer, fault: str
) -> None:
    fake_llm.behaviour = Behaviour(reply=SHORT_ANSWER)
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        (alice,) = bot.humans
        voice, call = bot.voice, bot.conversation
        client = call.session.client
        sessions, resumes = len(voice.connections), voice.bot_connection().resumes
        if fault == "dropped":
            await voice.drop_websocket()
        else:
            await voice.close_websocket(4015)  # "voice server crashed": resume
        await voice.wait_for(
            lambda: len(voice.connections) > sessions or voice.bot_connection().resumes > resumes
        )
        await voice.wait_for(lambda: client.is_connected() and client.e2ee_ready)
        await voice.dave_settled()
        assert bot.conversation is call  # the same conversation goes on
        await alice.say_text(QUESTION, pace=FAST)
        (asked,) = await bot.asked(1)
        assert "capital" in asked.lower(), asked
        heard = await bot.heard_answer(alice)
        assert heard.speech_frames > 0 and heard.dave_failed == 0


async def test_wake_word_mode_answers_only_what_starts_with_the_name(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=SHORT_ANSWER)
    async with voice_bot(
        tmp_path, fake_llm, ALICE, join=ALICE, voice_listen="wake_word", voice_mirror_text=False
    ) as bot:
        (alice,) = bot.humans
        await alice.say_text(QUESTION, pace=FAST)
        await bot.voice.wait_for(lambda: bot.conversation.ignored >= 1)
        assert fake_llm.requests == []
        await alice.say_text(f"Parley, {QUESTION}", pace=FAST)
        (asked,) = await bot.asked(1)
        # Whisper may spell the name its own way; what is asked is what followed it (and it may
        # hear "France" as "friends": the words it always gets are checked).
        assert {"what", "capital"} <= words(asked), asked
        assert "parley" not in asked.lower()
        heard = await bot.heard_answer(alice)
        assert heard.speech_frames > 0
        # Not mirrored: nothing of the talk was written in the text channel.
        written = bot.channel_text()
        assert not [t for t in written if t.startswith("🎙️") or SHORT_ANSWER in t], written


async def test_leave_then_join_a_named_channel(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE) as bot:
        connection = bot.voice.bot_connection()
        answer = await bot.command("leave", ALICE)
        assert answer.startswith("👋 Left"), answer
        assert not bot.in_voice
        await bot.voice.wait_for(lambda: connection.closed)  # the gateway's op 4, channel None
        assert await bot.command("leave", ALICE) == say(Msg.VOICE_NOT_IN_VOICE)
        # Bob is in no voice channel: he names one (Discord's channel picker).
        answer = await bot.join(BOB, channel=str(bot.voice.channel_id))
        assert answer.startswith("🔊 Joined"), answer
        assert bot.conversation.voice_channel.id == bot.voice.channel_id


async def test_the_bot_leaves_when_the_channel_empties_and_at_shutdown(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    async with voice_bot(
        tmp_path, fake_llm, ALICE, BOB, join=ALICE, voice_empty_leave_s=0.1
    ) as bot:
        alice, bob = bot.humans
        await bot.voice.leave(alice)
        assert bot.in_voice  # Bob is still there
        await bot.voice.leave(bob)
        await bot.voice.wait_for(lambda: not bot.in_voice)
        await bot.fake.wait_until(lambda: "nobody else was there" in bot.channel_text()[-1])
        assert bot.voice.bot_connection().closed
        # Back in (Carol joins and calls it), then the bot stops: it leaves on its way out.
        carol = await bot.voice.join(CAROL)
        bot.humans = [carol]
        assert (await bot.join(CAROL)).startswith("🔊 Joined")
        connection = bot.voice.bot_connection()
        await bot.running.adapter.stop()
        assert connection.closed


async def test_the_bot_leaves_after_the_idle_time(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    async with voice_bot(tmp_path, fake_llm, ALICE, join=ALICE, voice_idle_leave_s=0.5) as bot:
        # Alice is there but says nothing.
        await bot.voice.wait_for(lambda: not bot.in_voice)
        await bot.fake.wait_until(lambda: "nobody spoke to me" in bot.channel_text()[-1])
        assert bot.voice.bot_connection().closed and fake_llm.requests == []


async def test_join_refusals(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    async with voice_bot(tmp_path, fake_llm, voice_channels=[1234]) as bot:
        assert await bot.command("join", ALICE) == say(
            Msg.VOICE_WHICH_CHANNEL
        )  # in no voice channel
        named = await bot.command("join", ALICE, channel=str(bot.voice.channel_id))
        assert named == say(Msg.VOICE_NOT_ALLOWED, channel=f"<#{bot.voice.channel_id}>")
        dm = await bot.fake.interact("join", {}, user=ALICE, dm=True)
        await bot.fake.wait_until(lambda: bool(bot.fake.reply_messages(dm)))
        await bot.fake.wait_until(lambda: bot.fake.reply_messages(dm)[0].content != "")
        assert bot.fake.reply_messages(dm)[0].content == say(Msg.VOICE_NOT_IN_SERVER)
        assert not bot.in_voice
        assert not [f for f in bot.fake.session.frames if f.direction == "in" and f.op == 4]
