"""Utterances out of one speaker's audio: the Silero VAD that faster-whisper ships, streamed.

faster-whisper bundles Silero VAD v6 as ONNX (`faster_whisper/assets/silero_vad_v6.onnx`, run by
onnxruntime, offline). Its model takes 512-sample windows of 16 kHz audio, each with the 64
samples before it as context, and carries an LSTM state (`h`, `c`) from call to call; feeding it
a stream window by window with that state gives exactly the probabilities of one whole-array
call (checked), so a live stream costs one small inference per 32 ms (~0.1 ms on this machine).

The segmenter follows faster-whisper's rules (threshold, a lower threshold to end with, minimum
speech, minimum silence, padding) but decides as audio arrives. It is not thread-safe: one
receiver worker thread owns every segmenter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from adapters.discord.voice.opus import OPUS_RATE

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

Pcm = npt.NDArray[np.float32]

VAD_RATE = 16_000  # Hz: Silero's input rate
VAD_WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
VAD_CONTEXT = 64  # samples of the previous window the model sees with each one
VAD_STATE_SHAPE = (1, 1, 128)  # the LSTM's h and c
RATE_RATIO = OPUS_RATE // VAD_RATE  # 3: 48 kHz samples per 16 kHz sample
WINDOW_48K = VAD_WINDOW * RATE_RATIO


@dataclass(frozen=True, slots=True)
class SegmenterOptions:
    """How speech is cut into utterances (defaults: faster-whisper's, with a turn-taking pause)."""

    threshold: float = 0.5  # speech probability that starts (or continues) speech
    neg_threshold: float | None = None  # below this it is silence; default threshold - 0.15
    onset_windows: int = 2  # consecutive speech windows (32 ms each) before speech "starts"
    min_speech_ms: int = 250  # shorter voice activity is a click or a breath (as bot.speech.stt)
    min_silence_ms: int = 600  # a pause this long ends the utterance: the speaker's turn is over
    speech_pad_ms: int = 200  # audio kept before the start and after the end of speech
    max_utterance_s: float = 30.0  # Whisper's window; longer speech is cut into pieces
    # Also report `SpeechPaused` as a pause reaches each of these lengths (ascending; useful
    # below `min_silence_ms`): the utterance so far, as it will end if the pause goes on (a
    # listener can start transcribing and answering it early), and `SpeechResumed` if the
    # speaker then goes on.
    pause_reports_ms: tuple[int, ...] = ()

    @property
    def end_threshold(self) -> float:
        return (
            self.neg_threshold
            if self.neg_threshold is not None
            else max(self.threshold - 0.15, 0.01)
        )


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began `onset_windows` windows ago; `position` is its first 48 kHz sample."""

    position: int


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """A pause began: if it lasts, the utterance will be this speech (same start, same
    `speech_end`; the padding after it that has not been heard yet is silence here)."""

    pcm: Pcm
    start: int
    end: int
    speech_end: int  # where the speech stopped (`end` without the padding)
    pause_ms: int  # how long the pause is (one of `pause_reports_ms`)


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """The speaker went on after a reported pause: that pause does not end the utterance."""

    position: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """One utterance: 48 kHz mono PCM from `start` to `end` (stream sample positions)."""

    pcm: Pcm
    start: int
    end: int
    cut_off: bool  # ended by `flush` (the speaker left), not by a pause
    speech_end: int = 0  # where the speech stopped (`end` without the padding)


SegmentEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechEnded


@functools.cache
def silero_session() -> InferenceSession:
    """faster-whisper's Silero model, loaded once per process (single-threaded inference)."""
    from faster_whisper.vad import get_vad_model

    session: InferenceSession = get_vad_model().session
    return session


class SileroStream:
    """Speech probabilities of a 16 kHz stream, one per complete 512-sample window."""

    def __init__(self, session: InferenceSession | None = None) -> None:
        self._session = session or silero_session()
        self._h = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, pcm16k: Pcm) -> npt.NDArray[np.float32]:
        """Probabilities of the windows `pcm16k` completes (possibly none)."""
        audio = np.concatenate((self._pending, pcm16k)) if self._pending.size else pcm16k
        count = audio.size // VAD_WINDOW
        if count == 0:
            self._pending = audio
            return np.zeros(0, dtype=np.float32)
        windows = audio[: count * VAD_WINDOW].reshape(count, VAD_WINDOW)
        self._pending = audio[count * VAD_WINDOW :].copy()
        contexts = np.concatenate((self._context[None, :], windows[:-1, -VAD_CONTEXT:]))
        batch = np.ascontiguousarray(np.concatenate((contexts, windows), axis=1))
        outputs: list[Any] = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        probabilities, self._h, self._c = outputs
        self._context = windows[-1, -VAD_CONTEXT:].copy()
        return np.asarray(probabilities, dtype=np.float32).reshape(-1)


