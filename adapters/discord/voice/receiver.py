"""Receive side of a voice connection: UDP datagrams in, per-speaker utterances out.

discord.py hands every datagram to `on_datagram` from its socket reader thread. That callback
only queues the bytes; one worker thread ("parley-voice-rx") owns all per-speaker state and does
the work in order: RTP parse (padding, CSRCs, header extension), transport decryption in the
session's mode, DAVE decryption with the `davey` session discord.py holds, Opus decoding, and
voice activity detection. The event loop only receives finished events through
`call_soon_threadsafe`. libsodium, OpenSSL, libopus and onnxruntime release the GIL while
they work, so the loop stays responsive while several speakers are decoded.

An SSRC is tied to a user by the voice gateway's SPEAKING (op 5) message, which UDP audio can
overtake: packets of an SSRC not yet known wait up to `unknown_ssrc_hold_s`, then are dropped
(logged at debug level once per SSRC).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import davey
import numpy as np

from adapters.discord.voice.opus import (
    FRAME_SAMPLES,
    OPUS_RATE,
    OPUS_SILENCE,
    MonoDecoder,
    OpusDecodeError,
)
from adapters.discord.voice.rtp import (
    OPUS_PAYLOAD_TYPE,
    MalformedPacket,
    RtpHeader,
    is_rtcp,
    media_payload,
    parse_header,
    sequence_delta,
    timestamp_delta,
)
from adapters.discord.voice.transport import (
    DecryptionFailed,
    TransportCipher,
    UnsupportedMode,
    make_cipher,
)
from adapters.discord.voice.vad import (
    Pcm,
    Segmenter,
    SegmenterOptions,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
)

log = logging.getLogger(__name__)

# How often the worker looks at idle streams and held packets: a pause is heard this finely.
TICK_S = 0.02
# A stream that stopped without saying so gets silence fed to its VAD after this long (network
# jitter is not a pause); one that sent Opus silence frames (a client that stopped talking) at once.
IDLE_FILL_AFTER_S = 0.2
MAX_GAP_FILL_S = 2.0  # longest silence inserted for a gap in a stream's timestamps ...
GAP_FILL_OVER_PAUSE_S = 0.5  # ... or this much more than the pause that ends an utterance
MAX_CONCEALED_FRAMES = 5  # lost packets (a sequence gap) filled by Opus loss concealment
UNKNOWN_SSRC_HOLD_S = 1.0  # how long packets of an unmapped SSRC wait for SPEAKING
UNKNOWN_SSRC_MAX_PACKETS = 50  # ... and how many of them (1 s of audio)
UNKNOWN_SSRC_MAX_STREAMS = 16  # bound on the memory junk traffic can take
REKEY_HOLD_S = 0.5  # how long an undecryptable DAVE frame waits for the next epoch's key
REKEY_MAX_PACKETS = 25  # ... at most this many per SSRC (0.5 s of audio)
# Every DAVE-encrypted frame ends with this marker (https://daveprotocol.com/#payload-format).
DAVE_MAGIC_MARKER = b"\xfa\xfa"


class ConnectionView(Protocol):
    """What the receiver reads from discord.py's `VoiceConnectionState`, on every packet."""

    @property
    def secret_key(self) -> list[int]: ...

    @property
    def mode(self) -> str: ...

    @property
    def ssrc(self) -> int: ...

    @property
    def dave_session(self) -> davey.DaveSession | None: ...

    @property
    def dave_protocol_version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Utterance:
    """One stretch of one user's speech, ended by a pause (or by the user leaving)."""

    user_id: int
    ssrc: int
    pcm: Pcm  # mono float32 at 48 kHz, with `speech_pad_ms` of context either side
    started_at: float  # monotonic clock: when the speech began
    ended_at: float  # monotonic clock: when the pause that ends it was recognised
    cut_off: bool = False  # the speaker left mid-utterance
    start: int = 0  # its first and last sample in the SSRC's stream (48 kHz)
    end: int = 0
    speech_end: int = 0  # where the speech stopped: `end` without the trailing padding
    pause_ms: int = 0  # a pause's utterance: how long the pause is so far

    @property
    def speech(self) -> tuple[int, int, int, int]:
        """Which speech this is: a pause's utterance and the end it promised compare equal."""
        return (self.user_id, self.ssrc, self.start, self.speech_end)

    @property
    def duration_s(self) -> float:
        return self.pcm.size / OPUS_RATE

    def pcm_16k(self) -> Pcm:
        """The audio at Whisper's 16 kHz (CPU work: call it from a worker thread)."""
        from bot.speech.audio import resample

        return resample(self.pcm, OPUS_RATE, 16_000)


