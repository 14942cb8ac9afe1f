"""Speech to text: faster-whisper (int8, CPU) in a bounded worker pool, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from bot.config import STTSettings
from bot.errors import AudioTooLarge, NoSpeech
from bot.messages import Msg, phrase
from bot.speech.audio import Pcm, decode_pcm, resample, too_long
from bot.speech.models import resolve_model_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_T = TypeVar("_T")

WHISPER_RATE = 16_000  # Whisper's input sample rate
COMPUTE_TYPE = "int8"  # CTranslate2 int8 on CPU: ~4x less memory than float32, faster
BEAM_SIZE = 1  # greedy: ~30% faster than beam 5 on CPU, the same words on clear speech
LANGUAGE_CONFIDENCE = 0.7  # a detected language below this probability is not trusted
FALLBACK_LANGUAGE = "en"  # spoken when detection is not confident
DETECT = ("auto", "")  # language values that ask for detection, like None
MIN_SPEECH_MS = 250  # voice activity shorter than this is a click or a breath, not speech
# Whisper drops a window whose no-speech probability is above NO_SPEECH_PROB when its text is
# also unlikely (average log-probability below LOW_LOGPROB): what is left of silence after VAD.
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
# Short speech (a voice channel's utterance, a quick voice note) is decoded over a 10 s encoder
# window instead of Whisper's padded 30 s: the encoder's cost is about proportional to its
# window, and it is most of the time (measured on 2 cores: tiny.en 0.5 s -> 0.13 s, base
# 1.1 s -> 0.26 s for a 2 s question, the same words). 5 s windows made the decoder repeat itself.
SHORT_WINDOW_S = 10
SHORT_MAX_S = SHORT_WINDOW_S - 1.0  # speech up to here takes the short window
SHORT_TOKENS_PER_S = 8  # cap on the tokens of the short window (speech is ~3 tokens/s)
MAX_DECODER_STEPS = 448  # Whisper's text context
SHORT_MIN_TOKENS = 24
# Text this compressible (zlib) is the decoder looping on itself: decode the 30 s way instead
# (faster-whisper's default threshold).
LOOPING_COMPRESSION = 2.4
FRAMES_PER_S = 100  # Whisper's log-mel frames: a 10 ms hop
TIMESTAMP_S = 0.02  # one timestamp token step

# Loaded models, shared by every Transcriber of the process with the same model and threads
# (a Discord voice channel and voice notes, or the tests' many short-lived apps): a Whisper model
# is read-only once loaded and CTranslate2 runs concurrent calls on it safely.
_models: dict[tuple[str, int, int], WhisperModel] = {}
_models_lock = threading.Lock()
_warned: set[str] = set()  # languages an English-only model was asked for (warned once each)


def _import_whisper() -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, when faster-whisper first imports it.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import faster_whisper  # noqa: F401


def language_codes() -> frozenset[str]:
    """The language codes Whisper knows, for validating a channel's `stt_language`."""
    _import_whisper()
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def _describe_bytes(size: int) -> str:
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1_000_000:.1f}".removesuffix(".0") + " MB"


