"""Acceptance: two bot processes on one PostgreSQL split the Discord gateway.

Two real `python -m bot run` processes, configured by environment only, run one shard each of a
bot with `discord.shard_count = 2`, against the loopback fake Discord (which routes each guild's
events to its shard, (guild_id >> 22) % 2, and DMs to shard 0) and the fake LLM server, with a
real PostgreSQL between them. Both answer their guilds; one is killed with SIGKILL in the
middle of replies and started again: every user message is stored, every reply is complete or
marked 'interrupted', and its channels answer again. Throughout, the two processes stay within
the one global budget they share, as counted by the fake across all their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, shard_of
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import BotProcess, parley_env, until
from tests.fakes.platform_bots import QUEUE_NOTICE_PREFIX

SHARDS = 2
RATE = 5.0  # discord.global_rate: both processes together (the budget keeps 1/s of headroom)
# Arrivals at the fake are not spaced as exactly as grants: a request can be delayed after its
# grant (a descheduled process). The bound allows two such late arrivals in a window. Measured
# here: 4-5 at most with the shared budget; 14 with it switched off (each process's own bucket).
ARRIVAL_SLACK = 2
WORDS = [f"w{i}" for i in range(12)]  # a reply streams in these words, after its echo
HOLD = "hold"  # a question with this word is held mid-stream by the fake LLM


def reply_to(body: dict[str, Any]) -> str:
    return " ".join([f"echo {last_user_text(body)}", *WORDS])


def shard_bot(env: dict[str, str], log_path: Path) -> BotProcess:
    """One `python -m bot run` process running one shard."""
    return BotProcess(env, log_path, ready="Parley is running on discord")


@contextlib.asynccontextmanager
async def shard_bots(
    tmp_path: Path, discord: FakeDiscord, llm: FakeLLMServer, postgres_url: str
) -> AsyncIterator[list[BotProcess]]:
    bots: list[BotProcess] = []
    for shard_id in range(SHARDS):
        env = parley_env(
            PARLEY_STORAGE__URL=postgres_url,
            PARLEY_LLM__BASE_URL=llm.url,
            PARLEY_LLM__RETRIES="0",
            PARLEY_DISCORD__TOKEN=discord.token,
            PARLEY_DISCORD__API_BASE_URL=discord.api_url,
            PARLEY_DISCORD__GATEWAY_URL=discord.gateway_url,
            PARLEY_DISCORD__SHARD_COUNT=str(SHARDS),
            PARLEY_DISCORD__SHARD_IDS=f"[{shard_id}]",
            PARLEY_DISCORD__GLOBAL_RATE=str(RATE),
            # Channel buckets far above the load: the global budget is what binds.
            PARLEY_DISCORD__CHANNEL_EDITS="1000",
            PARLEY_DISCORD__CHANNEL_WINDOW_S="1",
            PARLEY_ENGINE__VOICE_MODE="off",
            PARLEY_STT__MODEL="tiny.en",
            PARLEY_TTS__BACKENDS='["espeak"]',
            NO_PROXY="127.0.0.1,localhost",
        )
        bots.append(shard_bot(env, tmp_path / f"shard{shard_id}.log"))
    try:
        for bot in bots:
            await bot.start()
        for bot in bots:
            await until(bot.running, "started")
        yield bots
    finally:
        for bot in bots:
            await bot.stop()


async def rows(postgres_url: str) -> list[asyncpg.Record]:
    """Every Discord message row: its channel, role, status and text, in order."""
    conn = await asyncpg.connect(postgres_url)
    try:
        return await conn.fetch(
            "SELECT c.channel_key, m.role, m.status, m.content FROM messages m"
            " JOIN channels c ON c.id = m.channel_id WHERE c.platform = 'discord' ORDER BY m.id"
        )
    finally:
        await conn.close()


def complete(discord: FakeDiscord, channel_id: int, question: str) -> bool:
    """The bot's whole reply to `question` is shown in the channel."""
    return any(
        question in m.content and m.content.endswith(WORDS[-1])
        for m in discord.channel_messages(channel_id, by_bot=True)
        if not m.content.startswith(QUEUE_NOTICE_PREFIX)
    )


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