@dataclass
class ReceiveStats:
    """Counters of what happened to received datagrams (read them for metrics and tests)."""

    datagrams: int = 0
    rtcp: int = 0
    malformed: int = 0
    other_payload: int = 0
    transport_failed: int = 0
    unknown_ssrc_dropped: int = 0
    dave_failed: int = 0
    dave_passthrough: int = 0
    dave_retried: int = 0  # frames decrypted after waiting for a new epoch
    late: int = 0
    concealed: int = 0
    decode_failed: int = 0
    frames: int = 0
    utterances: int = 0
    per_user_frames: dict[int, int] = field(default_factory=dict)


@dataclass
class _Held:
    """Packets waiting: for their SSRC's user (`_held`) or for a new epoch (`_rekeying`)."""

    first_seen: float
    packets: deque[tuple[Any, ...]] = field(default_factory=deque)
    epoch: int | None = None


class _SpeakerStream:
    """One SSRC's decoder, sequence tracking and segmenter (owned by the worker thread)."""

    def __init__(self, ssrc: int, user_id: int, options: SegmenterOptions) -> None:
        self.ssrc = ssrc
        self.user_id = user_id
        self.decoder = MonoDecoder()
        self.segmenter = Segmenter(options)
        self.last_sequence: int | None = None
        self.last_timestamp = 0
        self.last_arrival = 0.0
        self.filled = 0  # samples of silence fed since the last packet (idle filling)
        # Since the client's first Opus silence frame of its current quiet spell (it stopped
        # talking): when, and the samples of silence fed since (frames and filling).
        self.quiet_since: float | None = None
        self.quiet_fed = 0

    def samples_to_time(self, position: int, now: float) -> float:
        """Monotonic time at which stream sample `position` was heard (estimated)."""
        return now - (self.segmenter.position - position) / OPUS_RATE


def _utterance(
    stream: _SpeakerStream, event: SpeechPaused | SpeechEnded, now: float, *, cut_off: bool
) -> Utterance:
    """The utterance a pause promises or an end delivers: the same audio and positions."""
    return Utterance(
        user_id=stream.user_id,
        ssrc=stream.ssrc,
        pcm=event.pcm,
        started_at=stream.samples_to_time(event.start, now),
        ended_at=now,
        cut_off=cut_off,
        start=event.start,
        end=event.end,
        speech_end=event.speech_end,
        pause_ms=event.pause_ms if isinstance(event, SpeechPaused) else 0,
    )


EventSink = Callable[[Any], None]