def cpu_threads_per_worker(workers: int) -> int:
    """Share the machine's cores between the pool's workers instead of oversubscribing them."""
    return max(1, (os.cpu_count() or 1) // workers)


class Transcriber:
    """faster-whisper in a bounded worker pool; the model loads on first use or in warm_up."""

    def __init__(self, settings: STTSettings) -> None:
        self._settings = settings
        self._pool = ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="parley-stt"
        )
        # Waiting happens here, where it can be cancelled, not in the executor's queue.
        self._slots = asyncio.Semaphore(settings.workers)
        self._load_lock = asyncio.Lock()
        self._model: WhisperModel | None = None
        self._closed = False

    async def warm_up(self) -> None:
        """Load the model now (in a thread), e.g. at start-up; raises ConfigError."""
        await self._ensure_model()

    async def transcribe(
        self, audio: bytes, mime: str | None = None, *, language: str | None = "en"
    ) -> str:
        """Return the transcript of a voice note or audio/video file.

        Raises AudioTooLarge / AudioTooLong / AudioUndecodable / NoSpeech, whose `user_message`
        is a sentence for the user. `language` "auto" or None asks for detection, trusted only
        when confident (else English).
        """
        if len(audio) > self._settings.max_bytes:
            raise AudioTooLarge(
                phrase(
                    Msg.AUDIO_TOO_BIG,
                    size=_describe_bytes(len(audio)),
                    limit=_describe_bytes(self._settings.max_bytes),
                )
            )
        speech = await self._run(
            partial(_speech_only, audio, mime, max_seconds=self._settings.max_seconds)
        )
        model = await self._ensure_model()
        started = time.perf_counter()
        text = await self._run(partial(_transcribe, model, speech, language))
        log.debug(
            "transcribed %.1f s of speech in %.2f s",
            speech.size / WHISPER_RATE,
            time.perf_counter() - started,
        )
        return text

    async def transcribe_pcm(
        self, pcm: Pcm, rate: int, *, language: str | None = "en", speech_only: bool = False
    ) -> str:
        """The transcript of mono float PCM at `rate` Hz (e.g. a voice channel's utterance).

        `speech_only`: the audio was already cut to speech (by a live VAD), so Whisper's own
        VAD pass is skipped. Raises AudioTooLong / NoSpeech, as `transcribe` does.
        """
        max_seconds = self._settings.max_seconds
        if pcm.size / rate > max_seconds:
            raise too_long(max_seconds, pcm.size / rate)
        speech = await self._run(partial(_pcm_speech, pcm, rate, speech_only=speech_only))
        model = await self._ensure_model()
        return await self._run(partial(_transcribe, model, speech, language))

    async def close(self) -> None:
        """Stop the worker pool; transcriptions still running finish first."""
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        self._model = None

    async def _run(self, work: Callable[[], _T]) -> _T:
        if self._closed:
            raise RuntimeError("Transcriber is closed")
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def _ensure_model(self) -> WhisperModel:
        async with self._load_lock:
            if self._model is None:
                self._model = await self._run(self._load)
            return self._model

    def _load(self) -> WhisperModel:
        folder = resolve_model_dir(self._settings.model, self._settings.cache_dir)
        workers = self._settings.workers
        threads = cpu_threads_per_worker(workers)
        key = (str(folder), threads, workers)
        with _models_lock:
            if key in _models:
                return _models[key]
            _import_whisper()
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            model = WhisperModel(
                str(folder),
                device="cpu",
                compute_type=COMPUTE_TYPE,
                cpu_threads=threads,
                num_workers=workers,
                local_files_only=True,
            )
            log.info("Whisper model %s loaded in %.1f s", folder, time.perf_counter() - started)
            _models[key] = model
            return model


def _speech_only(audio: bytes, mime: str | None, *, max_seconds: float) -> Pcm:
    """Decoded audio with everything but speech cut out; NoSpeech when nothing is left."""
    return _cut_to_speech(decode_pcm(audio, WHISPER_RATE, max_seconds=max_seconds, mime=mime))


def _cut_to_speech(pcm: Pcm) -> Pcm:
    """16 kHz `pcm` with everything but speech cut out (Silero VAD); NoSpeech if none is left."""
    _import_whisper()
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    chunks = get_speech_timestamps(pcm, VadOptions(min_speech_duration_ms=MIN_SPEECH_MS))
    if not chunks:
        raise NoSpeech(phrase(Msg.NO_SPEECH))
    pieces, _ = collect_chunks(pcm, chunks)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def _pcm_speech(pcm: Pcm, rate: int, *, speech_only: bool) -> Pcm:
    """`pcm` at Whisper's rate, with everything but speech cut out unless it already is."""
    audio = resample(pcm, rate, WHISPER_RATE)
    if not speech_only:
        return _cut_to_speech(audio)
    if audio.size == 0:
        raise NoSpeech(phrase(Msg.NO_SPEECH))
    return audio


def _pick_language(model: WhisperModel, speech: Pcm, language: str | None) -> str:
    supported = model.supported_languages
    code = (language or "").strip().lower()
    if len(supported) == 1:  # an English-only model (tiny.en)
        if code not in (*DETECT, supported[0]) and code not in _warned:
            _warned.add(code)
            log.warning(
                "voice in %r, but stt.model is English only: transcribing it as English "
                '(stt.model = "base" understands %r)',
                code,
                code,
            )
        return supported[0]
    if code in supported:
        return code
    if code not in DETECT:
        log.warning("unknown language code %r: detecting the language instead", language)
    detected, probability, _ = model.detect_language(audio=speech)
    if probability < LANGUAGE_CONFIDENCE:
        log.debug("language %r is only %.2f likely: not trusted", detected, probability)
        return FALLBACK_LANGUAGE
    return detected


