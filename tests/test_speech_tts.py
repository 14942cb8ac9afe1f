"""Speech synthesis: edge-tts against a loopback stand-in, piper offline, espeak, fall-through,
and the default order (the offline voice first; the online one only when configured)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import edge_tts.communicate
import numpy as np
import pytest
import pytest_asyncio

from bot.app import ParleyApp
from bot.config import Settings, TTSSettings
from bot.doctor import check_tts
from bot.errors import SpeechSynthesisError
from bot.speech.audio import SPEECH_RATE, Pcm, decode_pcm
from bot.speech.tts import BACKEND_RETRY_S, SpeechSynthesizer
from tests.conftest import make_settings, message
from tests.fakes.clock import ManualClock
from tests.fakes.edge_tts_service import TONE_HZ, TONE_SECONDS, EdgeTTSStandIn, Mode
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.targets import RecordingTarget

ESPEAK_TONE_HZ = 660.0

# A stand-in for Debian's espeak-ng: logs its arguments and stdin, answers a WAV tone on stdout.
FAKE_ESPEAK = f"""#!{sys.executable}
import io, json, math, struct, sys, wave
from pathlib import Path
text = sys.stdin.read()
log = Path(__file__).with_name("espeak-calls.jsonl")
with log.open("a") as out:
    out.write(json.dumps({{"args": sys.argv[1:], "text": text}}) + "\\n")
if "FAIL" in text:
    sys.stderr.write("espeak-ng: cannot speak\\n")
    sys.exit(1)
rate = 22050
step = 2 * math.pi * {ESPEAK_TONE_HZ} / rate
samples = [int(12000 * math.sin(step * i)) for i in range(rate // 2)]
buffer = io.BytesIO()
with wave.open(buffer, "wb") as wav:
    wav.setnchannels(1); wav.setsampwidth(2); wav.setframerate(rate)
    wav.writeframes(struct.pack(f"<{{len(samples)}}h", *samples))
sys.stdout.buffer.write(buffer.getvalue())
"""


def tone_share(pcm: Pcm, frequency: float) -> float:
    """Fraction of the signal's energy within 15 Hz of `frequency`."""
    spectrum = np.abs(np.fft.rfft(pcm)) ** 2
    frequencies = np.fft.rfftfreq(pcm.size, 1 / SPEECH_RATE)
    return float(spectrum[np.abs(frequencies - frequency) < 15].sum() / spectrum.sum())


@pytest.fixture(autouse=True)
def loopback_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # edge-tts' aiohttp session trusts HTTP(S)_PROXY variables.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest_asyncio.fixture
async def edge_service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EdgeTTSStandIn]:
    async with EdgeTTSStandIn() as service:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", service.wss_url)
        yield service


@pytest.fixture
def fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "espeak-ng"
    script.write_text(FAKE_ESPEAK)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder / "espeak-calls.jsonl"


def espeak_calls(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_edge_voice_speaks_through_the_real_client(edge_service: EdgeTTSStandIn) -> None:
    synthesizer = SpeechSynthesizer(
        TTSSettings(backends=["edge"], edge_voice="en-GB-SoniaNeural", edge_rate="+10%")
    )
    clip = await synthesizer.synthesize("Fish & chips <today>.")
    await synthesizer.close()

    [request] = edge_service.requests
    assert request.text == "Fish & chips <today>."
    assert "en-GB, SoniaNeural" in request.voice
    assert request.rate == "+10%"
    assert request.output_format == "audio-24khz-48kbitrate-mono-mp3"
    assert clip.duration_s == pytest.approx(TONE_SECONDS, abs=0.03)
    assert tone_share(decode_pcm(clip.ogg_opus, SPEECH_RATE), TONE_HZ) > 0.9
    assert len(clip.waveform) == 256


@pytest.mark.speech
async def test_when_edge_fails_the_offline_voice_answers(edge_service: EdgeTTSStandIn) -> None:
    clock = ManualClock()
    synthesizer = SpeechSynthesizer(
        TTSSettings(backends=["edge", "piper"], edge_timeout_s=0.5), clock=clock
    )
    modes: list[Mode] = ["no-audio", "hang", "reject"]
    try:
        for attempt, mode in enumerate(modes, 1):
            edge_service.mode = mode
            clock.advance(BACKEND_RETRY_S + 1)  # edge is first in line again
            clip = await synthesizer.synthesize("The offline voice answers.")
            assert edge_service.connections == attempt
            # piper speaks the sentence: longer than the stand-in's tone, and not a tone.
            assert clip.duration_s > 1.0, mode
            assert tone_share(decode_pcm(clip.ogg_opus, SPEECH_RATE), TONE_HZ) < 0.2, mode
    finally:
        await synthesizer.close()


async def test_an_unreachable_backend_waits_at_the_back_of_the_line(
    edge_service: EdgeTTSStandIn, fake_espeak: Path
) -> None:
    clock = ManualClock()
    synthesizer = SpeechSynthesizer(
        TTSSettings(backends=["edge", "espeak"], edge_timeout_s=0.5), clock=clock
    )
    edge_service.mode = "reject"
    await synthesizer.synthesize("One.")
    await synthesizer.synthesize("Two.")
    assert edge_service.connections == 1  # "Two." went straight to espeak
    assert [call["text"] for call in espeak_calls(fake_espeak)] == ["One.", "Two."]

    edge_service.mode = "speak"
    clock.advance(BACKEND_RETRY_S + 1)
    clip = await synthesizer.synthesize("Three.")
    assert edge_service.connections == 2
    assert [request.text for request in edge_service.requests] == ["Three."]
    assert tone_share(decode_pcm(clip.ogg_opus, SPEECH_RATE), TONE_HZ) > 0.9


async def test_espeak_gets_the_voice_and_the_text_on_stdin(fake_espeak: Path) -> None:
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["espeak"], espeak_voice="de"))
    clip = await synthesizer.synthesize("--help is not an option here.")
    [call] = espeak_calls(fake_espeak)
    assert call["args"] == ["-v", "de", "--stdout"]
    assert call["text"] == "--help is not an option here."
    assert clip.duration_s == pytest.approx(0.5, abs=0.01)
    assert tone_share(decode_pcm(clip.ogg_opus, SPEECH_RATE), ESPEAK_TONE_HZ) > 0.9