class VoiceReceiver:
    """Turns the datagrams of one voice connection into utterances and speech onsets.

    `on_utterance(Utterance)`, `on_speech_start(user_id)`, `on_pause(Utterance)` and
    `on_resume(ssrc)` are called on `loop`.
    """

    def __init__(
        self,
        connection: ConnectionView,
        loop: asyncio.AbstractEventLoop,
        *,
        on_utterance: Callable[[Utterance], None],
        on_speech_start: Callable[[int], None],
        on_pause: Callable[[Utterance], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
        options: SegmenterOptions | None = None,
        unknown_ssrc_hold_s: float = UNKNOWN_SSRC_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._loop = loop
        self._on_utterance = on_utterance
        self._on_speech_start = on_speech_start
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._options = options or SegmenterOptions()
        self._hold_s = unknown_ssrc_hold_s
        # Enough silence for any pause to end an utterance (`voice_pause_ms` goes up to 3 s).
        fill_s = max(MAX_GAP_FILL_S, self._options.min_silence_ms / 1000 + GAP_FILL_OVER_PAUSE_S)
        self._max_fill = int(fill_s * OPUS_RATE)
        self._clock = clock
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="parley-voice-rx", daemon=True)
        self.stats = ReceiveStats()
        # Worker-thread state.
        self._users: dict[int, int] = {}  # ssrc -> user id
        self._streams: dict[int, _SpeakerStream] = {}
        self._held: dict[int, _Held] = {}
        self._rekeying: dict[int, _Held] = {}
        self._cipher: TransportCipher | None = None
        self._cipher_key: tuple[str, bytes] | None = None
        self._bad_mode: str | None = None
        self._busy_s = 0.0  # worker CPU time spent on packets (for the benchmark)

    # -- called from other threads -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker (blocking: call it from a thread, or accept a short join)."""
        self._inbox.put(("stop",))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_datagram(self, data: bytes) -> None:
        """discord.py's socket listener: runs in its reader thread, so it only queues."""
        self._inbox.put(("packet", data, self._clock()))

    def map_ssrc(self, ssrc: int, user_id: int) -> None:
        """SPEAKING said `ssrc` is `user_id`'s audio."""
        self._inbox.put(("map", ssrc, user_id))

    def user_left(self, user_id: int) -> None:
        """The user left the call: finish their utterance (cut off) and forget their SSRCs."""
        self._inbox.put(("left", user_id))

    def flush_all(self) -> None:
        """End every utterance under way (the bot leaves)."""
        self._inbox.put(("flush",))

    @property
    def busy_seconds(self) -> float:
        """Thread CPU time the worker spent handling packets and ticks."""
        return self._busy_s

    # -- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = self._clock() + TICK_S
        while True:
            timeout = max(0.0, next_tick - self._clock())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            started = time.thread_time()
            try:
                if item is not None:
                    if item[0] == "stop":
                        return
                    self._handle(item)
                now = self._clock()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + TICK_S
            except Exception:
                # One bad packet or event must not end the whole receive pipeline.
                log.exception("voice receive: unexpected error (continuing)")
            finally:
                self._busy_s += time.thread_time() - started

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "packet":
            self._packet(item[1], item[2])
        elif kind == "map":
            self._map(item[1], item[2])
        elif kind == "left":
            self._left(item[1])
        elif kind == "flush":
            for stream in list(self._streams.values()):
                self._emit(stream, stream.segmenter.flush(), self._clock())

    def _map(self, ssrc: int, user_id: int) -> None:
        previous = self._users.get(ssrc)
        self._users[ssrc] = user_id
        stream = self._streams.get(ssrc)
        if stream is not None and previous != user_id:
            # The SSRC was given to someone else: what was under way belonged to the old user.
            self._emit(stream, stream.segmenter.flush(), self._clock())
            del self._streams[ssrc]
        held = self._held.pop(ssrc, None)
        if held is not None:
            log.debug(
                "voice: ssrc %d is user %d; %d held packets", ssrc, user_id, len(held.packets)
            )
            for header, payload, arrival in held.packets:
                self._media(header, payload, arrival, user_id)

    def _left(self, user_id: int) -> None:
        now = self._clock()
        for ssrc in [s for s, u in self._users.items() if u == user_id]:
            del self._users[ssrc]
            pending = self._rekeying.pop(ssrc, None)
            if pending is not None:
                self._retry_packets(pending)
            stream = self._streams.pop(ssrc, None)
            if stream is not None:
                self._emit(stream, stream.segmenter.flush(), now)

    def _transport(self) -> TransportCipher | None:
        key, mode = self._connection.secret_key, self._connection.mode
        if not key or not mode:
            return None  # not connected yet (discord.py's MISSING is falsy)
        wanted = (mode, bytes(key))
        if wanted != self._cipher_key:
            try:
                self._cipher = make_cipher(mode, wanted[1])
            except UnsupportedMode:
                if self._bad_mode != mode:
                    log.warning("voice: transport mode %s is not supported; not listening", mode)
                    self._bad_mode = mode
                self._cipher = None
            self._cipher_key = wanted
        return self._cipher

    def _packet(self, data: bytes, arrival: float) -> None:
        self.stats.datagrams += 1
        if is_rtcp(data):
            self.stats.rtcp += 1
            return
        try:
            header = parse_header(data)
        except MalformedPacket:
            self.stats.malformed += 1  # e.g. a late IP discovery answer or keep-alive
            return
        if header.payload_type != OPUS_PAYLOAD_TYPE or header.ssrc == self._connection.ssrc:
            self.stats.other_payload += 1
            return
        cipher = self._transport()
        if cipher is None:
            self.stats.transport_failed += 1
            return
        try:
            payload = media_payload(header, cipher.decrypt(data, header.clear_bytes))
        except (DecryptionFailed, MalformedPacket):
            self.stats.transport_failed += 1
            return
        user_id = self._users.get(header.ssrc)
        if user_id is None:
            self._hold(header, payload, arrival)
            return
        self._media(header, payload, arrival, user_id)

    def _hold(self, header: RtpHeader, payload: bytes, arrival: float) -> None:
        held = self._held.get(header.ssrc)
        if held is None:
            if len(self._held) >= UNKNOWN_SSRC_MAX_STREAMS:
                self.stats.unknown_ssrc_dropped += 1
                return
            held = self._held[header.ssrc] = _Held(first_seen=arrival)
        if len(held.packets) >= UNKNOWN_SSRC_MAX_PACKETS:
            held.packets.popleft()
            self.stats.unknown_ssrc_dropped += 1
        held.packets.append((header, payload, arrival))

    def _media(self, header: RtpHeader, payload: bytes, arrival: float, user_id: int) -> None:
        pending = self._rekeying.get(header.ssrc)
        if pending is not None and self._epoch() != pending.epoch:
            self._retry(header.ssrc)
            pending = None
        opus = self._dave_decrypt(payload, user_id)
        if opus is None:
            if payload.endswith(DAVE_MAGIC_MARKER):
                self._hold_for_rekey(header, payload, arrival, user_id)
            return
        if pending is not None:
            # This frame decrypts with the keys we hold, so the held ones never will.
            del self._rekeying[header.ssrc]
            self.stats.dave_failed += len(pending.packets)
        self._decrypted(header, opus, arrival, user_id)

    def _decrypted(self, header: RtpHeader, opus: bytes, arrival: float, user_id: int) -> None:
        stream = self._streams.get(header.ssrc)
        if stream is None:
            stream = self._streams[header.ssrc] = _SpeakerStream(
                header.ssrc, user_id, self._options
            )
        self._feed(stream, header, opus, arrival)

    def _epoch(self) -> int | None:
        session = self._connection.dave_session
        return session.epoch if session is not None else None

    def _hold_for_rekey(
        self, header: RtpHeader, payload: bytes, arrival: float, user_id: int
    ) -> None:
        """An encrypted frame we hold no key for: most likely the sender already moved to the
        next epoch while discord.py is still processing the commit. Keep it for a moment."""
        pending = self._rekeying.get(header.ssrc)
        if pending is None:
            pending = self._rekeying[header.ssrc] = _Held(first_seen=arrival)
            pending.epoch = self._epoch()
        if len(pending.packets) >= REKEY_MAX_PACKETS:
            pending.packets.popleft()
            self.stats.dave_failed += 1
        pending.packets.append((header, payload, arrival, user_id))

    def _retry(self, ssrc: int) -> None:
        """The epoch changed: decrypt what was held for `ssrc`, in order."""
        self._retry_packets(self._rekeying.pop(ssrc))

    def _retry_packets(self, pending: _Held) -> None:
        for header, payload, arrival, user_id in pending.packets:
            opus = self._dave_decrypt(payload, user_id, count_failure=True)
            if opus is not None:
                self.stats.dave_retried += 1
                self._decrypted(header, opus, arrival, user_id)

    def _dave_decrypt(
        self, payload: bytes, user_id: int, *, count_failure: bool = False
    ) -> bytes | None:
        if payload == OPUS_SILENCE:
            return payload  # DAVE leaves the silence frame in the clear
        session = self._connection.dave_session
        if self._connection.dave_protocol_version == 0 or session is None:
            return payload  # not an end-to-end encrypted call (or downgraded to none)
        try:
            opus = session.decrypt(user_id, davey.MediaType.audio, payload)
        except ValueError as exc:
            # No key for it: a frame of an epoch we are not in (yet), from before we joined,
            # or plain audio while passthrough is off. A Discord client drops it too.
            if count_failure or not payload.endswith(DAVE_MAGIC_MARKER):
                self.stats.dave_failed += 1
                failures = self.stats.dave_failed
                if failures in (1, 10, 100) or failures % 1000 == 0:
                    log.debug("voice: DAVE decrypt failed for user %d (%d so far): %s",
                              user_id, failures, exc)  # fmt: skip
            return None
        if opus == payload:
            self.stats.dave_passthrough += 1
        return bytes(opus)

    def _feed(self, stream: _SpeakerStream, header: RtpHeader, opus: bytes, arrival: float) -> None:
        if stream.last_sequence is not None:
            step = sequence_delta(header.sequence, stream.last_sequence)
            if step <= 0:
                self.stats.late += 1  # duplicate, or too late to be of use
                return
            gap = timestamp_delta(header.timestamp, stream.last_timestamp) - FRAME_SAMPLES
            if (
                1 < step <= MAX_CONCEALED_FRAMES + 1
                and 0 < gap <= MAX_CONCEALED_FRAMES * FRAME_SAMPLES
            ):
                for _ in range(step - 1):  # fmt: skip
                    self._decode(stream, None, arrival)
                    self.stats.concealed += 1
            elif gap > 0:
                # The sender paused (Discord clients send nothing while silent): the VAD must
                # hear that pause to end the utterance, minus what idle filling already gave.
                missing = min(gap, self._max_fill) - stream.filled
                if missing > 0:
                    self._emit(
                        stream, stream.segmenter.push(np.zeros(missing, np.float32)), arrival
                    )
        stream.last_sequence = header.sequence
        stream.last_timestamp = header.timestamp
        stream.last_arrival = arrival
        stream.filled = 0
        if opus != OPUS_SILENCE:
            stream.quiet_since = None
        elif stream.quiet_since is None:
            stream.quiet_since, stream.quiet_fed = arrival, 0
        self._decode(stream, opus, arrival)

    def _decode(self, stream: _SpeakerStream, opus: bytes | None, arrival: float) -> None:
        try:
            pcm = stream.decoder.decode(opus)
        except OpusDecodeError as exc:
            self.stats.decode_failed += 1
            log.debug("voice: Opus decode failed for ssrc %d: %s", stream.ssrc, exc)
            return
        self.stats.frames += 1
        frames = self.stats.per_user_frames
        frames[stream.user_id] = frames.get(stream.user_id, 0) + 1
        if opus == OPUS_SILENCE:
            stream.quiet_fed += pcm.size
        self._emit(stream, stream.segmenter.push(pcm), arrival)

    def _tick(self, now: float) -> None:
        for ssrc, pending in list(self._rekeying.items()):
            if self._epoch() != pending.epoch:
                self._retry(ssrc)
            elif now - pending.first_seen >= REKEY_HOLD_S:
                del self._rekeying[ssrc]
                self.stats.dave_failed += len(pending.packets)
        for ssrc, held in list(self._held.items()):
            if now - held.first_seen >= self._hold_s:
                del self._held[ssrc]
                self.stats.unknown_ssrc_dropped += len(held.packets)
                log.debug("voice: dropped %d packets of unknown ssrc %d", len(held.packets), ssrc)
        for stream in self._streams.values():
            if not stream.segmenter.speaking:
                continue
            if stream.quiet_since is not None:
                # Silent since its first silence frame, whether the frames came paced or in a
                # burst (discord.py sends its five at once).
                quiet = int((now - stream.quiet_since) * OPUS_RATE)
                due = min(quiet, self._max_fill) - stream.quiet_fed
            else:
                idle = now - stream.last_arrival
                if idle < IDLE_FILL_AFTER_S:
                    continue
                due = min(int(idle * OPUS_RATE), self._max_fill) - stream.filled
            if due > 0:
                stream.filled += due
                stream.quiet_fed += due
                self._emit(stream, stream.segmenter.push(np.zeros(due, np.float32)), now)

    def _emit(self, stream: _SpeakerStream, events: list[Any], now: float) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._loop.call_soon_threadsafe(self._on_speech_start, stream.user_id)
            elif isinstance(event, SpeechPaused) and self._on_pause is not None:
                paused = _utterance(stream, event, now, cut_off=False)
                self._loop.call_soon_threadsafe(self._on_pause, paused)
            elif isinstance(event, SpeechResumed) and self._on_resume is not None:
                self._loop.call_soon_threadsafe(self._on_resume, stream.ssrc)
            elif isinstance(event, SpeechEnded):
                self.stats.utterances += 1
                utterance = _utterance(stream, event, now, cut_off=event.cut_off)
                self._loop.call_soon_threadsafe(self._on_utterance, utterance)
