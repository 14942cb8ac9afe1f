"""Every platform call under the bot's budgets, end to end through the real adapters.

The fakes enforce the platforms' limits (Telegram: 3 + 1/s per chat and 30/s overall, every
method counted; Discord: 5 per 5 s per channel and 50/s overall, typing included) and answer
429 past them. The LLM is an external llama.cpp server advertising 64 slots at /props, with no
llm.concurrency set: the bot takes its concurrency from there, so 50 conversations stream at
once and the platform budgets are what holds them. They must draw no 429, and every reply must
land whole; a queue notice refused with a 429 comes again after the pause; a typing call,
even one refused for an hour, never holds back a reply's text; a chat has one queue notice
however many of its messages wait. How fast all this is (first and final text, updates per
second, as ratios of what the budgets allow) is measured in bench/bench_load.py, not here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.discord.config import DiscordSettings
from adapters.telegram.config import TelegramSettings
from bot.config import Settings
from tests.fakes.chat_load import DiscordLoad, TelegramLoad
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    QUEUE_NOTICE_PREFIX,
    RunningDiscord,
    RunningTelegram,
    discord_bot,
    discord_replies,
    discord_settings,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI, FloodControl

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

CHATS = 50
EXTERNAL_SLOTS = 64  # what the external server advertises: more than the 50 chats
DEFAULT_CONCURRENCY = 2  # the old fixed default: 50 chats took 181 s behind it
AN_HOUR = 3600  # a typing refusal's retry_after: no reply could wait that out within a test
WORDS = 30  # a reply streams for ~1 s: a few edits each
ROUND_DEADLINE_S = 120.0  # a hang guard; the round takes seconds
ANN = 7001
BOB = 7002


def padded(question: str) -> str:
    return f"echo {question}: " + " ".join(f"w{i}" for i in range(WORDS))


def padded_reply(body: dict[str, Any]) -> str:
    return padded(last_user_text(body))


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=padded_reply, delay_s=0.03)


@pytest.fixture
async def external_llm(llm_behaviour: Behaviour) -> AsyncIterator[FakeLLMServer]:
    """An external llama.cpp server (not started by Parley) advertising 64 slots at /props."""
    async with FakeLLMServer(behaviour=llm_behaviour, slots=EXTERNAL_SLOTS) as server:
        yield server


def telegram_at_its_limits(tmp_path: Path, api: FakeTelegramAPI, llm_url: str) -> Settings:
    """Parley's own Telegram budgets (the defaults, not the tests' fast ones), no concurrency."""
    tg = TelegramSettings()
    return telegram_settings(
        tmp_path,
        api,
        llm_url,
        private_rate=tg.private_rate,
        group_rate=tg.group_rate,
        global_rate=tg.global_rate,
    )


@pytest.fixture
async def flooded_telegram() -> AsyncIterator[FakeTelegramAPI]:
    """The Bot API fake with flood control on every method."""
    async with FakeTelegramAPI(flood=FloodControl(every_method=True)) as api:
        yield api


def assert_used_the_advertised_slots(
    bot: RunningTelegram | RunningDiscord, llm: FakeLLMServer
) -> None:
    assert bot.app.settings.llm.concurrency == 0  # not set: asked of the server
    assert bot.app.engine.queue.slots == EXTERNAL_SLOTS
    # The replies overlapped at the server, past the old default: the platforms' budgets, not
    # the LLM's concurrency, are what paced this round.
    assert llm.max_in_flight > DEFAULT_CONCURRENCY


async def test_50_telegram_chats_at_once_draw_no_429_and_every_reply_lands(
    tmp_path: Path, flooded_telegram: FakeTelegramAPI, external_llm: FakeLLMServer
) -> None:
    api = flooded_telegram
    async with telegram_bot(telegram_at_its_limits(tmp_path, api, external_llm.url)) as bot:
        load = TelegramLoad(api, chats=CHATS, expect=padded)
        result = await load.round(1, deadline_s=ROUND_DEADLINE_S)
        assert_used_the_advertised_slots(bot, external_llm)
    assert result.problems == []
    assert (result.answered, result.lost, result.duplicated) == (CHATS, 0, 0)
    assert result.rate_limited == 0  # of any method: messages, edits, typing
    # Typing is only offered: in a burst it shows when a token is spare, so how often it
    # shows depends on the machine's pace; whatever showed was within the budget (above).
    assert all(c.error is None for c in api.calls_to("sendChatAction"))
    assert not [c for c in api.calls if c.error is not None and c.error.status == 429]


async def test_50_discord_channels_at_once_draw_no_429_and_every_reply_lands(
    tmp_path: Path, external_llm: FakeLLMServer
) -> None:
    defaults = DiscordSettings()
    async with FakeDiscord(channel_write_limit=(5, 5.0), global_limit=(50, 1.0)) as fake:
        settings = discord_settings(
            tmp_path,
            fake,
            external_llm.url,
            channel_edits=defaults.channel_edits,
            channel_window_s=defaults.channel_window_s,
            global_rate=defaults.global_rate,
        )
        async with discord_bot(settings) as bot:
            load = DiscordLoad(fake, chats=CHATS, expect=padded)
            result = await load.round(1, deadline_s=ROUND_DEADLINE_S)
            assert_used_the_advertised_slots(bot, external_llm)
        typing = fake.calls_to("POST", r"/channels/\d+/typing")
    assert result.problems == []
    assert (result.answered, result.lost, result.duplicated) == (CHATS, 0, 0)
    assert result.rate_limited == 0
    assert fake.rate_limited == []  # typing counts against the global limit in the fake too
    assert all(c.status == 204 for c in typing)  # offered only: shown when a token is spare


async def test_a_telegram_typing_call_refused_for_an_hour_never_holds_back_the_reply(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    # The first token comes late, so the engine asks for typing (again) before any text.
    fake_llm.behaviour.first_delay_s = 0.3
    ann = telegram.user(ANN, "Ann")
    telegram.rate_limit("sendChatAction", retry_after=AN_HOUR, times=1000)
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(telegram.private_chat(ann), ann, "hello")
        await telegram.wait_for(lambda api: telegram_replies(api, ANN) == [padded("hello")])
    typing = telegram.calls_to("sendChatAction")
    assert typing and all(c.error is not None and c.error.status == 429 for c in typing)
    # The reply's first message went after the refusal: an indicator's pause is none of the
    # text's (waiting it out would have taken the hour, far past the wait's guard).
    first_text = telegram.calls_to("sendMessage", ok=True)[0]
    assert telegram.calls.index(typing[0]) < telegram.calls.index(first_text)
    assert not telegram.calls_to("sendMessage", ok=False)


async def test_a_discord_typing_call_refused_for_an_hour_never_holds_back_the_reply(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.first_delay_s = 0.3
    settings = discord_settings(tmp_path, discord, fake_llm.url)
    async with discord_bot(settings):
        user = FakeUser(1_500_000_000_000_000_002, "Ann")
        channel = discord.dm_channel(user)
        discord.rate_limit("POST", rf"/channels/{channel}/typing", times=1000, retry_after=AN_HOUR)
        await discord.post_message(user, "hello", dm=True)
        await discord.wait_until(lambda: discord_replies(discord, channel) == [padded("hello")])
    typing = discord.calls_to("POST", rf"/channels/{channel}/typing")
    posts = discord.calls_to("POST", rf"/channels/{channel}/messages")
    assert typing and all(c.status == 429 for c in typing)
    assert posts and all(c.status == 200 for c in posts)
    assert discord.calls.index(typing[0]) < discord.calls.index(posts[0])


def _is_queue_notice(params: dict[str, Any]) -> bool:
    return str(params.get("text", "")).startswith(QUEUE_NOTICE_PREFIX)


def _shows_queue_notice(chat_id: int) -> Callable[[FakeTelegramAPI], bool]:
    return lambda api: any(
        m.text.startswith(QUEUE_NOTICE_PREFIX) for m in api.bot_messages(chat_id)
    )


async def ignore_position(position: int) -> None:
    return None


async def test_a_telegram_queue_notice_refused_with_429_comes_after_the_pause(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    telegram.fail(
        "sendMessage",
        status=429,
        description="Too Many Requests: retry after 1",
        retry_after=1,
        when=_is_queue_notice,
    )
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, llm={"concurrency": 1})
    async with telegram_bot(settings) as bot:
        # Another chat's reply holds the only LLM slot until the notice has been shown.
        async with bot.app.engine.queue.turn("test:other", ignore_position):
            telegram.send_text(telegram.private_chat(ann), ann, "first")
            await telegram.wait_for(_shows_queue_notice(ANN))
        await telegram.wait_for(lambda api: telegram_replies(api, ANN) == [padded("first")])
        await telegram.wait_for(lambda api: not _shows_queue_notice(ANN)(api))
    notices = [c for c in telegram.calls_to("sendMessage") if _is_queue_notice(c.params)]
    assert [(c.ok, c.error.status if c.error else 200) for c in notices] == [
        (False, 429),
        (True, 200),
    ]


async def test_a_discord_queue_notice_refused_with_429_comes_after_the_pause(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url, llm={"concurrency": 1})
    async with discord_bot(settings) as bot:
        user = FakeUser(1_500_000_000_000_000_001, "Ann")
        channel = discord.dm_channel(user)
        discord.rate_limit("POST", rf"/channels/{channel}/messages", retry_after=0.5)
        async with bot.app.engine.queue.turn("test:other", ignore_position):
            await discord.post_message(user, "first", dm=True)
            await discord.wait_until(
                lambda: any(
                    m.content.startswith(QUEUE_NOTICE_PREFIX)
                    for m in discord.channel_messages(channel, by_bot=True)
                )
            )
        await discord.wait_until(lambda: discord_replies(discord, channel) == [padded("first")])
    posts = discord.calls_to("POST", rf"/channels/{channel}/messages")
    assert [c.status for c in posts[:2]] == [429, 200]
    assert str(posts[1].body["content"]).startswith(QUEUE_NOTICE_PREFIX)
    notices = [m for m in discord.messages.values() if m.content.startswith(QUEUE_NOTICE_PREFIX)]
    assert notices and all(m.deleted for m in notices)  # gone once the reply came


async def test_a_chat_has_one_queue_notice_however_many_of_its_messages_wait(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    bob = telegram.user(BOB, "Bob")
    chat = telegram.private_chat(bob)
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, llm={"concurrency": 1})
    questions = ["one", "two", "three"]
    async with telegram_bot(settings) as bot:
        async with bot.app.engine.queue.turn("test:other", ignore_position):
            for question in questions:
                telegram.send_text(chat, bob, question)
            await telegram.wait_for(
                lambda api: any("3 messages waiting" in m.text for m in api.bot_messages(BOB))
            )
        expected = [padded(q) for q in questions]
        await telegram.wait_for(lambda api: telegram_replies(api, BOB) == expected)
        await telegram.wait_for(lambda api: not _shows_queue_notice(BOB)(api))
    posted = [c for c in telegram.calls_to("sendMessage") if _is_queue_notice(c.params)]
    assert len(posted) == 1  # one message for the chat, edited as more came to wait
    edits = [c for c in telegram.calls_to("editMessageText") if _is_queue_notice(c.params)]
    assert len({c.params["message_id"] for c in edits}) <= 1
