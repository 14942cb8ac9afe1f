"""Platform faults: 429s on a fifth of the edits, 5xx answers, connections dropped mid-reply.

Whatever the platform does, no final text is lost: every reply ends up shown in full, once and
without the streaming marker, and the bot reconnects by itself (reply order under load is the
subject of tests/test_soak.py). Telegram and Discord are the loopback fakes; a `TcpProxy`
between the bot and a fake cuts connections on demand.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.engine import MSG_LLM_DOWN
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, snowflake
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    FlakyDiscord,
    discord_bot,
    discord_replies,
    discord_settings,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram_api import FakeTelegramAPI

EDIT_429_SHARE = 0.2
PADDING = " ".join(f"word{i}" for i in range(12))  # streamed a word at a time: several edits
CHATS = 6
MESSAGES_PER_CHAT = 2
HANG_GUARD_S = 60.0  # a stuck bot fails the test instead of hanging it; not a speed target
POSTS = r"/channels/\d+/messages"  # Discord REST paths
EDITS = r"/channels/\d+/messages/\d+"


def long_echo(body: dict[str, Any]) -> str:
    """A reply long enough to be edited several times while it streams, naming its question."""
    return f"echo {last_user_text(body)}: {PADDING}"


def expected(text: str) -> str:
    return f"echo {text}: {PADDING}"


async def eventually(predicate: Callable[[], object], *, limit_s: float = HANG_GUARD_S) -> None:
    """Wait until `predicate()` holds, checking every few milliseconds (a hang guard, no timing)."""
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=long_echo, delay_s=0.01)) as server:
        yield server


# -- Telegram ------------------------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as api:
        yield api


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_telegram_a_fifth_of_edits_rate_limited_loses_no_final_text(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    rng = random.Random(7)
    telegram.fail(
        "editMessageText",
        status=429,
        description="Too Many Requests: retry after 1",
        retry_after=1,
        times=10**6,
        when=lambda _: rng.random() < EDIT_429_SHARE,
    )
    users = [telegram.user(2000 + n, f"User{n}") for n in range(CHATS)]
    settings = telegram_settings(tmp_path, telegram, llm.url, llm={"concurrency": CHATS})
    async with telegram_bot(settings):
        for i in range(MESSAGES_PER_CHAT):
            for user in users:
                telegram.send_text(telegram.private_chat(user), user, f"m{i}")
        finals = [expected(f"m{i}") for i in range(MESSAGES_PER_CHAT)]
        async with asyncio.timeout(HANG_GUARD_S):
            await telegram.until(
                lambda a: all(sorted(telegram_replies(a, u["id"])) == finals for u in users)
            )
    edits = telegram.calls_to("editMessageText")
    limited = [c for c in edits if c.error is not None and c.error.status == 429]
    assert limited, "no 429 was injected: the test proves nothing"
    assert len(limited) < len(edits)


async def test_telegram_server_errors_on_sends_are_retried(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann = telegram.user(2100, "Ann")
    chat = telegram.private_chat(ann)
    settings = telegram_settings(tmp_path, telegram, llm.url)
    async with telegram_bot(settings):
        telegram.fail("sendMessage", status=502, description="Bad Gateway", times=2)
        telegram.send_text(chat, ann, "first")
        await telegram.wait_for(lambda a: telegram_replies(a, ann["id"]) == [expected("first")])

        llm.behaviour.delay_s = 0.05  # streams long enough to be edited
        telegram.fail("editMessageText", status=500, description="Internal Server Error", times=2)
        telegram.send_text(chat, ann, "second")
        await telegram.wait_for(lambda a: expected("second") in telegram_replies(a, ann["id"]))

        # A notice (here: the LLM is down) and a command reply go out on their own path.
        llm.behaviour.status = 503
        telegram.fail("sendMessage", status=502, description="Bad Gateway", times=1)
        telegram.send_text(chat, ann, "third")
        await telegram.wait_for(lambda a: MSG_LLM_DOWN in telegram_replies(a, ann["id"]))
        telegram.fail("sendMessage", status=503, description="Service Unavailable", times=1)
        telegram.send_text(chat, ann, "/help")
        await telegram.wait_for(lambda a: "/reset" in telegram_replies(a, ann["id"])[-1])
    statuses = sorted(c.error.status for c in telegram.calls if c.error is not None)
    assert statuses == [500, 500, 502, 502, 502, 503]  # every injected failure was met
    assert telegram_replies(telegram, ann["id"])[:3] == [
        expected("first"),
        expected("second"),
        MSG_LLM_DOWN,
    ]


async def test_telegram_polling_reconnects_after_the_connection_drops(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann = telegram.user(2200, "Ann")
    chat = telegram.private_chat(ann)
    async with TcpProxy(port_of(telegram.url)) as proxy:
        settings = telegram_settings(tmp_path, telegram, llm.url, via=proxy.url)
        async with telegram_bot(settings):
            await eventually(lambda: telegram.polls > 0)
            polls = telegram.polls
            async with proxy.outage():  # the long poll is cut and reconnecting fails for a while
                await eventually(lambda: proxy.refused > 0)
            telegram.send_text(chat, ann, "still there?")
            await telegram.wait_for(
                lambda a: telegram_replies(a, ann["id"]) == [expected("still there?")]
            )
    assert telegram.polls > polls


async def test_telegram_outage_mid_reply_still_lands_the_final_text(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.05  # about a second of streaming
    ann = telegram.user(2300, "Ann")
    chat = telegram.private_chat(ann)
    async with TcpProxy(port_of(telegram.url)) as proxy:
        settings = telegram_settings(tmp_path, telegram, llm.url, via=proxy.url)
        async with telegram_bot(settings):
            telegram.send_text(chat, ann, "tell me")
            # Once an edit went through, the bot knows its message: a lost answer to any later
            # call is safe to retry.
            await telegram.wait_for(lambda a: a.calls_to("editMessageText", ok=True))
            async with proxy.outage():
                await eventually(lambda: proxy.refused >= 2)
            await telegram.wait_for(
                lambda a: telegram_replies(a, ann["id"]) == [expected("tell me")]
            )


# -- Discord -------------------------------------------------------------------------------


def dm_user(name: str) -> FakeUser:
    return FakeUser(snowflake(), name)


async def test_discord_a_fifth_of_edits_rate_limited_loses_no_final_text(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    users = [dm_user(f"User{n}") for n in range(CHATS)]
    async with FlakyDiscord(edit_429_share=EDIT_429_SHARE, seed=7) as fake:
        settings = discord_settings(tmp_path, fake, llm.url, llm={"concurrency": CHATS})
        async with discord_bot(settings):
            for i in range(MESSAGES_PER_CHAT):
                for user in users:
                    await fake.post_message(user, f"m{i}", dm=True)
            finals = [expected(f"m{i}") for i in range(MESSAGES_PER_CHAT)]
            channels = [fake.dm_channel(u) for u in users]
            async with asyncio.timeout(HANG_GUARD_S):
                await fake.wait_until(
                    lambda: all(sorted(discord_replies(fake, c)) == finals for c in channels)
                )
    edits = [c for c in fake.calls if c.method == "PATCH"]
    assert fake.rate_limited, "no 429 was injected: the test proves nothing"
    assert len(fake.rate_limited) < len(edits)


async def test_discord_server_errors_on_sends_are_retried(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    zed = dm_user("Zed")
    async with FakeDiscord() as fake:
        settings = discord_settings(tmp_path, fake, llm.url)
        async with discord_bot(settings):
            fake.refuse("POST", POSTS, status=502, code=0, message="Bad Gateway", times=2)
            fake.refuse("PATCH", EDITS, status=500, code=0, message="Oops", times=2)
            await fake.post_message(zed, "first", dm=True)
            channel = fake.dm_channel(zed)
            await fake.wait_until(lambda: discord_replies(fake, channel) == [expected("first")])
    assert sorted(c.status for c in fake.calls if c.status >= 500) == [500, 500, 502, 502]


async def test_discord_gateway_reconnects_after_the_connection_drops(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.05  # a reply is streaming while the connection goes
    zed = dm_user("Zed")
    async with FakeDiscord() as fake, TcpProxy(port_of(fake.url)) as proxy:
        settings = discord_settings(tmp_path, fake, llm.url, via=proxy.url)
        async with discord_bot(settings):
            channel = fake.dm_channel(zed)
            first = fake.session
            await fake.post_message(zed, "tell me", dm=True)
            await fake.wait_until(lambda: any(c.method == "PATCH" for c in fake.calls))
            async with proxy.outage():
                await eventually(lambda: proxy.refused > 0 and first.socket.closed)
            await fake.wait_until(lambda: any(s is not first for s in fake.gateway.live))
            await fake.post_message(zed, "still there?", dm=True)
            await fake.wait_until(
                lambda: (
                    sorted(discord_replies(fake, channel))
                    == [expected("still there?"), expected("tell me")]
                )
            )
