"""Secrets stay secret: bot tokens and the LLM API key never reach logs, replies or the database.

A whole conversation runs with logging at DEBUG through `bot.logs.setup_logging`, as `parley run`
sets it up, including a 429, a dead LLM and commands. Then every log line, every request the
platform fake received and the bytes of the SQLite files are searched for each secret.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import load as load_settings
from bot.config import LoggingSettings, Settings
from bot.engine import MSG_LLM_DOWN
from bot.errors import ConfigError
from bot.logs import setup_logging
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, snowflake
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

TELEGRAM_TOKEN = "7312345678:AAF-secret-telegram-token-xyz"
DISCORD_TOKEN = "MTEwMDAw.secret-discord-token.xyz"
API_KEY = "sk-parley-secret-api-key-xyz"
REPLY = "Here is a reply long enough to be streamed in several edits, word by word."
ANN = 4001


def pieces(secret: str) -> list[str]:
    """The secret and its distinctive parts: a leak of half a token is a leak too."""
    parts = [p for p in secret.replace(":", ".").split(".") if len(p) >= 8]
    return [secret, *parts]


def leaks(text: str | bytes, *secrets: str) -> list[str]:
    """Which secrets (or parts of them) occur in `text`."""
    found = []
    for secret in secrets:
        for piece in pieces(secret):
            needle: str | bytes = piece.encode() if isinstance(text, bytes) else piece
            if needle in text:  # type: ignore[operator]
                found.append(piece)
    return found


@contextlib.contextmanager
def debug_logs(settings: Settings) -> Iterator[io.StringIO]:
    """Logging as `parley run` configures it, at DEBUG, written to a buffer for the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "aiosqlite")}
    buffer = io.StringIO()
    setup_logging(LoggingSettings(level="DEBUG"), settings.secrets())
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, value in noisy.items():
            logging.getLogger(name).setLevel(value)


def database_bytes(tmp_path: Path) -> bytes:
    """The SQLite database with its WAL and shared-memory files, as stored on disk."""
    return b"".join(path.read_bytes() for path in sorted(tmp_path.glob("parley.db*")))


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=REPLY, delay_s=0.02)) as server:
        yield server


async def test_telegram_conversation_leaks_no_secret(tmp_path: Path, llm: FakeLLMServer) -> None:
    async with FakeTelegramAPI(token=TELEGRAM_TOKEN) as api:
        settings = telegram_settings(tmp_path, api, llm.url, llm={"api_key": API_KEY})
        ann = api.user(ANN, "Ann")
        chat = api.private_chat(ann)
        with debug_logs(settings) as logs:
            async with telegram_bot(settings):
                api.rate_limit("editMessageText", retry_after=1)
                api.send_text(chat, ann, "hello")
                await api.wait_for(lambda a: telegram_replies(a, ANN) == [REPLY])
                llm.behaviour.status = 503  # the LLM is down: an error path
                api.send_text(chat, ann, "are you there?")
                await api.wait_for(lambda a: MSG_LLM_DOWN in telegram_replies(a, ANN))
                api.send_text(chat, ann, "/config show")
                await api.wait_for(
                    lambda a: "Settings for this chat" in telegram_replies(a, ANN)[-1]
                )
    log_text = logs.getvalue()
    assert "getUpdates" in log_text and "429" in log_text  # DEBUG lines were captured
    assert [line for line in log_text.splitlines() if leaks(line, TELEGRAM_TOKEN, API_KEY)] == []
    sent = [json.dumps(call.params, ensure_ascii=False) for call in api.calls]
    assert [s for s in sent if leaks(s, TELEGRAM_TOKEN, API_KEY)] == []
    assert leaks(database_bytes(tmp_path), TELEGRAM_TOKEN, API_KEY) == []


async def test_discord_conversation_leaks_no_secret(tmp_path: Path, llm: FakeLLMServer) -> None:
    zed = FakeUser(snowflake(), "Zed")
    async with FakeDiscord(token=DISCORD_TOKEN) as fake:
        settings = discord_settings(tmp_path, fake, llm.url, llm={"api_key": API_KEY})
        with debug_logs(settings) as logs:
            async with discord_bot(settings):
                channel = fake.dm_channel(zed)
                fake.rate_limit("PATCH", r"/channels/\d+/messages/\d+")
                await fake.post_message(zed, "hello", dm=True)
                await fake.wait_until(lambda: discord_replies(fake, channel) == [REPLY])
                llm.behaviour.status = 503
                await fake.post_message(zed, "are you there?", dm=True)
                await fake.wait_until(lambda: MSG_LLM_DOWN in discord_replies(fake, channel))
                shown = await fake.interact("config show", user=zed, dm=True)
                await fake.wait_until(lambda: shown.original_id is not None)
    log_text = logs.getvalue()
    assert "MESSAGE_CREATE" in log_text and "429" in log_text  # DEBUG lines were captured
    assert [line for line in log_text.splitlines() if leaks(line, DISCORD_TOKEN, API_KEY)] == []
    sent = [json.dumps(call.body, ensure_ascii=False) for call in fake.calls]
    assert [s for s in sent if leaks(s, DISCORD_TOKEN, API_KEY)] == []
    assert leaks(database_bytes(tmp_path), DISCORD_TOKEN, API_KEY) == []


async def test_refused_telegram_token_is_not_shown(tmp_path: Path, llm: FakeLLMServer) -> None:
    async with FakeTelegramAPI() as api:  # it expects another token: ours gets a 401
        settings = telegram_settings(tmp_path, api, llm.url, token=TELEGRAM_TOKEN)
        with debug_logs(settings) as logs, pytest.raises(ConfigError) as refused:
            async with telegram_bot(settings):
                pass
    assert "telegram.token" in str(refused.value)
    assert leaks(str(refused.value), TELEGRAM_TOKEN) == []
    assert [line for line in logs.getvalue().splitlines() if leaks(line, TELEGRAM_TOKEN)] == []


def test_config_errors_hide_secret_values(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[telegram]\ntoken = "{TELEGRAM_TOKEN}"\nbogus = 1\n'
        f'[llm]\napi_key = {{ key = "{API_KEY}" }}\n'
    )
    with pytest.raises(ConfigError) as invalid:
        load_settings(path)
    assert len(invalid.value.problems) == 2
    assert leaks(str(invalid.value), TELEGRAM_TOKEN, API_KEY) == []


async def echo_key_backend(request: web.Request) -> web.Response:
    """Like some OpenAI-compatible proxies: a 401 that quotes the key it was given."""
    given = request.headers.get("Authorization", "").removeprefix("Bearer ")
    body: dict[str, Any] = {"error": {"message": f"Incorrect API key provided: {given}"}}
    return web.json_response(body, status=401)


async def test_a_backend_error_quoting_the_api_key_is_not_repeated(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo_key_backend)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with FakeTelegramAPI(token=TELEGRAM_TOKEN) as api:
            settings = telegram_settings(tmp_path, api, backend, llm={"api_key": API_KEY})
            ann = api.user(ANN, "Ann")
            with debug_logs(settings) as logs:
                async with telegram_bot(settings):
                    api.send_text(api.private_chat(ann), ann, "hello")
                    await api.wait_for(lambda a: telegram_replies(a, ANN))
    finally:
        await runner.cleanup()
    assert "refused" in telegram_replies(api, ANN)[0]  # the user hears what went wrong...
    assert leaks(" ".join(telegram_replies(api, ANN)), API_KEY) == []  # ...but not the key
    assert [line for line in logs.getvalue().splitlines() if leaks(line, API_KEY)] == []
