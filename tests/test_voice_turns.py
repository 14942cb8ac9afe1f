"""Voice through the engine: a real voice note in, transcript, reply, voice reply out."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest

from bot.app import ParleyApp
from bot.types import Attachment
from tests.conftest import make_settings, message
from tests.fakes.audio_samples import KNOWN_SENTENCE, encode, silence, voice_note, word_error_rate
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.targets import RecordingTarget


def recording(data: bytes) -> Attachment:
    """A voice note as an adapter describes it."""
    return Attachment.of_bytes("audio", data, "audio/ogg")


@pytest.fixture
async def voice_app(fake_llm: FakeLLMServer, tmp_path: Path) -> AsyncIterator[ParleyApp]:
    fake_llm.behaviour = Behaviour(reply=lambda b: f"You said: {last_user_text(b)}")
    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url},
        stt={"model": "tiny.en", "max_seconds": 30, "max_bytes": 2_000_000},
        tts={"backends": ["piper"]},
    )
    async with ParleyApp(settings) as parley:
        yield parley


def _decodes_to_seconds(ogg: bytes, path: Path) -> float:
    path.write_bytes(ogg)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.rate == 48_000
        samples = sum(frame.samples for frame in container.decode(stream))
    return samples / 48_000


async def test_voice_note_is_transcribed_answered_and_spoken(
    voice_app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    target = RecordingTarget()
    await voice_app.engine.handle(
        message(attachments=(recording(voice_note()),), is_private=True), target
    )
    transcript = target.notices[0].removeprefix("🎤 “").removesuffix("”")
    assert word_error_rate(KNOWN_SENTENCE, transcript) <= 0.2
    assert target.text == f"You said: {transcript}"
    # voice_mode defaults to reply-to-voice: a voice note gets a voice reply.
    assert len(target.voices) == 1
    clip = target.voices[0]
    assert clip.text and len(clip.waveform) == 256
    assert abs(_decodes_to_seconds(clip.ogg_opus, tmp_path / "r.ogg") - clip.duration_s) < 0.1
    # A text message in the same chat gets text only.
    text_only = RecordingTarget()
    await voice_app.engine.handle(message("and now in text"), text_only)
    assert text_only.voices == []


@pytest.mark.parametrize(
    ("audio", "expected"),
    [
        (b"", "empty"),
        (b"OggS" + b"\x00" * 200, "couldn't"),
        (b"just some text, not audio", "couldn't"),
        (b"x" * 2_000_001, "too large"),
        ("overlong", "too long"),
        ("silence", "couldn't hear anything"),
    ],
)
async def test_bad_audio_gets_a_clear_message_and_the_turn_is_recorded(
    voice_app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path, audio: object, expected: str
) -> None:
    if audio == "overlong":
        audio = encode(silence(31.0), 48_000, "ogg")
    elif audio == "silence":
        audio = encode(silence(2.0), 48_000, "ogg")
    target = RecordingTarget()
    assert isinstance(audio, bytes)
    await voice_app.engine.handle(message(attachments=(recording(audio),)), target)
    assert len(target.notices) == 1 and expected in target.notices[0].lower()
    assert target.calls == [] and fake_llm.requests == []
    rows = (
        sqlite3.connect(tmp_path / "parley.db")
        .execute("SELECT role, content, status FROM messages")
        .fetchall()
    )
    assert rows == [("user", f"[voice note: {target.notices[0]}]", "failed")]


async def test_a_text_message_asking_for_voice_gets_a_voice_reply(voice_app: ParleyApp) -> None:
    target = RecordingTarget()
    await voice_app.engine.handle(message("read this to me", wants_voice=True), target)
    assert target.text == "You said: read this to me"
    assert len(target.voices) == 1 and target.voices[0].duration_s > 0.5
