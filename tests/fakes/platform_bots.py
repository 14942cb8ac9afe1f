"""Parley running against the loopback platform fakes, started and stopped as `parley run` does.

Shared by the reliability tests and bench/bench_soak.py: settings that point a platform and the
LLM at their fakes (optionally through a `TcpProxy`), and context managers that run `ParleyApp`
with the platform's adapter. Only what lies outside the machine is fake.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.discord.adapter import DiscordAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.app import ParleyApp
from bot.config import Settings
from tests.conftest import make_settings
from tests.fakes.discord_api import API_PREFIX, FakeDiscord, _error
from tests.fakes.llm_server import last_user_text
from tests.fakes.telegram_api import FakeTelegramAPI

TELEGRAM_POLL_S = 1  # short long polls: a stop or a dead connection is noticed within seconds
DISCORD_READY_S = 0.05  # guild_ready_timeout: the fake sends its only GUILD_CREATE after READY
# Budgets far above what a test sends, so the reply streamer never waits on its own buckets;
# a fake's flood control or injected 429s are what a test exercises instead.
FAST_RATE = 1000.0
QUEUE_NOTICE_PREFIX = "⏳"  # "you're #n in line" notices of both adapters


def echoed(question: str) -> str:
    """The reply `echo_reply` gives to `question`."""
    return f"echo {question}"


def echo_reply(body: dict[str, Any]) -> str:
    """The fake LLM's answer: the user's text echoed, so every reply names its question."""
    return echoed(last_user_text(body))


Section = Mapping[str, Any] | None


def _common(
    llm_url: str, engine: Section, llm: Section, stt: Section, http: Section, tts: Section = None
) -> dict[str, Any]:
    """The core sections: the fake LLM, no voice replies unless asked, the small speech models."""
    return {
        "llm": {"base_url": llm_url, "retries": 0, **(llm or {})},
        "engine": {"voice_mode": "off", **(engine or {})},
        # Used only by a bot started with speech=True: the small Whisper model, the offline voice.
        "stt": {"model": "tiny.en", "show_transcript": True, **(stt or {})},
        "tts": {"backends": ["piper"], **(tts or {})},
        "http": {**(http or {})},
    }


def telegram_settings(
    tmp_path: Path,
    api: FakeTelegramAPI,
    llm_url: str,
    *,
    via: str | None = None,
    engine: Section = None,
    llm: Section = None,
    stt: Section = None,
    http: Section = None,
    tts: Section = None,
    **telegram: Any,
) -> Settings:
    """Settings for the Telegram fake; `via` is a proxy's base URL standing in for the fake's."""
    base = via or api.url
    values = {
        "token": api.token,
        "api_base_url": f"{base}/bot",
        "file_base_url": f"{base}/file/bot",
        "private_rate": FAST_RATE,
        "group_rate": FAST_RATE,
        "global_rate": FAST_RATE,
        **telegram,
    }
    sections = _common(llm_url, engine, llm, stt, http, tts)
    return make_settings(tmp_path, **sections, telegram=values)


def discord_settings(
    tmp_path: Path,
    fake: FakeDiscord,
    llm_url: str,
    *,
    via: str | None = None,
    engine: Section = None,
    llm: Section = None,
    stt: Section = None,
    http: Section = None,
    **discord: Any,
) -> Settings:
    """Settings for the Discord fake; `via` is a proxy's base URL standing in for the fake's."""
    base = via or fake.url
    values = {
        "token": fake.token,
        "api_base_url": base + API_PREFIX,
        "gateway_url": base.replace("http://", "ws://") + "/gateway",
        "channel_edits": FAST_RATE,
        "channel_window_s": 1.0,
        "global_rate": FAST_RATE,
        **discord,
    }
    sections = _common(llm_url, engine, llm, stt, http)
    return make_settings(tmp_path, **sections, discord=values)


@dataclass
class RunningTelegram:
    """A started bot: the app (engine, store) and its Telegram adapter."""

    app: ParleyApp
    adapter: TelegramAdapter


@dataclass
class RunningDiscord:
    """A started bot: the app (engine, store) and its Discord adapter."""

    app: ParleyApp
    adapter: DiscordAdapter


@contextlib.asynccontextmanager
async def telegram_bot(
    settings: Settings, *, speech: bool = False
) -> AsyncIterator[RunningTelegram]:
    """ParleyApp + TelegramAdapter (long polling or webhook), running for the block."""
    async with ParleyApp(settings, speech=speech) as app:
        adapter = TelegramAdapter(app.services, poll_timeout_s=TELEGRAM_POLL_S)
        await adapter.start()
        try:
            yield RunningTelegram(app, adapter)
        finally:
            await adapter.stop()


@contextlib.asynccontextmanager
async def discord_bot(
    settings: Settings, *, speech: bool = False, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[RunningDiscord]:
    """ParleyApp + DiscordAdapter (gateway), running for the block; `clock` is the adapter's."""
    async with ParleyApp(settings, speech=speech) as app:
        adapter = DiscordAdapter(app.services, guild_ready_timeout=DISCORD_READY_S, clock=clock)
        await adapter.start()
        try:
            yield RunningDiscord(app, adapter)
        finally:
            await adapter.stop()


class FlakyDiscord(FakeDiscord):
    """The fake Discord, failing a random (seeded) share of message edits (429) and posts (502)."""

    EDIT_PATH = re.compile(r"/channels/\d+/messages/\d+|/webhooks/\d+/[^/]+/messages/[^/]+")
    POST_PATH = re.compile(r"/channels/\d+/messages")

    def __init__(
        self,
        *,
        edit_429_share: float = 0.0,
        post_5xx_share: float = 0.0,
        seed: int = 0,
        retry_after: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.edit_429_share = edit_429_share
        self.post_5xx_share = post_5xx_share
        self.retry_after = retry_after
        self._rng = random.Random(seed)

    def _check_injected(self, method: str, path: str) -> None:
        # The hook FakeDiscord runs before handling each authenticated call.
        if method == "PATCH" and self.EDIT_PATH.fullmatch(path) and self._draw(self.edit_429_share):
            raise self._too_many(self.retry_after, is_global=False)
        if method == "POST" and self.POST_PATH.fullmatch(path) and self._draw(self.post_5xx_share):
            raise _error(502, 0, "Bad Gateway")
        super()._check_injected(method, path)

    def _draw(self, share: float) -> bool:
        return self._rng.random() < share


def telegram_replies(api: FakeTelegramAPI, chat_id: int) -> list[str]:
    """The bot's messages in a chat, oldest first, without "in line" notices."""
    return [
        m.text
        for m in api.bot_messages(chat_id)
        if m.kind == "text" and not m.text.startswith(QUEUE_NOTICE_PREFIX)
    ]


def telegram_shows(chat_id: int, fragment: str) -> Callable[[FakeTelegramAPI], bool]:
    """A `wait_for` predicate: one of the bot's messages in the chat contains `fragment`."""
    return lambda api: any(fragment in m.text for m in api.bot_messages(chat_id))


def discord_replies(fake: FakeDiscord, channel_id: int) -> list[str]:
    """The bot's messages in a channel, oldest first, without "in line" notices."""
    return [
        m.content
        for m in fake.channel_messages(channel_id, by_bot=True)
        if not m.content.startswith(QUEUE_NOTICE_PREFIX)
    ]
