"""Text to speech: the configured backends tried in order, each in its voice for the reply's
language (`tts.voices`), output as an OGG/Opus voice note."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bot import metrics
from bot.config import TTSSettings
from bot.errors import SpeechSynthesisError
from bot.languages import ENGLISH
from bot.speech.audio import Pcm, make_clip
from bot.speech.backends import (
    BackendError,
    BackendUnavailable,
    PiperBackend,
    SpeechBackend,
    make_backend,
)
from bot.speech.text import speakable_text
from bot.types import VoiceClip

__all__ = ["BACKEND_RETRY_S", "SpeechSynthesizer", "speakable_text"]

log = logging.getLogger(__name__)

# A backend that was unreachable goes to the back of the line for this long, so an offline
# machine does not wait for the online voice at every sentence.
BACKEND_RETRY_S = 60.0


class SpeechSynthesizer:
    """Tries settings.backends in order (edge, piper, espeak); returns OGG/Opus 48 kHz mono.

    `clock` (monotonic seconds) is for tests.
    """

    def __init__(
        self, settings: TTSSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._backends: list[SpeechBackend] = [
            make_backend(name, settings) for name in dict.fromkeys(settings.backends)
        ]
        self._clock = clock
        self._unavailable_until: dict[str, float] = {}

    async def warm_up(self) -> None:
        """Load the offline voice now (a second or two) instead of at the first reply."""
        for backend in self._backends:
            voice = self._settings.voice(backend.name, ENGLISH)
            if isinstance(backend, PiperBackend) and voice is not None:
                try:
                    await backend.warm_up(voice)
                except BackendUnavailable as exc:
                    log.warning("speech: %s", exc)

    async def synthesize(self, text: str, lang: str = ENGLISH) -> VoiceClip:
        """Speak plain `text` (pass Markdown through `speakable_text` first) in a voice of
        `lang` as a voice note.

        Raises SpeechSynthesisError when every backend fails.
        """
        pcm = await self.synthesize_pcm(text, lang)
        return await asyncio.to_thread(make_clip, pcm, text)

    async def synthesize_pcm(self, text: str, lang: str = ENGLISH) -> Pcm:
        """Speak plain `text` in a voice of `lang` as mono PCM at 48 kHz; raises
        SpeechSynthesisError. A backend without a voice for `lang` is passed over."""
        if not text.strip():
            raise ValueError("nothing to speak")
        failures: list[str] = []
        started = time.perf_counter()
        for backend in self._in_order():
            voice = self._settings.voice(backend.name, lang)
            if voice is None:
                failures.append(f"{backend.name} has no voice for {lang!r} (tts.voices)")
                continue
            try:
                pcm = await backend.synthesize(text, voice)
            except BackendUnavailable as exc:
                self._unavailable_until[backend.name] = self._clock() + BACKEND_RETRY_S
                failures.append(str(exc))
                log.warning("speech: %s; trying the next voice", exc)
            except BackendError as exc:
                failures.append(str(exc))
                log.warning("speech: %s; trying the next voice", exc)
            else:
                shown = voice or "bundled voice"
                log.debug("speech: %s (%s) spoke %d chars", backend.name, shown, len(text))
                metrics.TTS_SECONDS.observe(time.perf_counter() - started)
                return pcm
        raise SpeechSynthesisError("no speech backend worked: " + "; ".join(failures))

    async def close(self) -> None:
        """Release the backends (the offline voice's thread)."""
        for backend in self._backends:
            await backend.close()

    def _in_order(self) -> list[SpeechBackend]:
        """Configured order, but backends that were recently unreachable come last."""
        now = self._clock()
        return sorted(
            self._backends, key=lambda backend: self._unavailable_until.get(backend.name, now) > now
        )
