"""Platform faults: 429s on a fifth of the edits, 5xx answers, connections dropped mid-reply.

Whatever the platform does, no final text is lost: every reply ends up shown in full, once and
without the streaming marker, and the bot reconnects by itself (reply order under load is the
subject of tests/test_soak.py). Telegram and Discord are the loopback fakes; a `TcpProxy`
between the bot and a fake cuts connections on demand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.messages import Msg, say
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, snowflake
from tests.fakes.drivers import open_driver
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import HANG_GUARD_S, eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

EDIT_429_SHARE = 0.2
PADDING = " ".join(f"word{i}" for i in range(12))  # streamed a word at a time: several edits
CHATS = 6
MESSAGES_PER_CHAT = 2
POSTS = r"/channels/\d+/messages"  # Discord REST paths
EDITS = r"/channels/\d+/messages/\d+"


def long_echo(body: dict[str, Any]) -> str:
    """A reply long enough to be edited several times while it streams, naming its question."""
    return f"echo {last_user_text(body)}: {PADDING}"


def expected(text: str) -> str:
    return f"echo {text}: {PADDING}"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=long_echo, delay_s=0.01)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- every platform ------------------------------------------------------------------------


async def test_a_fifth_of_edits_rate_limited_loses_no_final_text(
    tmp_path: Path, platform_name: str, fake_llm: FakeLLMServer
) -> None:
    async with open_driver(platform_name, edit_429_share=EDIT_429_SHARE, seed=7) as driver:
        users = [driver.person(f"User{n}") for n in range(CHATS)]
        settings = driver.settings(tmp_path, fake_llm.url, llm={"concurrency": CHATS})
        async with driver.running(settings):
            for i in range(MESSAGES_PER_CHAT):
                for user in users:
                    await driver.say(user, f"m{i}")
            finals = [expected(f"m{i}") for i in range(MESSAGES_PER_CHAT)]
            async with asyncio.timeout(HANG_GUARD_S):
                await driver.until(lambda: all(sorted(driver.replies(u)) == finals for u in users))
    edits, limited = driver.edit_calls()
    assert limited, "no 429 was injected: the test proves nothing"
    assert limited < edits


# -- Telegram ------------------------------------------------------------------------------


async def test_telegram_server_errors_on_sends_are_retried(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(2100, "Ann")
    chat = telegram.private_chat(ann)
    settings = telegram_settings(tmp_path, telegram, fake_llm.url)
    async with telegram_bot(settings):
        telegram.fail("sendMessage", status=502, description="Bad Gateway", times=2)
        telegram.send_text(chat, ann, "first")
        await telegram.wait_for(lambda a: telegram_replies(a, ann["id"]) == [expected("first")])

        fake_llm.behaviour.delay_s = 0.05  # streams long enough to be edited
        telegram.fail("editMessageText", status=500, description="Internal Server Error", times=2)
        telegram.send_text(chat, ann, "second")
        await telegram.wait_for(lambda a: expected("second") in telegram_replies(a, ann["id"]))

        # A notice (here: the LLM is down) and a command reply go out on their own path.
        fake_llm.behaviour.status = 503
        telegram.fail("sendMessage", status=502, description="Bad Gateway", times=1)
        telegram.send_text(chat, ann, "third")
        await telegram.wait_for(lambda a: say(Msg.LLM_DOWN) in telegram_replies(a, ann["id"]))
        telegram.fail("sendMessage", status=503, description="Service Unavailable", times=1)
        telegram.send_text(chat, ann, "/help")
        await telegram.wait_for(lambda a: "/reset" in telegram_replies(a, ann["id"])[-1])
    statuses = sorted(c.error.status for c in telegram.calls if c.error is not None)
    assert statuses == [500, 500, 502, 502, 502, 503]  # every injected failure was met
    assert telegram_replies(telegram, ann["id"])[:3] == [
        expected("first"),
        expected("second"),
        say(Msg.LLM_DOWN),
    ]


async def test_telegram_polling_reconnects_after_the_connection_drops(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(2200, "Ann")
    chat = telegram.private_chat(ann)
    async with TcpProxy(port_of(telegram.url)) as proxy:
        settings = telegram_settings(tmp_path, telegram, fake_llm.url, via=proxy.url)
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
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.05  # about a second of streaming
    ann = telegram.user(2300, "Ann")
    chat = telegram.private_chat(ann)
    async with TcpProxy(port_of(telegram.url)) as proxy:
        settings = telegram_settings(tmp_path, telegram, fake_llm.url, via=proxy.url)
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


async def test_discord_server_errors_on_sends_are_retried(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    zed = dm_user("Zed")
    settings = discord_settings(tmp_path, discord, fake_llm.url)
    async with discord_bot(settings):
        discord.refuse("POST", POSTS, status=502, code=0, message="Bad Gateway", times=2)
        discord.refuse("PATCH", EDITS, status=500, code=0, message="Oops", times=2)
        await discord.post_message(zed, "first", dm=True)
        channel = discord.dm_channel(zed)
        await discord.wait_until(lambda: discord_replies(discord, channel) == [expected("first")])
    assert sorted(c.status for c in discord.calls if c.status >= 500) == [500, 500, 502, 502]


async def test_discord_gateway_reconnects_after_the_connection_drops(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.05  # a reply is streaming while the connection goes
    zed = dm_user("Zed")
    async with TcpProxy(port_of(discord.url)) as proxy:
        settings = discord_settings(tmp_path, discord, fake_llm.url, via=proxy.url)
        async with discord_bot(settings):
            channel = discord.dm_channel(zed)
            first = discord.session
            await discord.post_message(zed, "tell me", dm=True)
            await discord.wait_until(lambda: any(c.method == "PATCH" for c in discord.calls))
            async with proxy.outage():
                await eventually(lambda: proxy.refused > 0 and first.socket.closed)
            await discord.wait_until(lambda: any(s is not first for s in discord.gateway.live))
            await discord.post_message(zed, "still there?", dm=True)
            await discord.wait_until(
                lambda: (
                    sorted(discord_replies(discord, channel))
                    == [expected("still there?"), expected("tell me")]
                )
            )
