"""Shared pieces of the voice-channel tests and benchmark: a real discord.py client on the fake.

`discord_client(fake)` logs an unmodified `discord.Client` in to the fake Discord (REST and
gateway redirected the way the Discord adapter does it) with the intents voice needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import discord
import numpy as np
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.voice import Utterance, VoiceOptions, VoiceSession
from bot.speech.stt import Transcriber
from tests.fakes import audio_samples
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_voice.media import AES_GCM, XCHACHA, Pcm
from tests.fakes.discord_voice.server import FakeHuman, FakeVoiceServer
from tests.fakes.discord_world import FakeUser

READY_S = 0.05  # guild_ready_timeout: the fake sends its only GUILD_CREATE right after READY
START_TIMEOUT_S = 30.0  # hang guard
TRANSCRIBE_LEAD_IN_S = 0.3
UTTERANCE_TIMEOUT_S = 60.0  # hang guard: speech plus segmentation takes a few seconds


@contextlib.asynccontextmanager
async def discord_client(fake: FakeDiscord) -> AsyncIterator[discord.Client]:
    """A logged-in, ready discord.py client (guilds + voice_states intents) on `fake`."""
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    Route.BASE = fake.api_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    client = discord.Client(intents=intents, guild_ready_timeout=READY_S)
    task: asyncio.Task[None] | None = None
    try:
        await client.login(fake.token)
        task = asyncio.create_task(client.connect(reconnect=False))
        async with asyncio.timeout(START_TIMEOUT_S):
            await client.wait_until_ready()
        yield client
    finally:
        await client.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


def voice_channel(client: discord.Client, channel_id: int) -> discord.VoiceChannel:
    channel = client.get_channel(channel_id)
    assert isinstance(channel, discord.VoiceChannel), channel
    return channel


async def transcribe(transcriber: Transcriber, pcm: Pcm, rate: int = 48_000) -> str:
    """Whisper's transcript of mono float PCM (through Parley's Transcriber, as a WAV file).

    A little silence goes first: Whisper mishears a first word that starts the clip abruptly.
    """
    padded = np.concatenate((np.zeros(int(TRANSCRIBE_LEAD_IN_S * rate), np.float32), pcm))
    wav = await asyncio.to_thread(audio_samples.encode, padded, rate, "wav")
    return await transcriber.transcribe(wav, "audio/wav")


def words(text: str) -> set[str]:
    """Lower-case words of `text`, without punctuation."""
    return set(audio_samples._words(text))


@dataclass
class Call:
    """A voice call under test: the fakes, the bot's session and the fake humans in it."""

    fake: FakeDiscord
    voice: FakeVoiceServer
    session: VoiceSession
    humans: list[FakeHuman]

    utterances: AsyncIterator[Utterance] = field(init=False)

    def __post_init__(self) -> None:
        self.utterances = aiter(self.session.utterances())

    async def next_utterance(self, timeout: float = UTTERANCE_TIMEOUT_S) -> Utterance:
        """The bot's next utterance (the timeout only guards against hangs)."""
        async with asyncio.timeout(timeout):
            return await anext(self.utterances)


@contextlib.asynccontextmanager
async def voice_call(
    *humans: FakeUser,
    modes: tuple[str, ...] = (AES_GCM, XCHACHA),
    dave: bool = True,
    prefer_bot_commits: bool = False,
    options: VoiceOptions | None = None,
) -> AsyncIterator[Call]:
    """The fake Discord with a voice channel, `humans` in it, and the bot joined and ready."""
    async with (
        FakeDiscord() as fake,
        FakeVoiceServer(
            fake, modes=modes, dave=dave, prefer_bot_commits=prefer_bot_commits
        ) as voice,
    ):
        people = [await voice.join(user) for user in humans]
        async with discord_client(fake) as client:
            session = await VoiceSession.join(voice_channel(client, voice.channel_id), options)
            try:
                await session.wait_ready()
                await voice.dave_settled()
                yield Call(fake, voice, session, people)
            finally:
                await session.leave()


def similarity(heard: Pcm, spoken: Pcm) -> float:
    """Peak normalised cross-correlation of two clips (1.0: the same waveform at some offset).

    Opus keeps speech waveforms close enough for this to tell "the same sentence, intact" from
    "something else" or "cut short" without a speech recogniser.
    """
    size = 1 << int(np.ceil(np.log2(heard.size + spoken.size)))
    spectrum = np.fft.rfft(heard, size) * np.conj(np.fft.rfft(spoken, size))
    peak = float(np.max(np.abs(np.fft.irfft(spectrum, size))))
    return peak / float(np.linalg.norm(heard) * np.linalg.norm(spoken) or 1.0)