async def test_two_processes_split_the_shards_survive_a_kill_and_share_the_budget(
    tmp_path: Path, postgres_url: str, release: asyncio.Event
) -> None:
    async def hold(body: dict[str, Any]) -> None:
        if HOLD in last_user_text(body):
            await release.wait()  # the stream stays open, one word in, until the test says

    behaviour = Behaviour(reply=reply_to, delay_s=0.02, pause=hold)
    async with FakeLLMServer(behaviour=behaviour) as llm, FakeDiscord() as discord:
        # Shard 0: two guilds and the DMs; shard 1: the fake's own guild (#general and a
        # thread) and one more guild.
        zero = [discord.add_guild(f"zero {i}", shard=(0, SHARDS)).channel_id for i in range(2)]
        one = [
            discord.GENERAL_ID,
            discord.THREAD_ID,
            discord.add_guild("one", shard=(1, SHARDS)).channel_id,
        ]
        assert all(shard_of(discord.guild_of(c), SHARDS) == 1 for c in one)
        people = [FakeUser(9_000 + i, f"user{i}") for i in range(8)]
        asked: list[str] = []

        async def ask(channel_id: int, text: str, who: FakeUser = discord.ALICE) -> None:
            asked.append(text)
            if channel_id < 0:  # a DM
                await discord.post_message(who, text, dm=True)
            else:
                await discord.post_message(who, text, channel_id=channel_id, mention_bot=True)

        async with shard_bots(tmp_path, discord, llm, postgres_url) as (bot0, bot1):
            sessions = {s.shard for s in discord.gateway.live}
            assert sessions == {(0, SHARDS), (1, SHARDS)}

            # 1. Both answer their guilds (and shard 0 the DMs), all at once.
            first = {c: f"first question in {c}" for c in zero + one}
            for channel, text in first.items():
                await ask(channel, text)
            await ask(-1, "first DM", people[0])
            dm = discord.dm_channel(people[0])
            await until(
                lambda: _now(
                    all(complete(discord, c, t) for c, t in first.items())
                    and complete(discord, dm, "first DM")
                ),
                "first answers",
            )

            # 2. Shard 1's process is killed while it streams three replies (a fourth waits).
            held = {c: f"{HOLD} question in {c}" for c in one}
            for channel, text in held.items():
                await ask(channel, text)
            await ask(one[0], "queued behind the held one")

            async def streaming() -> bool:
                found = await rows(postgres_url)
                users = {r["content"] for r in found if r["role"] == "user"}
                busy = [r for r in found if r["status"] == "streaming"]
                return all(any(t in u for u in users) for t in asked) and len(busy) == len(held)

            await until(streaming, "held replies streaming")
            bot1.kill()
            assert await bot1.proc.wait() == -signal.SIGKILL  # type: ignore[union-attr]
            release.set()

            # Shard 0 keeps answering while shard 1 is down.
            during = {c: f"asked while shard 1 is down, in {c}" for c in zero}
            for channel, text in during.items():
                await ask(channel, text)
            await until(
                lambda: _now(all(complete(discord, c, t) for c, t in during.items())),
                "answers during the outage",
            )

            # 3. Restarted, it takes its shard again and its channels answer again.
            await bot1.start()
            await until(bot1.running, "restarted")
            again = {c: f"asked after the restart, in {c}" for c in one}
            for channel, text in again.items():
                await ask(channel, text)
            await until(
                lambda: _now(all(complete(discord, c, t) for c, t in again.items())),
                "answers after the restart",
            )

            async def settled() -> bool:
                return not any(
                    r["status"] in ("queued", "streaming") for r in await rows(postgres_url)
                )

            await until(settled, "no reply left pending")
            final = await rows(postgres_url)

        # Nothing lost: every question is stored, every reply complete or marked interrupted.
        users = [r["content"] for r in final if r["role"] == "user"]
        assert all(sum(text in u for u in users) == 1 for text in asked), (asked, users)
        replies = [r for r in final if r["role"] == "assistant"]
        assert len(replies) == len(asked)
        assert {r["status"] for r in replies} <= {"complete", "interrupted"}
        interrupted = [r for r in replies if r["status"] == "interrupted"]
        assert len(interrupted) == len(held) + 1  # the three held and the one queued behind
        assert all(complete(discord, c, t) for c, t in (first | during | again).items())

        # The shared budget held across both processes (and the restart), as the fake counts.
        busiest = discord.busiest_window(1.0)
        assert busiest <= RATE + ARRIVAL_SLACK, (busiest, len(discord.global_stamps))
        assert not [c for c in discord.rate_limited if c.status == 429]
        for bot in (bot0, bot1):
            assert "Traceback" not in bot.log(), bot.log()[-3000:]


async def _now(value: bool) -> bool:
    return value
