"""Shared pieces of the voice-channel tests and benchmark: a real discord.py client on the fake.

`discord_client(fake)` logs an unmodified `discord.Client` in to the fake Discord (REST and
gateway redirected the way the Discord adapter does it) with the intents voice needs;
`voice_call(...)` joins a `VoiceSession` to the fake voice server. `voice_bot(...)` runs the
whole bot instead (ParleyApp with speech + DiscordAdapter), joined through `/join`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import numpy as np

from adapters.discord.compat import redirect_endpoints
from adapters.discord.voice import Utterance, VoiceOptions, VoiceSession
from adapters.discord.voice.channels import VoiceChannels
from adapters.discord.voice.conversation import VoiceConversation
from bot.speech.stt import Transcriber
from tests.fakes import audio_samples
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_voice.media import AES_GCM, XCHACHA, Pcm
from tests.fakes.discord_voice.server import FakeHuman, FakeVoiceServer, Heard
from tests.fakes.discord_world import FakeUser
from tests.fakes.llm_server import FakeLLMServer, last_user_text
from tests.fakes.platform_bots import RunningDiscord, discord_bot, discord_replies, discord_settings

READY_S = 0.05  # guild_ready_timeout: the fake sends its only GUILD_CREATE right after READY
START_TIMEOUT_S = 30.0  # hang guard
TRANSCRIBE_LEAD_IN_S = 0.3
UTTERANCE_TIMEOUT_S = 60.0  # hang guard: speech plus segmentation takes a few seconds


@contextlib.asynccontextmanager
async def discord_client(fake: FakeDiscord) -> AsyncIterator[discord.Client]:
    """A logged-in, ready discord.py client (guilds + voice_states intents) on `fake`."""
    restore_endpoints = redirect_endpoints(fake.api_url, fake.gateway_url)
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
        restore_endpoints()


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


# -- the whole bot in a voice channel: ParleyApp + DiscordAdapter + the fakes ----------------


@dataclass
class VoiceBot:
    """The real bot (app + Discord adapter) on the fakes, with people in the voice channel."""

    fake: FakeDiscord
    voice: FakeVoiceServer
    llm: FakeLLMServer | None  # None: a real LLM server (the benchmark's llama-server)
    running: RunningDiscord
    humans: list[FakeHuman]

    @property
    def voice_channels(self) -> VoiceChannels:
        channels = self.running.adapter.voice
        assert channels is not None, "the adapter has not started"
        return channels

    @property
    def conversation(self) -> VoiceConversation:
        """The bot's conversation in the fake server's voice channel (fails if not in one)."""
        call = self.voice_channels.conversation(self.fake.GUILD_ID)
        assert call is not None, "the bot is not in a voice channel"
        return call

    @property
    def in_voice(self) -> bool:
        return self.voice_channels.conversation(self.fake.GUILD_ID) is not None

    @property
    def transcriber(self) -> Transcriber:
        """The bot's own Whisper (the same model: one per process), to check what it said."""
        transcriber = self.running.app.engine.transcriber
        assert transcriber is not None
        return transcriber

    async def command(self, name: str, user: FakeUser, **options: Any) -> str:
        """`user` runs `/name` in #general; the bot's answer."""
        interaction = await self.fake.interact(name, options, user=user)

        def answer() -> str:
            return "".join(m.content for m in self.fake.reply_messages(interaction))

        await self.fake.wait_until(lambda: bool(answer()))
        return answer()

    async def join(self, user: FakeUser, **options: Any) -> str:
        """`user` runs /join in #general; returns once the bot can be heard end to end."""
        answer = await self.command("join", user, **options)
        if self.in_voice:
            session = self.conversation.session
            await self.voice.wait_for(lambda: session.client.is_connected(), START_TIMEOUT_S)
            if self.humans:
                await session.wait_ready(START_TIMEOUT_S)
            await self.voice.dave_settled()
        return answer

    def requests(self) -> list[str]:
        """What the fake LLM was asked so far (each request's newest user message)."""
        assert self.llm is not None, "a real LLM server keeps no record"
        return [last_user_text(body) for body in self.llm.requests]

    async def asked(self, count: int) -> list[str]:
        """Wait until the LLM was asked `count` times (a hang guard only)."""
        await self.voice.wait_for(lambda: len(self.requests()) >= count, UTTERANCE_TIMEOUT_S)
        return self.requests()

    def channel_text(self) -> list[str]:
        """The bot's messages in #general (the linked text channel), oldest first."""
        return discord_replies(self.fake, self.fake.GENERAL_ID)

    async def heard_answer(self, human: FakeHuman, *, answers: int = 1) -> Heard:
        """Wait until `human` heard the bot finish `answers` answers; what it heard."""

        def done() -> bool:
            call = self.voice_channels.conversation(self.fake.GUILD_ID)
            heard = human.heard.get(self.fake.BOT.id)
            return (
                call is not None
                and call.turns >= answers
                and not call.answering
                and heard is not None
                and heard.silence_frames >= 5
            )

        await self.voice.wait_for(done, UTTERANCE_TIMEOUT_S)
        return human.heard[self.fake.BOT.id]


@contextlib.asynccontextmanager
async def voice_bot(
    tmp_path: Path,
    llm: FakeLLMServer | str,
    *humans: FakeUser,
    join: FakeUser | None = None,
    engine: dict[str, Any] | None = None,
    llm_settings: dict[str, Any] | None = None,
    stt_settings: dict[str, Any] | None = None,
    **discord: Any,
) -> AsyncIterator[VoiceBot]:
    """The bot running on the fakes with `humans` in the voice channel; `join` runs /join.

    `llm`: the fake LLM, or the URL of a real server ("" starts the managed llama-server).
    """
    url = llm if isinstance(llm, str) else llm.url
    fake_llm = None if isinstance(llm, str) else llm
    async with FakeDiscord() as fake, FakeVoiceServer(fake) as voice:
        people = [await voice.join(user) for user in humans]
        settings = discord_settings(
            tmp_path, fake, url, engine=engine, llm=llm_settings, stt=stt_settings, **discord
        )
        async with discord_bot(settings, speech=True) as running:
            bot = VoiceBot(fake, voice, fake_llm, running, people)
            if join is not None:
                answer = await bot.join(join)
                assert bot.in_voice, answer
            yield bot
