"""Voice notes out: OGG/Opus 48 kHz mono, their duration and a 256-point waveform."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from bot.errors import AudioTooLong, AudioUndecodable
from bot.speech.audio import SPEECH_RATE, decode_pcm, make_clip, resample, waveform
from tests.fakes import audio_samples


def test_a_clip_is_an_ogg_opus_voice_note_at_48_khz_mono() -> None:
    pcm = audio_samples.tone(2.5)
    clip = make_clip(pcm, "a tone")
    with av.open(io.BytesIO(clip.ogg_opus)) as container:
        stream = container.streams.audio[0]
        assert container.format.name == "ogg"
        assert stream.codec_context.name == "opus"
        assert stream.rate == SPEECH_RATE
        assert stream.channels == 1
    assert clip.duration_s == pytest.approx(2.5)
    assert clip.text == "a tone"
    decoded = decode_pcm(clip.ogg_opus, SPEECH_RATE)
    assert decoded.size / SPEECH_RATE == pytest.approx(2.5, abs=0.03)


def test_waveform_has_256_points_following_the_loudness() -> None:
    quiet_then_loud = np.concatenate([0.1 * audio_samples.tone(1.0), audio_samples.tone(1.0)])
    points = make_clip(quiet_then_loud, "").waveform
    assert len(points) == 256
    assert max(points) == 255
    assert all(20 <= p <= 30 for p in points[:120])  # a tenth of the loudest part
    assert all(p >= 250 for p in points[136:])


def test_waveform_of_silence_and_of_very_short_audio() -> None:
    assert waveform(audio_samples.silence(1.0)) == bytes(256)
    assert len(waveform(np.ones(10, dtype=np.float32))) == 10
    assert waveform(np.zeros(0, dtype=np.float32)) == b""


def test_resampling_keeps_the_duration() -> None:
    pcm, rate = audio_samples.spoken()
    resampled = resample(pcm, rate, SPEECH_RATE)
    assert resampled.size / SPEECH_RATE == pytest.approx(pcm.size / rate, abs=0.01)


@pytest.mark.parametrize("fmt", ["ogg", "mp3", "m4a", "wav", "video-note"])
def test_every_upload_format_decodes_to_16_khz_mono(fmt: audio_samples.Format) -> None:
    pcm, rate = audio_samples.spoken()
    decoded = decode_pcm(audio_samples.encode(pcm, rate, fmt), 16_000)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded.size / 16_000 == pytest.approx(pcm.size / rate, abs=0.1)


def test_duration_limit_stops_decoding() -> None:
    wav = audio_samples.encode(audio_samples.tone(4.0, 16_000), 16_000, "wav")
    assert decode_pcm(wav, 16_000, max_seconds=4.0).size == 4 * 16_000
    with pytest.raises(AudioTooLong) as error:
        decode_pcm(wav, 16_000, max_seconds=2.0)
    assert "too long" in error.value.user_message


def test_a_container_understating_its_length_is_stopped_while_decoding() -> None:
    # Two OGG streams back to back (a "chained" OGG): ffmpeg reports only the last one's length.
    chained = b"".join(
        audio_samples.encode(audio_samples.tone(seconds), 48_000, "ogg") for seconds in (1.0, 4.0)
    )
    assert decode_pcm(chained, 16_000).size / 16_000 == pytest.approx(5.0, abs=0.05)
    with pytest.raises(AudioTooLong) as error:
        decode_pcm(chained, 16_000, max_seconds=4.2)
    assert error.value.user_message == "That recording is too long: I transcribe up to 4 seconds."


def test_a_damaged_tail_keeps_the_audio_before_it() -> None:
    note = audio_samples.voice_note()
    decoded = decode_pcm(note[: len(note) // 2], 16_000)
    assert decoded.size > 16_000 // 2


def test_an_image_is_not_audio() -> None:
    with pytest.raises(AudioUndecodable) as error:
        decode_pcm(audio_samples.png_image(), 16_000)
    assert "no sound" in error.value.user_message
