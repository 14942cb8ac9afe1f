"""/metrics: every Parley metric is exposed, and the counters move during a real conversation.

The conversation runs through the real Telegram adapter, engine and storage; only Telegram
(tests/fakes/telegram_api.py) and the LLM server (tests/fakes/llm_server.py) are faked. The
registry is process-wide, so the tests compare values before and after.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.telegram.adapter import TelegramAdapter
from bot.app import ParleyApp
from bot.config import Settings
from bot.health import HealthChecks
from bot.http_server import OpsServer
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import telegram_bot, telegram_settings, telegram_shows
from tests.fakes.telegram_api import FakeTelegramAPI

ANN = 1001
REPLY = "Nice to meet you, Ann. How can I help today?"
METRICS = (
    "parley_messages_in_total",
    "parley_replies_total",
    "parley_tokens_out_total",
    "parley_time_to_first_token_seconds",
    "parley_platform_calls_total",
    "parley_rate_limited_total",
    "parley_stt_seconds",
    "parley_tts_seconds",
    "parley_queue_depth",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def llm_behaviour() -> Behaviour:
    # A dozen chunks over about half a second: the reply is streamed by several edits.
    return Behaviour(reply=REPLY, delay_s=0.05)


def bot_settings(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer, **llm_extra: Any
) -> Settings:
    http = {"enabled": True, "port": 0}
    return telegram_settings(tmp_path, telegram, fake_llm.url, llm=llm_extra, http=http)


@contextlib.asynccontextmanager
async def running_bot(settings: Settings) -> AsyncIterator[tuple[ParleyApp, TelegramAdapter, str]]:
    """The bot on the Telegram fake and its HTTP endpoint, as `parley run` starts them.

    `adapter.stop()` waits for the replies in progress: after it, every counter has moved.
    """
    async with telegram_bot(settings) as bot:
        server = OpsServer(settings.http, bot.app.health_checks())
        await server.start()
        try:
            yield bot.app, bot.adapter, server.url
        finally:
            await server.stop()


async def scrape(base_url: str, accept: str = "") -> tuple[str, str]:
    """The /metrics body and its content type."""
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.text(), resp.headers["Content-Type"]


async def samples(base_url: str) -> Samples:
    text, _ = await scrape(base_url)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(snapshot: Samples, name: str, **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_exposes_every_parley_metric() -> None:
    server = OpsServer(Settings().http.model_copy(update={"port": 0}), HealthChecks())
    await server.start()
    try:
        text, content_type = await scrape(server.url)
        openmetrics, om_type = await scrape(server.url, "application/openmetrics-text")
    finally:
        await server.stop()
    assert content_type.startswith("text/plain")
    for name in METRICS:
        base = name.removesuffix("_total")
        assert f"# TYPE {base} " in text or f"# TYPE {name} " in text, name
    # Prometheus asks for OpenMetrics, and gets it.
    assert om_type.startswith("application/openmetrics-text")
    assert openmetrics.rstrip().endswith("# EOF")


async def test_counters_move_during_a_telegram_conversation(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    async with running_bot(bot_settings(tmp_path, telegram, fake_llm)) as (_, adapter, url):
        before = await samples(url)
        telegram.send_text(telegram.private_chat(ann), ann, "Hi, I'm Ann")
        await telegram.wait_for(telegram_shows(ANN, REPLY))
        await adapter.stop()
        after = await samples(url)

    def moved(name: str, **labels: str) -> float:
        return change(before, after, name, **labels)

    assert moved("parley_messages_in_total", platform="telegram", kind="text") == 1
    assert moved("parley_replies_total", platform="telegram", status="complete") == 1
    assert moved("parley_time_to_first_token_seconds_count") == 1
    # One streamed piece per chunk the fake sent: one word each.
    assert moved("parley_tokens_out_total") == len(REPLY.split())
    # The reply went out as one sendMessage and then edits, as the fake saw them.
    assert moved("parley_platform_calls_total", platform="telegram", method="send") == 1
    edits = moved("parley_platform_calls_total", platform="telegram", method="edit")
    finals = moved("parley_platform_calls_total", platform="telegram", method="finalize")
    assert edits >= 1
    assert edits + finals == len(telegram.calls_to("editMessageText"))
    assert moved("parley_rate_limited_total", platform="telegram") == 0


async def test_a_telegram_429_is_counted(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    telegram.rate_limit("editMessageText", retry_after=1)
    async with running_bot(bot_settings(tmp_path, telegram, fake_llm)) as (_, adapter, url):
        before = await samples(url)
        telegram.send_text(telegram.private_chat(ann), ann, "Hi, I'm Ann")
        await telegram.wait_for(telegram_shows(ANN, REPLY))
        await adapter.stop()
        after = await samples(url)
    assert [c.error.status for c in telegram.calls_to("editMessageText") if c.error] == [429]
    assert change(before, after, "parley_rate_limited_total", platform="telegram") == 1


async def test_queue_depth_counts_replies_waiting_for_a_slot(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    settings = bot_settings(tmp_path, telegram, fake_llm, concurrency=1)
    async with running_bot(settings) as (app, _, url):
        assert value(await samples(url), "parley_queue_depth") == 0

        async def ignore_position(position: int) -> None:
            return None

        # Another chat's reply holds the only LLM slot, so Ann's message has to wait.
        async with app.engine.queue.turn("test:other", ignore_position):
            telegram.send_text(telegram.private_chat(ann), ann, "Hi, I'm Ann")
            await telegram.wait_for(telegram_shows(ANN, "in line"))
            assert value(await samples(url), "parley_queue_depth") == 1
        await telegram.wait_for(telegram_shows(ANN, REPLY))
        assert value(await samples(url), "parley_queue_depth") == 0
