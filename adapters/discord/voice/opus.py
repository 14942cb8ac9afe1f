"""libopus for the voice pipeline, found where Parley's dependencies already ship it.

Debian's libopus0 is not installed on a fresh machine, but PyAV's wheel bundles a libopus
(`av.libs/libopus-*.so*`), which `discord.opus.load_opus` accepts. Discord's audio is Opus at
48 kHz in 20 ms frames (https://discord.com/developers/docs/topics/voice-connections#encrypting-and-sending-voice).
"""

from __future__ import annotations

import ctypes.util
import logging
import threading
from pathlib import Path

import discord.opus

from bot.errors import ParleyError

log = logging.getLogger(__name__)

OPUS_RATE = 48_000  # Hz: Discord's Opus clock and sample rate
FRAME_MS = 20  # Discord sends and expects 20 ms frames
FRAME_SAMPLES = OPUS_RATE * FRAME_MS // 1000  # 960 samples per channel per frame
# What a Discord client sends for silence (and discord.py's OPUS_SILENCE); DAVE leaves it clear.
OPUS_SILENCE = b"\xf8\xff\xfe"

_lock = threading.Lock()


class OpusUnavailable(ParleyError):
    """No libopus could be loaded: voice channels cannot work."""


def bundled_libopus() -> Path | None:
    """The libopus inside PyAV's wheel, if there is one."""
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    candidates = sorted(libs.glob("libopus*.so*")) if libs.is_dir() else []
    return candidates[0] if candidates else None


def ensure_opus() -> None:
    """Load libopus into discord.py once: PyAV's copy first, else the system's."""
    with _lock:
        if discord.opus.is_loaded():
            return
        candidates: list[str] = []
        bundled = bundled_libopus()
        if bundled is not None:
            candidates.append(str(bundled))
        system = ctypes.util.find_library("opus")
        if system:
            candidates.append(system)
        for candidate in candidates:
            try:
                discord.opus.load_opus(candidate)
            except OSError as exc:
                log.debug("libopus at %s did not load: %s", candidate, exc)
                continue
            log.info("libopus loaded from %s", candidate)
            return
        raise OpusUnavailable(
            "libopus was not found: install PyAV's wheel (it bundles one) or Debian's libopus0"
        )


class MonoDecoder(discord.opus.Decoder):
    """discord.py's Opus decoder, downmixing to one channel (speech needs no stereo)."""

    CHANNELS = 1
    SAMPLE_SIZE = 2  # int16, one channel
    FRAME_SIZE = FRAME_SAMPLES * SAMPLE_SIZE