def _lowpass_taps(count: int, cutoff: float) -> npt.NDArray[np.float32]:
    """A windowed-sinc low-pass FIR; `cutoff` as a fraction of the input sample rate."""
    n = np.arange(count) - (count - 1) / 2
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(count)
    return (taps / taps.sum()).astype(np.float32)


# Anti-aliasing before taking every third sample: pass 0-7.2 kHz of the 8 kHz the 16 kHz
# stream can carry (speech energy is far below that), 63 taps (1.3 ms at 48 kHz).
DOWNSAMPLE_TAPS = _lowpass_taps(63, 0.9 * (VAD_RATE / 2) / OPUS_RATE)


class _Downsampler:
    """48 kHz mono float PCM to 16 kHz, with the filter's history kept between packets.

    A NumPy FIR and decimation: about 20 us per 20 ms packet, against ~200 us through PyAV's
    resampler (frame conversions dominate at this size).
    """

    def __init__(self) -> None:
        self._history = np.zeros(DOWNSAMPLE_TAPS.size - 1, dtype=np.float32)
        self._phase = 0  # index, in the next chunk, of the next sample to keep

    def __call__(self, pcm48: Pcm) -> Pcm:
        if pcm48.size == 0:
            return pcm48
        padded = np.concatenate((self._history, pcm48))
        filtered = np.convolve(padded, DOWNSAMPLE_TAPS, mode="valid")  # one per input sample
        self._history = padded[-(DOWNSAMPLE_TAPS.size - 1) :]
        kept = filtered[self._phase :: RATE_RATIO]
        self._phase = (self._phase - pcm48.size) % RATE_RATIO
        return kept.astype(np.float32, copy=False)


