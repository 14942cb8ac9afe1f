"""libopus for the voice pipeline, found where Parley's dependencies already ship it.

Debian's libopus0 is not installed on a fresh machine, but PyAV's wheel bundles a libopus
(`av.libs/libopus-*.so*`), which `discord.opus.load_opus` accepts. Discord's audio is Opus at
48 kHz in 20 ms frames (https://discord.com/developers/docs/topics/voice-connections#encrypting-and-sending-voice).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
from pathlib import Path

import discord.opus
import numpy as np
import numpy.typing as npt

from bot.errors import ParleyError

log = logging.getLogger(__name__)

OPUS_RATE = 48_000  # Hz: Discord's Opus clock and sample rate
FRAME_MS = 20  # Discord sends and expects 20 ms frames
FRAME_SAMPLES = OPUS_RATE * FRAME_MS // 1000  # 960 samples per channel per frame
# What a Discord client sends for silence (and discord.py's OPUS_SILENCE); DAVE leaves it clear.
OPUS_SILENCE = b"\xf8\xff\xfe"
MAX_PACKET_SAMPLES = OPUS_RATE * 120 // 1000  # an Opus packet holds at most 120 ms (RFC 6716)
OPUS_OK = 0

_lock = threading.Lock()


class OpusUnavailable(ParleyError):
    """No libopus could be loaded: voice channels cannot work."""


def bundled_libopus() -> Path | None:
    """The libopus inside PyAV's wheel, if there is one."""
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    candidates = sorted(libs.glob("libopus*.so*")) if libs.is_dir() else []
    return candidates[0] if candidates else None


def _candidates() -> list[str]:
    found: list[str] = []
    bundled = bundled_libopus()
    if bundled is not None:
        found.append(str(bundled))
    system = ctypes.util.find_library("opus")
    if system:
        found.append(system)
    return found


def _unavailable() -> OpusUnavailable:
    return OpusUnavailable(
        "libopus was not found: install PyAV's wheel (it bundles one) or Debian's libopus0"
    )


def ensure_opus() -> None:
    """Load libopus into discord.py (its encoder speaks) once: PyAV's copy first."""
    with _lock:
        if discord.opus.is_loaded():
            return
        for candidate in _candidates():
            try:
                discord.opus.load_opus(candidate)
            except OSError as exc:
                log.debug("libopus at %s did not load: %s", candidate, exc)
                continue
            log.info("libopus loaded from %s", candidate)
            return
        raise _unavailable()


@functools.cache
def _decoder_library() -> ctypes.CDLL:
    """libopus' decoder functions (discord.py's Decoder copies every sample through a list)."""
    for candidate in _candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.opus_decoder_create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_float),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decode_float.restype = ctypes.c_int
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_destroy.restype = None
        return lib
    raise _unavailable()


class OpusDecodeError(ParleyError):
    """libopus refused a packet (corrupt, or not Opus)."""


class MonoDecoder:
    """An Opus decoder to mono float PCM at 48 kHz, straight into a NumPy buffer."""

    def __init__(self) -> None:
        self._lib = _decoder_library()
        error = ctypes.c_int()
        self._state = self._lib.opus_decoder_create(OPUS_RATE, 1, ctypes.byref(error))
        if error.value != OPUS_OK or not self._state:
            raise OpusDecodeError(f"opus_decoder_create failed ({error.value})")
        self._buffer = np.zeros(MAX_PACKET_SAMPLES, dtype=np.float32)
        self._pointer = self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def decode(self, packet: bytes | None) -> npt.NDArray[np.float32]:
        """The samples of `packet`; None conceals one lost 20 ms frame."""
        if packet is None:
            count = self._lib.opus_decode_float(
                self._state, None, 0, self._pointer, FRAME_SAMPLES, 0
            )
        else:
            count = self._lib.opus_decode_float(
                self._state, packet, len(packet), self._pointer, MAX_PACKET_SAMPLES, 0
            )
        if count < 0:
            raise OpusDecodeError(f"opus_decode_float failed ({count})")
        return self._buffer[:count].copy()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state:
            self._lib.opus_decoder_destroy(state)
            self._state = None
