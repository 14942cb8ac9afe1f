"""Speaking into a voice channel through discord.py's own send path (which does DAVE).

discord.py's `AudioPlayer` thread reads one 20 ms PCM frame at a time from an `AudioSource`,
Opus-encodes it, DAVE-encrypts it (`encrypt_opus`) when the session can, transport-encrypts it
and sends it on time. `Speaker` feeds that player from the event loop through a thread-safe
queue, so sentences can be appended while earlier ones play, and `stop()` ends playback within
one frame (the player checks its stop flag every 20 ms): that is barge-in.

Privacy: while the call is end-to-end encrypted but our DAVE session is not ready (just joined,
or re-joining), the source hands out silence instead of speech, so nothing the bot says ever
leaves unencrypted; discord.py would otherwise send it as plain Opus, which peers drop anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING

import discord
import numpy as np

from adapters.discord.voice.opus import FRAME_SAMPLES, OPUS_RATE
from adapters.discord.voice.vad import Pcm
from bot.errors import ParleyError

if TYPE_CHECKING:
    from adapters.discord.voice.client import ParleyVoiceClient

log = logging.getLogger(__name__)

PLAYER_CHANNELS = 2  # discord.py's encoder takes 48 kHz stereo int16 (opus.Encoder.CHANNELS)
FRAME_BYTES = FRAME_SAMPLES * PLAYER_CHANNELS * 2  # 3840 bytes of PCM per 20 ms
SILENT_FRAME = bytes(FRAME_BYTES)
READY_POLL_S = 0.02  # discord.py signals no event when the DAVE group is ready: poll it
DEFAULT_READY_TIMEOUT_S = 15.0  # joining + the MLS welcome normally take well under a second
OPUS_BITRATE_KBPS = 64  # plenty for speech; discord.py's default (128) is tuned for music
# Silence before each answer, so the first syllable is not the first packet of the talk spurt:
# the listener's jitter buffer starts on it. One frame is enough: discord.py's AudioPlayer sends
# none at all before a source (it sends SPEAKING and then the first frame), and the 5 frames it
# sends after playback ends are there so clients do not interpolate the tail of the speech.
LEAD_IN_FRAMES = 1
# An answer starts at its first sound: synthesised speech begins with 20-40 ms of near-silence
# (piper's) that would only delay it. Below -50 dBFS is silence (piper's quiet start stays under
# 0.001, its speech peaks near 1.0); a few ms before the onset are kept so it is not clipped.
ONSET_LEVEL = 0.003
ONSET_KEEP_S = 0.005

SpeechInput = Pcm | Iterable[Pcm] | AsyncIterable[Pcm]


class VoiceNotReady(ParleyError):
    """The voice connection (or its end-to-end encryption) did not become ready in time."""


def pcm_to_frames(pcm: Pcm) -> list[bytes]:
    """Mono float PCM at 48 kHz as discord.py's 20 ms stereo int16 frames (last one padded)."""
    if pcm.size == 0:
        return []
    samples = np.clip(pcm, -1.0, 1.0)
    ints = (samples * 32767.0).astype("<i2")
    stereo = np.repeat(ints, PLAYER_CHANNELS)
    pad = (-stereo.size) % (FRAME_SAMPLES * PLAYER_CHANNELS)
    if pad:
        stereo = np.concatenate((stereo, np.zeros(pad, dtype="<i2")))
    data = stereo.tobytes()
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def trim_leading_silence(
    pcm: Pcm, *, level: float = ONSET_LEVEL, keep_s: float = ONSET_KEEP_S
) -> Pcm:
    """`pcm` (48 kHz) from `keep_s` before its first sample louder than `level`.

    A clip with no such sample is returned unchanged. CPU-bound: call it from a worker thread.
    """
    loud = np.abs(pcm) > level
    onset = int(np.argmax(loud)) if loud.size else 0
    if not loud.size or not loud[onset]:
        return pcm  # empty or all quiet: nothing to find the start of
    return pcm[max(0, onset - round(keep_s * OPUS_RATE)) :]


def _answer_frames(pcm: Pcm, *, first: bool) -> list[bytes]:
    """The frames of one clip; the answer's first clip starts at its sound."""
    return pcm_to_frames(trim_leading_silence(pcm) if first else pcm)


