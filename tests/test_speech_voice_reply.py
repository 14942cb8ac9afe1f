"""Voice replies synthesised sentence by sentence while the reply text still streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import edge_tts.communicate
import pytest
import pytest_asyncio

from bot.config import STTSettings, TTSSettings
from bot.errors import SpeechSynthesisError
from bot.speech.audio import SPEECH_RATE, decode_pcm
from bot.speech.stt import Transcriber
from bot.speech.tts import SpeechSynthesizer
from bot.speech.voice_reply import SENTENCE_GAP_S, VoiceReply
from tests.fakes import audio_samples
from tests.fakes.edge_tts_service import TONE_SECONDS, EdgeTTSStandIn

SAFETY_TIMEOUT_S = 30  # only so a broken build fails instead of hanging


@pytest_asyncio.fixture
async def edge_service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EdgeTTSStandIn]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    async with EdgeTTSStandIn() as service:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", service.wss_url)
        yield service


@pytest_asyncio.fixture
async def synthesizer(edge_service: EdgeTTSStandIn) -> AsyncIterator[SpeechSynthesizer]:
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["edge"], edge_timeout_s=2))
    yield synthesizer
    await synthesizer.close()


def stream(reply: VoiceReply, text: str, chunk: int = 3) -> None:
    for start in range(0, len(text), chunk):
        reply.feed(text[start : start + chunk])


async def test_synthesis_starts_at_the_first_sentence_while_text_streams(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(reply, "Hello there. The answer is still")
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        [first] = await edge_service.wait_for_requests(1)
    assert first.text == "Hello there."

    stream(reply, " coming, **almost** done!")
    clip = await reply.finish()

    assert clip is not None
    assert [r.text for r in edge_service.requests] == [
        "Hello there.",
        "The answer is still coming, almost done!",
    ]
    assert clip.text == "Hello there. The answer is still coming, almost done!"
    assert clip.duration_s == pytest.approx(2 * TONE_SECONDS + SENTENCE_GAP_S, abs=0.05)
    decoded = decode_pcm(clip.ogg_opus, SPEECH_RATE)
    assert decoded.size / SPEECH_RATE == pytest.approx(clip.duration_s, abs=0.03)


async def test_an_interjection_is_said_next_after_what_was_fed_so_far(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    # A tool runs: the text fed so far ends its sentence, "One moment." follows, then the rest.
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(reply, "Let me look that up")
    reply.interject("One moment.")
    stream(reply, "It is sunny.")
    await reply.finish()
    assert [r.text for r in edge_service.requests] == [
        "Let me look that up",
        "One moment.",
        "It is sunny.",
    ]


async def test_code_blocks_are_not_read_aloud(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(
        reply,
        "Here is the fix:\n```python\nprint('Never say this.')\n```\nRun it and see.",
        chunk=1,
    )
    clip = await reply.finish()
    assert clip is not None
    assert [r.text for r in edge_service.requests] == ["Here is the fix:", "Run it and see."]


async def test_a_long_reply_is_spoken_up_to_max_chars_at_a_sentence_end(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=41)  # exactly the first two sentences
    stream(reply, "First sentence here. Second one fits too. Third is one too many. Fourth.")
    clip = await reply.finish()
    assert clip is not None
    assert clip.text == "First sentence here. Second one fits too."
    assert [r.text for r in edge_service.requests] == [
        "First sentence here.",
        "Second one fits too.",
    ]


async def test_a_first_sentence_over_max_chars_is_cut_at_a_word(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=20)
    stream(reply, "This single sentence is far longer than the limit allows.")
    clip = await reply.finish()
    assert clip is not None
    assert clip.text == "This single…"
    assert len(clip.text) <= 20


async def test_nothing_speakable_gives_no_clip(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(reply, "```\nprint('only code')\n```\n---\n")
    assert await reply.finish() is None
    assert edge_service.requests == []


async def test_when_no_backend_can_speak_finish_raises(edge_service: EdgeTTSStandIn) -> None:
    edge_service.mode = "no-audio"
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["edge"]))
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(reply, "One sentence. Another sentence.")
    with pytest.raises(SpeechSynthesisError):
        await reply.finish()


async def test_cancel_stops_a_synthesis_in_progress(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    edge_service.mode = "hang"
    reply = VoiceReply(synthesizer, max_chars=1000)
    stream(reply, "This will never be spoken. ")
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        await edge_service.wait_for_requests(1)
        await reply.cancel()
    await reply.cancel()  # twice is harmless
    with pytest.raises(RuntimeError):
        reply.feed("more")


async def test_live_sentences_come_as_each_is_synthesised_while_text_streams(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    sentences = reply.sentences()  # before the text, as the engine does for a voice channel
    stream(reply, "Hello there. The rest is still")
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        first = await anext(sentences)
    assert first.text == "Hello there."
    assert first.pcm.size == pytest.approx(TONE_SECONDS * SPEECH_RATE, rel=0.05)
    stream(reply, " coming.")
    reply.end()
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        rest = [sentence.text async for sentence in sentences]
    assert rest == ["The rest is still coming."]


async def test_live_sentences_end_at_once_when_nothing_is_speakable(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    sentences = reply.sentences()
    stream(reply, "```\ncode only\n```\n")
    reply.end()
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        assert [s async for s in sentences] == []
    assert edge_service.requests == []


async def test_a_listener_leaving_early_stops_the_synthesis(
    edge_service: EdgeTTSStandIn, synthesizer: SpeechSynthesizer
) -> None:
    reply = VoiceReply(synthesizer, max_chars=1000)
    sentences = reply.sentences()
    stream(reply, "One sentence. Two sentences. ")
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        await anext(sentences)
        await sentences.aclose()  # barge-in: nobody listens to the rest
    stream(reply, "Three sentences. Four. ")  # the text goes on; it is not spoken
    reply.end()
    spoken = [r.text for r in edge_service.requests]
    assert spoken[0] == "One sentence." and not {"Three sentences.", "Four."} & set(spoken)


async def test_live_sentences_raise_when_no_backend_can_speak(
    edge_service: EdgeTTSStandIn,
) -> None:
    edge_service.mode = "no-audio"
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["edge"]))
    reply = VoiceReply(synthesizer, max_chars=1000)
    sentences = reply.sentences()
    stream(reply, "One sentence. ")
    reply.end()
    async with asyncio.timeout(SAFETY_TIMEOUT_S):
        with pytest.raises(SpeechSynthesisError):
            await anext(sentences)


@pytest.mark.speech
async def test_offline_voice_reply_is_one_voice_note_of_every_sentence() -> None:
    text = "Good morning to you. " + audio_samples.KNOWN_SENTENCE
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["piper"]))
    transcriber = Transcriber(STTSettings(model="tiny.en"))
    try:
        reply = VoiceReply(synthesizer, max_chars=1000)
        stream(reply, text)
        clip = await reply.finish()
        assert clip is not None
        transcript = await transcriber.transcribe(clip.ogg_opus, "audio/ogg")
    finally:
        await synthesizer.close()
        await transcriber.close()
    assert audio_samples.word_error_rate(text, transcript) <= 0.2, transcript
    assert len(clip.waveform) == 256