class Segmenter:
    """Cuts one speaker's 48 kHz PCM into utterances as it arrives."""

    def __init__(self, options: SegmenterOptions, session: InferenceSession | None = None) -> None:
        self._options = options
        self._vad = SileroStream(session)
        self._downsample = _Downsampler()
        ms = OPUS_RATE // 1000
        self._pad = options.speech_pad_ms * ms
        # Audio kept while nobody speaks: the padding before an onset that is only recognised
        # `onset_windows` windows later, plus a window still waiting in the VAD's buffer.
        self._lookback = self._pad + (options.onset_windows + 2) * WINDOW_48K
        self._min_speech = options.min_speech_ms * ms
        self._min_silence = options.min_silence_ms * ms
        self._pause_reports = sorted(options.pause_reports_ms)
        self._max_utterance = int(options.max_utterance_s * OPUS_RATE)
        self._end_threshold = options.end_threshold
        self._chunks: list[Pcm] = []  # 48 kHz audio from `_kept_from` to `_position`
        self._kept_from = 0
        self._position = 0  # 48 kHz samples received so far
        self._windows = 0  # VAD windows evaluated so far
        self._run = 0  # consecutive speech windows while not speaking
        self._speaking = False
        self._start = 0  # first sample of the current speech
        self._silence_from: int | None = None  # where the current pause began
        self._reported = 0  # of `pause_reports_ms`, how many the current pause reached

    @property
    def speaking(self) -> bool:
        """Inside an utterance (after its onset, before its end)."""
        return self._speaking

    @property
    def position(self) -> int:
        """48 kHz samples received so far."""
        return self._position

    def push(self, pcm48: Pcm) -> list[SegmentEvent]:
        """Append audio; returns the starts and ends it completes, in order."""
        if pcm48.size == 0:
            return []
        self._chunks.append(pcm48)
        self._position += pcm48.size
        events: list[SegmentEvent] = []
        for probability in self._vad.feed(self._downsample(pcm48)):
            window_start = self._windows * WINDOW_48K
            self._windows += 1
            self._on_window(float(probability), window_start, events)
        self._trim()
        return events

    def flush(self) -> list[SegmentEvent]:
        """End the stream (the speaker left): an utterance under way ends here, cut off."""
        if not self._speaking:
            return []
        self._speaking = False
        end = self._position
        if end - self._start < self._min_speech:
            return []
        return [self._utterance(self._start, end, cut_off=True)]

    def _on_window(self, probability: float, start: int, events: list[SegmentEvent]) -> None:
        end = start + WINDOW_48K
        if not self._speaking:
            if probability >= self._options.threshold:
                self._run += 1
                if self._run >= self._options.onset_windows:
                    self._speaking = True
                    self._start = start - (self._run - 1) * WINDOW_48K
                    self._silence_from = None
                    events.append(SpeechStarted(self._start))
            else:
                self._run = 0
            return
        if probability >= self._options.threshold:
            if self._silence_from is not None and self._reported:
                events.append(SpeechResumed(start))
            self._silence_from, self._reported = None, 0
        elif probability < self._end_threshold and self._silence_from is None:
            self._silence_from, self._reported = start, 0
        if self._silence_from is not None and end - self._silence_from >= self._min_silence:
            self._finish(self._silence_from, events)
        elif self._silence_from is not None and self._pause_worth_reporting(end):
            pause_ms = self._pause_reports[self._reported]
            self._reported += 1
            paused = self._utterance(self._start, self._silence_from, cut_off=False)
            # Its padding after the speech is still partly to come: silence, if the pause lasts
            # (Whisper hears a last word better with all of it).
            end = paused.speech_end + self._pad
            pcm = np.pad(paused.pcm, (0, max(0, end - paused.end)))
            events.append(SpeechPaused(pcm, paused.start, end, paused.speech_end, pause_ms))
        elif end - self._start >= self._max_utterance:
            # Too long for one transcription: cut here and go on with a new utterance.
            events.append(self._utterance(self._start, end, cut_off=False, pad_end=False))
            self._start = end

    def _pause_worth_reporting(self, end: int) -> bool:
        """The pause reached its next length to report, and what came before it is long enough
        to be an utterance."""
        silence_from, reports = self._silence_from, self._pause_reports
        ms = OPUS_RATE // 1000
        return (
            silence_from is not None
            and self._reported < len(reports)
            and end - silence_from >= reports[self._reported] * ms
            and silence_from - self._start >= self._min_speech
        )

    def _finish(self, speech_end: int, events: list[SegmentEvent]) -> None:
        self._speaking = False
        self._run = 0
        self._silence_from = None
        if speech_end - self._start >= self._min_speech:
            events.append(self._utterance(self._start, speech_end, cut_off=False))

    def _utterance(
        self, start: int, end: int, *, cut_off: bool, pad_end: bool = True
    ) -> SpeechEnded:
        first = max(self._kept_from, start - self._pad)
        last = min(self._position, end + self._pad) if pad_end else end
        audio = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [audio]
        pcm = audio[first - self._kept_from : last - self._kept_from].copy()
        return SpeechEnded(pcm=pcm, start=first, end=last, cut_off=cut_off, speech_end=end)

    def _trim(self) -> None:
        """Keep only what a future utterance can still use: its padding, or the current one."""
        keep = self._start - self._pad if self._speaking else self._position - self._lookback
        keep = max(keep, 0)
        if keep - self._kept_from < OPUS_RATE:  # trim in steps of a second or more
            return
        audio = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [audio[keep - self._kept_from :]]
        self._kept_from = keep