class _QueuedSource(discord.AudioSource):
    """PCM frames pushed from the loop, read by discord.py's player thread."""

    def __init__(self, private: Callable[[], bool]) -> None:
        self._frames: deque[bytes] = deque()  # append/popleft are thread-safe
        self._private = private
        self._closed = False
        self._aborted = threading.Event()
        self.frames_played = 0

    def push(self, frames: list[bytes]) -> None:
        self._frames.extend(frames)

    def close(self) -> None:
        """No more frames will come: end once the queue is played."""
        self._closed = True

    def abort(self) -> None:
        self._aborted.set()
        self._frames.clear()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def read(self) -> bytes:
        if self._aborted.is_set():
            return b""
        if not self._private():
            return SILENT_FRAME  # hold the speech until it can be end-to-end encrypted
        try:
            frame = self._frames.popleft()
        except IndexError:
            # The next sentence is still being synthesised: keep the stream going quietly.
            return b"" if self._closed else SILENT_FRAME
        self.frames_played += 1
        return frame

    def is_opus(self) -> bool:
        return False


async def _clips(audio: SpeechInput) -> AsyncIterable[Pcm]:
    if isinstance(audio, np.ndarray):
        yield audio
    elif isinstance(audio, AsyncIterable):
        async for clip in audio:
            yield clip
    else:
        for clip in audio:
            yield clip


class Speaker:
    """Plays PCM into the channel, one answer at a time; `stop()` is barge-in."""

    def __init__(
        self, client: ParleyVoiceClient, *, ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    ) -> None:
        self._client = client
        self._ready_timeout_s = ready_timeout_s
        self._lock = asyncio.Lock()
        self._source: _QueuedSource | None = None

    @property
    def speaking(self) -> bool:
        """Playback is under way (possibly waiting for the next sentence)."""
        return self._source is not None and not self._source.aborted

    async def wait_ready(self, within_s: float | None = None) -> None:
        """Wait until audio sent now reaches the other members (connected, DAVE group ready)."""
        limit = self._ready_timeout_s if within_s is None else within_s
        try:
            async with asyncio.timeout(limit):
                # discord.py processes the MLS welcome/commit without any event to wait on.
                while not (self._client.is_connected() and self._client.e2ee_ready):  # noqa: ASYNC110
                    await asyncio.sleep(READY_POLL_S)
        except TimeoutError:
            raise VoiceNotReady(
                "the voice connection's end-to-end encryption did not become ready"
            ) from None

    async def speak(self, audio: SpeechInput) -> bool:
        """Play `audio` (48 kHz mono float PCM: one clip, or clips as they are synthesised).

        Returns True when everything was played, False when `stop()` (or a disconnect) cut it
        short. Raises VoiceNotReady when the channel's encryption is not ready in time.
        """
        async with self._lock:
            await self.wait_ready()
            loop = asyncio.get_running_loop()
            finished: asyncio.Future[None] = loop.create_future()

            def settle() -> None:
                if not finished.done():
                    finished.set_result(None)

            def after(error: Exception | None) -> None:  # runs in the player thread
                if error is not None:
                    log.warning("voice playback ended with an error: %s", error)
                loop.call_soon_threadsafe(settle)

            source = _QueuedSource(lambda: self._client.e2ee_ready)
            source.push([SILENT_FRAME] * LEAD_IN_FRAMES)
            self._source = source
            self._client.play(
                source,
                after=after,
                application="voip",
                bitrate=OPUS_BITRATE_KBPS,
                signal_type="voice",
            )
            try:
                first = True
                async for clip in _clips(audio):
                    if source.aborted:
                        break
                    # Only the first clip is trimmed: the later ones' quiet starts are part of
                    # the pause between sentences.
                    frames = await asyncio.to_thread(_answer_frames, clip, first=first)
                    source.push(frames)
                    first = False
                source.close()
                await finished
            except BaseException:
                self._halt(source)
                raise
            finally:
                self._source = None
            return not source.aborted and self._client.is_connected()

    def stop(self) -> None:
        """Stop speaking now (barge-in): the player sends no more speech after this frame."""
        if self._source is not None:
            self._halt(self._source)

    def _halt(self, source: _QueuedSource) -> None:
        source.abort()
        if self._client.is_playing():
            self._client.stop()
