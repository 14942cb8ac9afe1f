"""Audio in and out with PyAV: decode any container to PCM, encode OGG/Opus voice notes.

PCM inside Parley is mono float32 in [-1, 1]; synthesised speech is kept at `SPEECH_RATE`.
"""

from __future__ import annotations

import io
import logging
import math

import av
import numpy as np
import numpy.typing as npt

from bot.errors import AudioTooLong, AudioUndecodable
from bot.messages import Msg, Phrase, phrase
from bot.types import VoiceClip

log = logging.getLogger(__name__)

Pcm = npt.NDArray[np.float32]

SPEECH_RATE = 48_000  # libopus takes only 8/12/16/24/48 kHz; voice notes use 48 kHz
OPUS_BITRATE = 32_000  # bits/s: clear speech at about 240 KB a minute
OPUS_APPLICATION = "voip"  # libopus tuning for speech rather than music
WAVEFORM_POINTS = 256  # Discord voice messages carry at most 256 amplitude samples
WAVEFORM_MAX = 255  # each sample is one byte
DURATION_SLACK_S = 0.5  # container durations are estimates (e.g. MP3 without a header)


def _describe_seconds(seconds: float) -> Phrase:
    if seconds < 120:
        return phrase(Msg.SECONDS, count=round(seconds))
    return phrase(Msg.MINUTES, count=round(seconds / 60))


def too_long(limit_s: float, actual_s: float | None = None) -> AudioTooLong:
    """The error for audio over `limit_s` seconds, with a sentence for the user."""
    limit = _describe_seconds(limit_s)
    if actual_s is None:
        return AudioTooLong(phrase(Msg.AUDIO_TOO_LONG_UNMEASURED, limit=limit))
    return AudioTooLong(phrase(Msg.AUDIO_TOO_LONG, length=_describe_seconds(actual_s), limit=limit))


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise AudioUndecodable(phrase(Msg.AUDIO_UNREADABLE)) from exc


def decode_pcm(
    data: bytes, rate: int, *, max_seconds: float | None = None, mime: str | None = None
) -> Pcm:
    """Decode the first audio track of any container (video notes too) to mono PCM at `rate`.

    ffmpeg recognises the format from the bytes; `mime` (what the platform said) is only logged.
    Raises AudioUndecodable (empty, corrupt, not audio) or AudioTooLong. CPU-bound: call it
    from a worker thread.
    """
    log.debug("decoding %d bytes of %s", len(data), mime or "audio")
    if not data:
        raise AudioUndecodable(phrase(Msg.AUDIO_EMPTY))
    limit_s = math.inf if max_seconds is None else max_seconds
    max_samples = (limit_s + DURATION_SLACK_S) * rate
    chunks: list[Pcm] = []
    total = 0
    with _open(data) as container:
        if not container.streams.audio:
            raise AudioUndecodable(phrase(Msg.NO_AUDIO_TRACK))
        stream = container.streams.audio[0]
        # Refuse early when the container says so; the decoded length below is the real check.
        if container.duration is not None:
            estimate = container.duration / av.time_base
            if estimate > limit_s + DURATION_SLACK_S:
                raise too_long(limit_s, estimate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray()[0])
                    total += out.samples
                if total > max_samples:
                    raise too_long(limit_s)
        except av.FFmpegError as exc:
            if total == 0:
                raise AudioUndecodable(phrase(Msg.AUDIO_UNREADABLE)) from exc
            # A damaged tail (e.g. a cut-off download): keep the part that decoded.
            log.info("audio decoding stopped after %.1f s: %s", total / rate, exc)
        chunks.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    if not chunks:
        raise AudioUndecodable(phrase(Msg.AUDIO_EMPTY))
    return np.concatenate(chunks).astype(np.float32, copy=False)


def resample(pcm: Pcm, from_rate: int, to_rate: int) -> Pcm:
    """Mono PCM at `from_rate` converted to `to_rate`."""
    if from_rate == to_rate or pcm.size == 0:
        return pcm.astype(np.float32, copy=False)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = from_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32, copy=False)


def silence(seconds: float, rate: int = SPEECH_RATE) -> Pcm:
    """`seconds` of digital silence."""
    return np.zeros(round(seconds * rate), dtype=np.float32)


def encode_ogg_opus(pcm: Pcm) -> bytes:
    """OGG/Opus bytes of mono PCM at `SPEECH_RATE` (CPU-bound: call from a worker thread)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SPEECH_RATE, layout="mono")
        stream.bit_rate = OPUS_BITRATE
        stream.codec_context.options = {"application": OPUS_APPLICATION}
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = SPEECH_RATE
        # PyAV cuts the frame into libopus' 20 ms frames itself.
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def waveform(pcm: Pcm, points: int = WAVEFORM_POINTS) -> bytes:
    """Loudness (RMS) of `points` equal slices of `pcm`, scaled so the loudest slice is 255."""
    points = min(points, pcm.size)
    if points == 0:
        return b""
    starts = np.linspace(0, pcm.size, points, endpoint=False).astype(np.int64)
    sizes = np.diff(np.append(starts, pcm.size))
    squares = np.square(pcm, dtype=np.float64)
    rms = np.sqrt(np.add.reduceat(squares, starts) / sizes)
    peak = float(rms.max())
    if peak == 0.0:
        return bytes(points)
    return np.round(rms / peak * WAVEFORM_MAX).astype(np.uint8).tobytes()


def make_clip(pcm: Pcm, text: str) -> VoiceClip:
    """A voice note of mono PCM at `SPEECH_RATE`: OGG/Opus, duration and waveform."""
    return VoiceClip(
        ogg_opus=encode_ogg_opus(pcm),
        duration_s=pcm.size / SPEECH_RATE,
        waveform=waveform(pcm),
        text=text,
    )
