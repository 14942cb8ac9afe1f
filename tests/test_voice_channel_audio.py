"""Live voice in a Discord voice channel, end to end, with real speech and Whisper.

The real discord.py client joins through the fake gateway and the fake voice server (wss://,
UDP, DAVE with a fake human's own davey session). The fake humans speak phrases synthesised by
the offline piper voice; what the bot's pipeline yields is transcribed with Parley's
Transcriber, and what the bot says is decrypted and decoded at the fake side and transcribed too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.config import STTSettings
from bot.speech.stt import Transcriber
from tests.fakes.discord_voice.harness import Call, transcribe, voice_call, words
from tests.fakes.discord_voice.media import AES_GCM, XCHACHA
from tests.fakes.discord_voice.server import CLOSE_VOICE_SERVER_CRASHED, FakeHuman
from tests.fakes.discord_world import DiscordWorld

pytestmark = [pytest.mark.speech, pytest.mark.asyncio(loop_scope="module")]

ALICE, BOB, CAROL = DiscordWorld.ALICE, DiscordWorld.BOB, DiscordWorld.CAROL
BOT_ID = DiscordWorld.BOT.id
QUESTION = "what is the capital of France"
# The words of it tiny.en always hears (under load it once heard "France" as "friends").
HEARD = {"what", "capital"}
# What the bot says: words tiny.en hears reliably (it heard "Francis" for "France is").
ANSWER = "The weather today is sunny and warm"
ANSWER_WORDS = {"weather", "today", "sunny", "warm"}
BOB_PHRASE = "please tell me a story about a dragon"
LONG_PHRASE = "I would like to know the weather in London tomorrow morning near the station"
HEARD_TIMEOUT_S = 30.0  # hang guard
FAST = 3.0  # fake humans send 3x faster than real time where timing is not under test


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper() -> AsyncIterator[Transcriber]:
    transcriber = Transcriber(STTSettings(model="tiny.en"))
    await transcriber.warm_up()
    yield transcriber
    await transcriber.close()


def _heard_bot(human: FakeHuman) -> bool:
    return BOT_ID in human.heard and human.heard[BOT_ID].silence_frames >= 5


async def assert_bot_is_heard(call: Call, whisper: Transcriber, text: str = ANSWER) -> None:
    """The bot says `text`; every fake human decrypts and decodes it to those words."""
    assert await call.session.speak(await call.voice.speech(text))
    for human in call.humans:
        await call.voice.wait_for(functools.partial(_heard_bot, human), HEARD_TIMEOUT_S)
        heard = human.heard[BOT_ID]
        assert heard.plain_speech == 0  # nothing the bot said left unencrypted
        assert heard.dave_failed == 0
        transcript = await transcribe(whisper, heard.speech_pcm())
        assert words(transcript) >= ANSWER_WORDS, transcript


@pytest.mark.parametrize(
    ("mode", "bot_commits"),
    [(AES_GCM, False), (XCHACHA, True)],
    ids=["aes256-gcm/human-commits", "xchacha20/bot-commits"],
)
async def test_question_is_heard_and_answer_is_understood(
    whisper: Transcriber, mode: str, bot_commits: bool
) -> None:
    async with voice_call(ALICE, modes=(mode,), prefer_bot_commits=bot_commits) as call:
        assert call.voice.bot_connection().mode == mode
        (alice,) = call.humans
        await alice.say_text(QUESTION)
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        assert utterance.ssrc == alice.ssrc
        assert not utterance.cut_off
        assert utterance.started_at < utterance.ended_at
        transcript = await transcribe(whisper, utterance.pcm)
        assert words(transcript) >= HEARD, transcript
        assert call.session.stats.dave_failed == 0
        await assert_bot_is_heard(call, whisper)


async def test_two_speakers_are_kept_apart(whisper: Transcriber) -> None:
    async with voice_call(ALICE, BOB) as call:
        alice, bob = call.humans
        # Bob starts while Alice is still talking: the streams overlap on the wire.
        speaking = asyncio.gather(
            alice.say_text(QUESTION, pace=FAST), bob.say_text(BOB_PHRASE, lead_in_s=0.8, pace=FAST)
        )
        first, second = await call.next_utterance(), await call.next_utterance()
        await speaking
        by_user = {u.user_id: u for u in (first, second)}
        assert set(by_user) == {ALICE.id, BOB.id}
        assert by_user[ALICE.id].ssrc == alice.ssrc and by_user[BOB.id].ssrc == bob.ssrc
        alice_text = await transcribe(whisper, by_user[ALICE.id].pcm)
        bob_text = await transcribe(whisper, by_user[BOB.id].pcm)
        assert words(alice_text) >= HEARD, alice_text
        assert {"story", "dragon"} <= words(bob_text), bob_text
        assert not {"dragon", "story"} & words(alice_text), alice_text
        assert not {"capital", "france"} & words(bob_text), bob_text
        await assert_bot_is_heard(call, whisper)


async def test_speaker_leaving_mid_utterance(whisper: Transcriber) -> None:
    async with voice_call(ALICE, BOB) as call:
        alice, bob = call.humans
        epoch = call.voice.group.epoch
        await bob.say_text(LONG_PHRASE, stop_after_s=1.5, pace=FAST)
        cut = await call.next_utterance()
        assert cut.user_id == BOB.id
        assert cut.cut_off
        transcript = await transcribe(whisper, cut.pcm)
        assert {"like", "know"} <= words(transcript), transcript
        assert "station" not in words(transcript)
        # Bob's removal re-keyed the group; Alice is still heard, and hears the bot.
        await call.voice.dave_settled()
        assert call.voice.group.epoch > epoch
        assert BOB.id not in call.voice.group.members
        call.humans.remove(bob)
        await alice.say_text(QUESTION, pace=FAST)
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        assert words(await transcribe(whisper, utterance.pcm)) >= HEARD
        await assert_bot_is_heard(call, whisper)


async def test_rekey_mid_utterance_keeps_decrypting(whisper: Transcriber) -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        epoch = call.voice.group.epoch
        speaking = asyncio.create_task(alice.say_text(LONG_PHRASE, pace=FAST))
        await call.voice.wait_for(lambda: alice.frames_sent >= 75)  # a second and a half in
        carol = await call.voice.join(CAROL)  # a new member: Add, commit, a new epoch
        await call.voice.dave_settled()
        assert call.voice.group.epoch > epoch
        await speaking
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id and not utterance.cut_off
        transcript = await transcribe(whisper, utterance.pcm)
        stats = call.session.stats
        assert {"weather", "london", "station"} <= words(transcript), (transcript, stats)
        # Every frame was decrypted, before, across and after the epoch change.
        assert stats.dave_failed == 0, stats
        assert stats.per_user_frames[ALICE.id] == alice.frames_sent, stats
        call.humans.append(carol)
        await assert_bot_is_heard(call, whisper)


async def test_rekey_with_the_bot_committing_a_welcome(whisper: Transcriber) -> None:
    async with voice_call(ALICE, prefer_bot_commits=True) as call:
        (alice,) = call.humans
        await alice.say_text(QUESTION, pace=FAST)
        assert (await call.next_utterance()).user_id == ALICE.id
        epoch = call.voice.group.epoch
        # Alice's client re-joins the group with a new key: the bot, the only other member,
        # commits the Remove + Add and its Welcome brings Alice back.
        await call.voice.rekey(alice)
        await call.voice.dave_settled()
        assert call.voice.group.epoch > epoch
        assert call.voice.bot_connection().received(28)  # the bot's commit + welcome
        await alice.say_text(BOB_PHRASE, pace=FAST)
        utterance = await call.next_utterance()
        assert {"story", "dragon"} <= words(await transcribe(whisper, utterance.pcm))
        await assert_bot_is_heard(call, whisper)


@pytest.mark.parametrize("fault", ["dropped", "crashed-resume", "resume-refused"])
async def test_voice_websocket_lost_then_audio_flows_again(
    whisper: Transcriber, fault: str
) -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        voice, client = call.voice, call.session.client
        sessions, resumes = len(voice.connections), voice.bot_connection().resumes
        if fault == "dropped":
            await voice.drop_websocket()
        else:
            voice.accept_resume = fault == "crashed-resume"
            await voice.close_websocket(CLOSE_VOICE_SERVER_CRASHED)
        await voice.wait_for(
            lambda: len(voice.connections) > sessions or voice.bot_connection().resumes > resumes
        )
        await voice.wait_for(lambda: client.is_connected() and client.e2ee_ready)
        await voice.dave_settled()
        if fault == "crashed-resume":
            assert len(voice.connections) == sessions  # the same session, resumed
        else:
            assert len(voice.connections) == sessions + 1  # joined again
        await alice.say_text(QUESTION, pace=FAST)
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        assert words(await transcribe(whisper, utterance.pcm)) >= HEARD
        if fault != "resume-refused":  # joined again like "dropped": hearing once is enough
            await assert_bot_is_heard(call, whisper)


async def test_passthrough_during_a_downgrade_transition(whisper: Transcriber) -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        transition = await call.voice.prepare_downgrade()
        # Between prepare (op 21) and execute (op 22) Alice already sends plain Opus; the bot's
        # decryptor is in passthrough and the call still counts as end-to-end encrypted.
        await alice.say_text(QUESTION, pace=FAST)
        utterance = await call.next_utterance()
        assert words(await transcribe(whisper, utterance.pcm)) >= HEARD
        assert call.session.stats.dave_passthrough > 0
        await call.voice.execute_transition(transition)
        await call.voice.wait_for(lambda: call.session.client.connection.dave_protocol_version == 0)
        await alice.say_text(BOB_PHRASE, pace=FAST)
        utterance = await call.next_utterance()
        assert {"story", "dragon"} <= words(await transcribe(whisper, utterance.pcm))
        await assert_bot_is_heard(call, whisper)