def _transcribe(model: WhisperModel, speech: Pcm, language: str | None) -> str:
    code = _pick_language(model, speech, language)
    if speech.size <= SHORT_MAX_S * WHISPER_RATE:
        text = _transcribe_short(model, speech, code)
        if text is not None:
            return text
    segments, _ = model.transcribe(
        speech,
        language=code,
        beam_size=BEAM_SIZE,
        vad_filter=False,  # done already, in _speech_only
        no_speech_threshold=NO_SPEECH_PROB,
        log_prob_threshold=LOW_LOGPROB,
        # Each window on its own: a misheard window cannot start a loop of repeated text.
        condition_on_previous_text=False,
    )
    # The generator decodes lazily: consuming it here keeps the work in this worker thread.
    text = " ".join(piece for segment in segments if (piece := segment.text.strip()))
    if not text:
        raise NoSpeech(phrase(Msg.NO_SPEECH))
    return text


def _transcribe_short(model: WhisperModel, speech: Pcm, language: str) -> str | None:
    """Greedy decoding of short speech over a `SHORT_WINDOW_S` encoder window.

    The same filters as `model.transcribe` uses here (blank and non-speech tokens suppressed,
    the no-speech rule). Timestamps are decoded too: text the decoder places after the end of
    the audio (it sometimes starts the sentence again there) is dropped. None when the decoder
    loops, so the caller decodes the usual way. Raises NoSpeech.
    """
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    samples = SHORT_WINDOW_S * WHISPER_RATE
    window = np.zeros(samples, dtype=np.float32)
    window[: speech.size] = speech[:samples]
    # Silence-padded audio, not padded features: the encoder must see what silence looks like.
    features = model.feature_extractor(window, padding=0)[:, : SHORT_WINDOW_S * FRAMES_PER_S]
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    prompt = list(tokenizer.sot_sequence)
    budget = max(SHORT_MIN_TOKENS, int(SHORT_TOKENS_PER_S * speech.size / WHISPER_RATE))
    (result,) = model.model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
        [prompt],
        beam_size=BEAM_SIZE,
        # CTranslate2 counts decoding steps here, about two per token of the output.
        max_length=min(MAX_DECODER_STEPS, len(prompt) + 2 * budget),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
    )
    # The sequence score is its log-probability divided by its length (length penalty 1).
    count = len(result.sequences_ids[0])
    average = result.scores[0] * count / (count + 1)
    if result.no_speech_prob > NO_SPEECH_PROB and average < LOW_LOGPROB:
        raise NoSpeech(phrase(Msg.NO_SPEECH))
    ids = result.sequences_ids[0]
    if not ids or ids[-1] < tokenizer.timestamp_begin:
        # A finished transcript ends with its last segment's closing timestamp: this one was
        # cut off at the step limit (the decoder repeating itself, or very dense speech).
        log.debug("short-window decoding did not end: decoding the 30 s way")
        return None
    text = tokenizer.decode(_heard_tokens(ids, tokenizer, speech.size))
    text = text.strip()
    if _compression(text) > LOOPING_COMPRESSION:
        log.debug("short-window decoding looped (%r): decoding the 30 s way", text[:80])
        return None
    if not text:
        raise NoSpeech(phrase(Msg.NO_SPEECH))
    return text


def _heard_tokens(ids: list[int], tokenizer: Tokenizer, samples: int) -> list[int]:
    """The text tokens of segments that start before the audio ends (timestamps dropped)."""
    end = samples / WHISPER_RATE
    kept: list[int] = []
    start = 0.0
    segment: list[int] = []
    for token in ids:
        if token >= tokenizer.timestamp_begin:
            at = (token - tokenizer.timestamp_begin) * TIMESTAMP_S
            if segment:  # a segment's closing timestamp
                if start < end:
                    kept += segment
                segment = []
            start = at
        elif token < tokenizer.eot:
            segment.append(token)
    if segment and start < end:
        kept += segment
    return kept


def _compression(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0
