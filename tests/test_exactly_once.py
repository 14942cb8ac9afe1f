"""A real `python -m bot run` killed with SIGKILL mid-reply, restarted, and sent updates again.

Before: the reply's platform message showed the streaming marker for ever (its id was not kept),
and a Telegram update whose confirmation died with the process was answered a second time, with
a second LLM request. Now every reply part's message id is recorded as the platform returns it;
at start the adapter finishes each interrupted reply (the marker gone, the saved text kept, a
note), and a platform update stored once is confirmed and not answered again, also when Discord
replays a MESSAGE_CREATE after a reconnect. The platforms and the LLM are the loopback fakes;
the store is the run's (a SQLite file, or PostgreSQL in the PostgreSQL pass).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.delivery.stream import DEFAULT_MARKER
from bot.messages import Msg, say
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import BotProcess, parley_env, until
from tests.fakes.platform_bots import FAST_RATE, QUEUE_NOTICE_PREFIX
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform

NOTE = say(Msg.REPLY_INTERRUPTED)
MARKER = DEFAULT_MARKER.strip()
SLOWLY = "slowly"  # a question with this word is answered word by word, slowly enough to kill
WORDS = 60
WORD_DELAY_S = 0.2  # the reply's text is saved every 2 s: a few saves before the kill


def reply_to(body: dict[str, Any]) -> str:
    question = last_user_text(body)
    if SLOWLY in question:
        return " ".join(f"w{i}" for i in range(WORDS))
    return f"echo {question}"


def run_env(tmp_path: Path, llm: FakeLLMServer, **platform: str) -> dict[str, str]:
    """The bot's environment: the run's store, the fake LLM, small speech models, `platform`."""
    url = os.environ.get("PARLEY_STORAGE__URL")  # the PostgreSQL pass gives each test a database
    storage = (
        {"PARLEY_STORAGE__URL": url} if url else {"PARLEY_STORAGE__PATH": str(tmp_path / "p.db")}
    )
    return parley_env(
        **storage,
        PARLEY_LLM__BASE_URL=llm.url,
        PARLEY_LLM__RETRIES="0",
        PARLEY_ENGINE__VOICE_MODE="off",
        PARLEY_STT__MODEL="tiny.en",
        PARLEY_TTS__BACKENDS='["espeak"]',
        NO_PROXY="127.0.0.1,localhost",
        **platform,
    )


async def replies(env: dict[str, str]) -> list[tuple[str, str]]:
    """Every reply row of the store: (status, content), in order."""
    sql = "SELECT status, content FROM messages WHERE role = 'assistant' ORDER BY id"
    url = env.get("PARLEY_STORAGE__URL")
    if url:
        conn = await asyncpg.connect(url)
        try:
            return [(r["status"], r["content"]) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    path = env["PARLEY_STORAGE__PATH"]
    if not Path(path).exists():
        return []

    def read() -> list[tuple[str, str]]:
        with sqlite3.connect(path) as db:
            return [(str(status), str(content)) for status, content in db.execute(sql)]

    return await asyncio.to_thread(read)


async def killed_mid_reply(bot: BotProcess, env: dict[str, str], shows: Any) -> None:
    """Wait until the reply streams with its marker and some of its text is saved; SIGKILL."""

    async def cut_short() -> bool:
        rows = await replies(env)
        saved = bool(rows) and rows[-1][0] == "streaming" and rows[-1][1] != ""
        return saved and shows()

    await until(cut_short, "a reply streaming with its text saved")
    bot.kill()
    assert bot.proc is not None
    assert await bot.proc.wait() == -signal.SIGKILL


async def restart_finishes_the_reply(
    bot: BotProcess, env: dict[str, str], shown: Callable[[], list[str]], platform: str
) -> str:
    """Start the killed bot again and wait until it has finished the reply the kill cut: the saved
    text and the note shown, no marker. Returns the saved text."""
    restarted = time.monotonic()
    await bot.start()
    await until(bot.running, "the bot restarted")
    running = time.monotonic()

    async def finished() -> bool:
        return any(NOTE in text for text in shown())

    await until(finished, "the interrupted reply finished")
    print(
        f"{platform}: finished {time.monotonic() - restarted:.2f} s after the restart, "
        f"{time.monotonic() - running:.2f} s after it was running"
    )
    [(status, saved)] = await replies(env)
    assert status == "interrupted" and saved.startswith("w0 w1")
    saved = saved.rstrip()
    assert shown() == [f"{saved}\n\n{NOTE}"]
    return saved


async def test_telegram_reply_cut_by_sigkill_is_finished_and_a_redelivery_not_answered(
    tmp_path: Path,
) -> None:
    behaviour = Behaviour(reply=reply_to, delay_s=WORD_DELAY_S)
    async with FakeTelegramAPI() as api, FakeLLMServer(behaviour=behaviour) as llm:
        env = run_env(
            tmp_path,
            llm,
            PARLEY_TELEGRAM__TOKEN=api.token,
            PARLEY_TELEGRAM__API_BASE_URL=api.api_base_url,
            PARLEY_TELEGRAM__FILE_BASE_URL=api.file_base_url,
            PARLEY_TELEGRAM__PRIVATE_RATE=str(FAST_RATE),
            PARLEY_TELEGRAM__GLOBAL_RATE=str(FAST_RATE),
        )
        bot = BotProcess(env, tmp_path / "bot.log", ready="Parley is running on telegram")
        ann = api.user(4100, "Ann")
        chat = api.private_chat(ann)

        def shown() -> list[str]:
            return [
                m.text
                for m in api.bot_messages(chat["id"])
                if m.kind == "text" and not m.text.startswith(QUEUE_NOTICE_PREFIX)
            ]

        try:
            await bot.start()
            await until(bot.running, "the bot started")
            question = api.send_text(chat, ann, f"tell me {SLOWLY}")
            await killed_mid_reply(bot, env, lambda: any(MARKER in t for t in shown()))
            llm.behaviour.delay_s = 0.0
            asked = len(llm.requests)

            # Restarted, the bot finishes the message: the saved text, the note, no marker.
            saved = await restart_finishes_the_reply(bot, env, shown, "telegram")

            # Telegram delivers the update again (its confirmation died with the process).
            api.push(question)

            async def seen_again() -> bool:
                return "came again" in bot.log()

            await until(seen_again, "the redelivery handled")
            assert len(llm.requests) == asked
            api.send_text(chat, ann, "and now?")

            async def answered() -> bool:
                return "echo and now?" in shown()

            await until(answered, "the next message answered")
            assert shown() == [f"{saved}\n\n{NOTE}", "echo and now?"]
            assert len(llm.requests) == asked + 1
        finally:
            await bot.stop()
        assert "Traceback" not in bot.log(), bot.log()[-3000:]


async def test_discord_reply_cut_by_sigkill_is_finished_and_replayed_messages_not_answered(
    tmp_path: Path,
) -> None:
    behaviour = Behaviour(reply=reply_to, delay_s=WORD_DELAY_S)
    async with FakeDiscord() as discord, FakeLLMServer(behaviour=behaviour) as llm:
        env = run_env(
            tmp_path,
            llm,
            PARLEY_DISCORD__TOKEN=discord.token,
            PARLEY_DISCORD__API_BASE_URL=discord.api_url,
            PARLEY_DISCORD__GATEWAY_URL=discord.gateway_url,
            PARLEY_DISCORD__CHANNEL_EDITS=str(FAST_RATE),
            PARLEY_DISCORD__CHANNEL_WINDOW_S="1",
        )
        bot = BotProcess(env, tmp_path / "bot.log", ready="Parley is running on discord")
        channel = discord.GENERAL_ID

        def shown() -> list[str]:
            return [
                m.content
                for m in discord.channel_messages(channel, by_bot=True)
                if not m.content.startswith(QUEUE_NOTICE_PREFIX)
            ]

        try:
            await bot.start()
            await until(bot.running, "the bot started")
            question = await discord.post_message(
                discord.ALICE, f"tell me {SLOWLY}", channel_id=channel, mention_bot=True
            )
            await killed_mid_reply(bot, env, lambda: any(MARKER in t for t in shown()))
            llm.behaviour.delay_s = 0.0
            asked = len(llm.requests)

            saved = await restart_finishes_the_reply(bot, env, shown, "discord")

            # The question comes again after the restart: confirmed, not answered.
            await discord.redeliver(question)

            def again(times: int) -> Any:
                async def seen() -> bool:
                    return bot.log().count("came again") >= times

                return seen

            await until(again(1), "the replayed question handled")
            assert len(llm.requests) == asked

            # A message answered, the gateway reconnects, Discord replays the message.
            second = await discord.post_message(
                discord.ALICE, "and now?", channel_id=channel, mention_bot=True
            )

            async def answered() -> bool:
                return "echo and now?" in shown()

            await until(answered, "the next message answered")
            before = discord.session
            await discord.drop_sessions()

            async def reconnected() -> bool:
                return any(s is not before for s in discord.gateway.live)

            await until(reconnected, "the gateway reconnected")
            await discord.redeliver(second)
            await until(again(2), "the message replayed after the reconnect handled")
            assert shown() == [f"{saved}\n\n{NOTE}", "echo and now?"]
            assert len(llm.requests) == asked + 1
        finally:
            await bot.stop()
        assert "Traceback" not in bot.log(), bot.log()[-3000:]