async def test_a_failing_espeak_falls_through_to_the_next_backend(
    edge_service: EdgeTTSStandIn, fake_espeak: Path
) -> None:
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["espeak", "edge"]))
    clip = await synthesizer.synthesize("FAIL on purpose.")
    assert len(espeak_calls(fake_espeak)) == 1
    assert [request.text for request in edge_service.requests] == ["FAIL on purpose."]
    assert clip.duration_s == pytest.approx(TONE_SECONDS, abs=0.03)


async def test_when_every_backend_fails_the_error_says_why(
    edge_service: EdgeTTSStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng here
    edge_service.mode = "no-audio"
    synthesizer = SpeechSynthesizer(
        TTSSettings(backends=["edge", "piper", "espeak"], piper_model=str(tmp_path / "none.onnx"))
    )
    with pytest.raises(SpeechSynthesisError) as error:
        await synthesizer.synthesize("Nobody can say this.")
    await synthesizer.close()
    message = str(error.value)
    assert "edge-tts returned no audio" in message
    assert "piper cannot load" in message
    assert "espeak-ng is not installed" in message


async def test_empty_text_is_a_programming_error() -> None:
    synthesizer = SpeechSynthesizer(TTSSettings(backends=["espeak"]))
    with pytest.raises(ValueError, match="nothing to speak"):
        await synthesizer.synthesize("   ")


@pytest.mark.speech
async def test_by_default_the_offline_voice_replies_without_a_warning(
    edge_service: EdgeTTSStandIn,
    fake_llm: FakeLLMServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No [tts] configured and no network: piper speaks, the online voice is never asked."""
    edge_service.mode = "reject"  # the online voice's service, unreachable as when offline
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, engine={"voice_mode": "always"}
    )
    assert "tts" not in settings.model_fields_set
    caplog.set_level(logging.DEBUG)
    async with ParleyApp(settings) as parley:
        target = RecordingTarget()
        await parley.engine.handle(message("Say something."), target)
    [clip] = target.voices
    assert clip.duration_s > 1.0  # piper speaking the fake model's sentence, not a tone
    # Not the stand-in's tone (over 0.9 of the energy at TONE_HZ): speech spreads its energy, though
    # a male voice's harmonics put a fifth to a third of it near 440 Hz.
    assert tone_share(decode_pcm(clip.ogg_opus, SPEECH_RATE), TONE_HZ) < 0.5
    assert edge_service.connections == 0
    assert re.search(r"speech: piper \(.*\) spoke", caplog.text), caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_doctor_checks_the_online_voice_only_when_it_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No network: nothing answers where the online voice would be.
    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", "wss://127.0.0.1:9/synthesize")
    default = await check_tts(Settings())
    assert [finding.check for finding in default] == ["tts piper", "tts espeak"]
    assert default[0].status == "ok"
    configured = await check_tts(Settings(tts=TTSSettings(backends=["piper", "edge"])))
    assert [(finding.check, finding.status) for finding in configured] == [
        ("tts piper", "ok"),
        ("tts edge", "warn"),
    ]
