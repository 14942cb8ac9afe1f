"""`VoiceSession`: one voice channel the bot is in, as utterances in and speech out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from discord.channel import VocalGuildChannel

from adapters.discord.voice.client import ParleyVoiceClient
from adapters.discord.voice.opus import MonoDecoder
from adapters.discord.voice.receiver import (
    UNKNOWN_SSRC_HOLD_S,
    ReceiveStats,
    Utterance,
    VoiceReceiver,
)
from adapters.discord.voice.speaker import DEFAULT_READY_TIMEOUT_S, Speaker, SpeechInput
from adapters.discord.voice.vad import SegmenterOptions, silero_session

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0  # discord.py's default for channel.connect()


@dataclass(frozen=True, slots=True)
class VoiceOptions:
    """How a voice session listens and speaks (phase B maps the [discord] settings onto it)."""

    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    barge_in: bool = True  # someone starting to speak stops the bot's speech
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    unknown_ssrc_hold_s: float = UNKNOWN_SSRC_HOLD_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S


SpeechStartListener = Callable[[int], None]
PauseListener = Callable[[Utterance], None]
ResumeListener = Callable[[int], None]


def warm_up() -> None:
    """Load what listening needs (Silero VAD, libopus); blocking: run it in a thread."""
    silero_session()
    MonoDecoder()


class VoiceSession:
    """The bot in one voice channel: `utterances()` in, `speak()` out, barge-in in between."""

    def __init__(self, client: ParleyVoiceClient, options: VoiceOptions | None = None) -> None:
        self.options = options or VoiceOptions()
        self.client = client
        self._loop = asyncio.get_running_loop()
        self._utterances: asyncio.Queue[Utterance | None] = asyncio.Queue()
        self._speech_listeners: list[SpeechStartListener] = []
        self._pause_listeners: list[PauseListener] = []
        self._resume_listeners: list[ResumeListener] = []
        self._closed = asyncio.Event()
        self._speaker = Speaker(client, ready_timeout_s=self.options.ready_timeout_s)
        self._receiver = VoiceReceiver(
            client.connection,
            self._loop,
            on_utterance=self._utterances.put_nowait,
            on_speech_start=self._speech_started,
            on_pause=self._paused,
            on_resume=self._resumed,
            options=self.options.segmenter,
            unknown_ssrc_hold_s=self.options.unknown_ssrc_hold_s,
        )
        self._receiver.start()
        for ssrc, user_id in client.ssrc_users.items():
            self._receiver.map_ssrc(ssrc, user_id)
        client.add_listener(self)
        client.connection.add_socket_listener(self._receiver.on_datagram)

    @classmethod
    async def join(
        cls,
        channel: VocalGuildChannel,
        options: VoiceOptions | None = None,
    ) -> VoiceSession:
        """Connect to `channel` (through the gateway's voice state and voice server updates)."""
        options = options or VoiceOptions()
        # Load the VAD model and the Opus decoder now rather than at the first packet.
        await asyncio.to_thread(warm_up)
        client = await channel.connect(
            cls=ParleyVoiceClient, timeout=options.connect_timeout_s, reconnect=True
        )
        return cls(client, options)

    # -- listening -----------------------------------------------------------------------

    async def utterances(self) -> AsyncIterator[Utterance]:
        """Each utterance of each speaker as its pause is heard; ends when the session closes."""
        while True:
            utterance = await self._utterances.get()
            if utterance is None:
                return
            yield utterance

    def on_speech_start(self, listener: SpeechStartListener) -> None:
        """Call `listener(user_id)` whenever someone starts speaking (after barge-in)."""
        self._speech_listeners.append(listener)

    def on_speech_pause(self, listener: PauseListener) -> None:
        """Call `listener(utterance)` when a speaker pauses long enough to maybe be done: the
        utterance as it will be if the pause goes on (`SegmenterOptions.pause_reports_ms`)."""
        self._pause_listeners.append(listener)

    def on_speech_resume(self, listener: ResumeListener) -> None:
        """Call `listener(ssrc)` when a speaker goes on after a reported pause: the utterance
        that pause promised will not be the one that ends."""
        self._resume_listeners.append(listener)

    @property
    def stats(self) -> ReceiveStats:
        """What happened to received packets so far."""
        return self._receiver.stats

    @property
    def receive_cpu_seconds(self) -> float:
        """Thread CPU time the receive worker has used (decrypt, decode, VAD)."""
        return self._receiver.busy_seconds

    # -- speaking ------------------------------------------------------------------------

    async def wait_ready(self, within_s: float | None = None) -> None:
        """Wait until speech would reach the others end-to-end encrypted (VoiceNotReady)."""
        await self._speaker.wait_ready(within_s)

    async def speak(self, audio: SpeechInput) -> bool:
        """Say `audio` (48 kHz mono float PCM, one clip or an (async) iterable of clips).

        Waits for the previous answer and for the DAVE group; True when played to the end,
        False when interrupted (barge-in, `stop_speaking`, disconnect).
        """
        return await self._speaker.speak(audio)

    def stop_speaking(self) -> None:
        """Stop the current answer within one 20 ms frame."""
        self._speaker.stop()

    @property
    def speaking(self) -> bool:
        return self._speaker.speaking

    # -- lifetime ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def leave(self) -> None:
        """Leave the channel; pending utterances are flushed, `utterances()` then ends."""
        if self._closed.is_set():
            return
        self._speaker.stop()
        self._receiver.flush_all()
        await self.client.disconnect(force=True)
        self.on_closed()

    async def __aenter__(self) -> VoiceSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    # -- VoiceListener (called by ParleyVoiceClient on the loop) ---------------------------

    def on_ssrc(self, ssrc: int, user_id: int) -> None:
        self._receiver.map_ssrc(ssrc, user_id)

    def on_user_left(self, user_id: int) -> None:
        self._receiver.user_left(user_id)

    def on_closed(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.client.remove_listener(self)
        self.client.connection.remove_socket_listener(self._receiver.on_datagram)
        receiver = self._receiver

        def stop_then_end() -> None:
            receiver.stop()
            self._loop.call_soon_threadsafe(self._utterances.put_nowait, None)

        # The worker's queue is FIFO: flushed utterances are delivered before the end marker.
        self._loop.run_in_executor(None, stop_then_end)

    def _paused(self, utterance: Utterance) -> None:
        for listener in list(self._pause_listeners):
            listener(utterance)

    def _resumed(self, ssrc: int) -> None:
        for listener in list(self._resume_listeners):
            listener(ssrc)

    def _speech_started(self, user_id: int) -> None:
        if self.options.barge_in and self._speaker.speaking:
            log.debug("voice: user %d started speaking: barge-in", user_id)
            self._speaker.stop()
        for listener in list(self._speech_listeners):
            listener(user_id)
