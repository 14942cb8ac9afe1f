"""Secrets stay secret: bot tokens and the LLM API key never reach logs, replies or the database.

A whole conversation runs with logging at DEBUG through `bot.logs.setup_logging`, as `parley run`
sets it up, including a 429, a dead LLM and commands. Then every log line, every request the
platform fake received and the bytes of the SQLite files are searched for each secret.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import load as load_settings
from bot.config import LoggingSettings, Settings
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.messages import Msg, say
from tests.fakes.drivers import open_driver
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import telegram_bot, telegram_settings
from tests.fakes.telegram_api import FakeTelegramAPI

TELEGRAM_TOKEN = "7312345678:AAF-secret-telegram-token-xyz"
DISCORD_TOKEN = "MTEwMDAw.secret-discord-token.xyz"
API_KEY = "sk-parley-secret-api-key-xyz"
TOKENS = {"telegram": TELEGRAM_TOKEN, "discord": DISCORD_TOKEN}  # each bot's token
REPLY = "Here is a reply long enough to be streamed in several edits, word by word."


def pieces(secret: str) -> list[str]:
    """The secret and its distinctive parts: a leak of half a token is a leak too."""
    parts = [p for p in secret.replace(":", ".").split(".") if len(p) >= 8]
    return [secret, *parts]


def leaks(text: str | bytes, *secrets: str) -> list[str]:
    """Which secrets (or parts of them) occur in `text`."""
    found = []
    for secret in secrets:
        for piece in pieces(secret):
            if piece.encode() in text if isinstance(text, bytes) else piece in text:
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
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=REPLY, delay_s=0.02)


async def test_a_conversation_leaks_no_secret(
    tmp_path: Path, platform_name: str, fake_llm: FakeLLMServer
) -> None:
    async with open_driver(platform_name, token=TOKENS[platform_name]) as driver:
        settings = driver.settings(tmp_path, fake_llm.url, llm={"api_key": API_KEY})
        ann = driver.person("Ann")
        with debug_logs(settings) as logs:
            async with driver.running(settings):
                driver.rate_limit_next_edit()
                await driver.say(ann, "hello")
                await driver.wait_until(lambda: driver.replies(ann) == [REPLY])
                fake_llm.behaviour.status = 503  # the LLM is down: an error path
                await driver.say(ann, "are you there?")
                await driver.wait_until(lambda: say(Msg.LLM_DOWN) in driver.replies(ann))
                shown = await driver.command(ann, "config show")
    assert "Settings for this chat" in shown
    log_text = logs.getvalue()
    # DEBUG lines were captured, the 429 among them.
    assert driver.debug_log_marker in log_text and "429" in log_text
    secrets = (*TOKENS.values(), API_KEY)
    assert [line for line in log_text.splitlines() if leaks(line, *secrets)] == []
    assert [s for s in driver.sent_payloads() if leaks(s, *secrets)] == []
    assert leaks(database_bytes(tmp_path), *secrets) == []


async def test_refused_telegram_token_is_not_shown(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    # The fake expects another token: ours gets a 401.
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, token=TELEGRAM_TOKEN)
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


async def test_a_backend_error_quoting_the_api_key_is_not_repeated(
    tmp_path: Path, platform_name: str
) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo_key_backend)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with open_driver(platform_name, token=TOKENS[platform_name]) as driver:
            settings = driver.settings(tmp_path, backend, llm={"api_key": API_KEY})
            ann = driver.person("Ann")
            with debug_logs(settings) as logs:
                async with driver.running(settings):
                    await driver.say(ann, "hello")
                    await driver.wait_until(lambda: driver.replies(ann))
    finally:
        await runner.cleanup()
    assert "refused" in driver.replies(ann)[0]  # the user hears what went wrong...
    assert leaks(" ".join(driver.replies(ann)), API_KEY) == []  # ...but not the key
    assert [line for line in logs.getvalue().splitlines() if leaks(line, API_KEY)] == []
