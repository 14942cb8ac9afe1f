"""Discord shards and the shared global budget, in one process: the real discord.py sharded
client against the fake gateway (which routes each guild to its shard as Discord does), and
the PostgreSQL budget against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path

import aiohttp
import pytest

from adapters.discord import sharding
from adapters.discord.config import DiscordSettings
from adapters.telegram.config import TelegramSettings
from bot.errors import ConfigError
from bot.storage.shared_budget import LocalBudget, SharedBudget
from tests.conftest import free_port, make_settings
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_gateway import CLOSE_INVALID_SHARD
from tests.fakes.discord_world import shard_of
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    echo_reply,
    echoed,
)

# The default guild of the fake is on shard 1 of 2; tests add one on shard 0.
SHARDS = 2


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)  # every reply names its question


def answered(discord: FakeDiscord, channel_id: int, question: str) -> bool:
    """Whether the bot's echo of `question` is shown in the channel."""
    return any(echoed("") in r and question in r for r in discord_replies(discord, channel_id))


def all_answered(discord: FakeDiscord, questions: dict[int, str]) -> bool:
    return all(answered(discord, channel, text) for channel, text in questions.items())


def test_the_default_guild_is_on_shard_1_of_2() -> None:
    assert shard_of(FakeDiscord.GUILD_ID, SHARDS) == 1
    assert shard_of(None, SHARDS) == 0  # DMs


async def test_each_shard_answers_only_its_own_guilds_and_dms_go_to_shard_0(
    tmp_path: Path, fake_llm: FakeLLMServer, discord: FakeDiscord
) -> None:
    other = discord.add_guild("Shard Zero Server", shard=(0, SHARDS))
    for shard_id in range(SHARDS):
        settings = discord_settings(
            tmp_path / str(shard_id), discord, fake_llm.url, shard_count=SHARDS,
            shard_ids=[shard_id],
        )  # fmt: skip
        async with discord_bot(settings) as bot:
            assert discord.session.identify is not None
            assert discord.session.identify["shard"] == [shard_id, SHARDS]
            guild_ids = {g.id for g in bot.adapter._client.guilds}  # type: ignore[union-attr]
            mine = {discord.GUILD_ID, other.id} & {g for g in guild_ids}
            assert all(shard_of(g, SHARDS) == shard_id for g in mine) and mine
            questions = {
                discord.GENERAL_ID: f"in the first guild, shard {shard_id}",
                other.channel_id: f"in the second guild, shard {shard_id}",
            }
            for channel, text in questions.items():
                await discord.post_message(
                    discord.ALICE, text, channel_id=channel, mention_bot=True
                )
            await discord.post_message(discord.BOB, f"a DM, shard {shard_id}", dm=True)
            expected = {
                channel: text
                for channel, text in questions.items()
                if shard_of(discord.guild_of(channel), SHARDS) == shard_id
            }
            if shard_id == 0:
                expected[discord.dm_channel(discord.BOB)] = f"a DM, shard {shard_id}"
            await discord.wait_until(functools.partial(all_answered, discord, expected))
        for channel, text in questions.items():  # the other shard's guild got no answer
            if channel not in expected:
                assert not answered(discord, channel, text)
        dm = discord.dm_channel(discord.BOB)
        assert answered(discord, dm, f"a DM, shard {shard_id}") == (shard_id == 0)


async def test_the_fake_refuses_a_shard_outside_the_count(discord: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(discord.gateway_url) as ws:
        await ws.receive_json()  # HELLO
        payload = {"token": discord.token, "intents": 0, "shard": [2, 2], "properties": {}}
        await ws.send_json({"op": 2, "d": payload})
        closed = await ws.receive()
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert closed.data == CLOSE_INVALID_SHARD


async def test_gateway_bot_reports_shards_and_session_start_limit(discord: FakeDiscord) -> None:
    discord.recommended_shards, discord.max_concurrency = 4, 1
    headers = {"Authorization": f"Bot {discord.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(discord.api_url + "/gateway/bot") as response,
    ):
        body = await response.json()
    assert body["shards"] == 4 and body["url"] == discord.gateway_url
    assert body["session_start_limit"]["max_concurrency"] == 1


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"shard_ids": [0]}, "needs shard_count"),
        ({"shard_count": 2, "shard_ids": [2]}, "must lie in 0..1"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, "twice"),
    ],
)
def test_shard_settings_are_checked(
    tmp_path: Path, section: dict[str, object], problem: str
) -> None:
    with pytest.raises((ConfigError, ValueError), match=problem):
        make_settings(tmp_path, discord=section)


def test_a_process_falls_back_to_its_shards_share_of_the_budget(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        discord={"shard_count": 4, "shard_ids": [0, 1, 2], "global_rate": 40},
        storage={"url": "postgresql://u:p@127.0.0.1:1/db"},
    )
    cfg = DiscordSettings.of(settings)
    assert sharding.budget_share(cfg) == 0.75
    assert sharding.shares_budget(settings, cfg)
    whole = make_settings(tmp_path, discord={"shard_count": 2})  # every shard here: own budget
    assert not sharding.shares_budget(whole, DiscordSettings.of(whole))


async def test_without_postgresql_a_process_keeps_to_its_shards_share(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, discord={"shard_count": 2, "shard_ids": [1], "global_rate": 21}
    )
    shared = await sharding.open_shared(settings, DiscordSettings.of(settings))
    assert shared is not None and isinstance(shared.rest, LocalBudget)
    assert shared.rest.interval == pytest.approx(1 / 10.0)  # half of 21/s less the headroom
    await shared.close()


# -- the shared budget on a real PostgreSQL ---------------------------------------------------


async def test_two_processes_budgets_share_one_rate(postgres_url: str) -> None:
    """Two budgets on one row (as two processes have): together they get `rate` grants a
    second, spaced 1/rate apart by the database's clock."""
    rate = 20.0
    first = SharedBudget(postgres_url, "test:global", rate, share=0.5)
    second = SharedBudget(postgres_url, "test:global", rate, share=0.5)
    await asyncio.gather(first.open(), second.open())
    try:
        loop = asyncio.get_running_loop()
        granted: list[float] = []

        async def take(budget: SharedBudget, n: int) -> None:
            for _ in range(n):
                await budget.acquire()
                granted.append(loop.time())

        await asyncio.gather(take(first, 10), take(second, 10))
    finally:
        await asyncio.gather(first.close(), second.close())
    assert first.shared_grants == second.shared_grants == 10
    assert first.local_grants == second.local_grants == 0
    # 20 grants at 20/s, the first at once: at least 19 intervals between first and last.
    assert max(granted) - min(granted) >= 19 / rate * 0.95


async def test_a_global_429_in_one_process_pauses_the_other(postgres_url: str) -> None:
    first = SharedBudget(postgres_url, "test:pause", 1000.0)
    second = SharedBudget(postgres_url, "test:pause", 1000.0)
    await asyncio.gather(first.open(), second.open())
    try:
        await second.acquire()  # granted at once
        await first.pause(3600.0)  # Discord said: global 429, retry after an hour
        waiting = asyncio.create_task(second.acquire())
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done  # still waiting (a hang guard would take an hour, not 0.5 s)
        waiting.cancel()
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_unreachable_postgres_falls_back_to_the_local_share() -> None:
    dead = f"postgresql://u:p@127.0.0.1:{free_port()}/db"
    budget = SharedBudget(dead, "test:global", 10.0, share=0.5, timeout_s=0.5)
    await budget.open()  # logs and carries on: the bot must not stop for its budget
    try:
        for _ in range(3):
            await budget.acquire()
    finally:
        await budget.close()
    assert budget.local_grants == 3 and budget.shared_grants == 0
    assert budget.fallback.interval == pytest.approx(1 / 5.0)  # half of 10/s


# -- the platform suite on PostgreSQL (`make test`) -------------------------------------------

SOAK = {"tests/test_soak.py"}  # minutes long: its own run, not part of the PostgreSQL pass
PLATFORM_MARK = "pytestmark = pytest.mark.platform"


def _make_target(makefile: str, name: str) -> list[str]:
    """The recipe lines of a Makefile target."""
    body = makefile.split(f"\n{name}:", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in body.splitlines()[1:]]


def test_make_test_runs_every_platform_test_file_on_postgresql_too() -> None:
    root = Path(__file__).resolve().parent.parent
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^POSTGRES := --storage=postgresql$", makefile, flags=re.M)
    real_time = re.search(r"^REAL_TIME := (.*)$", makefile, flags=re.M)
    assert real_time is not None
    # The whole suite on SQLite, then the platform tests on PostgreSQL, each split in two runs
    # that together select everything: the rest in parallel, the real-time tests one at a time.
    test = _make_target(makefile, "test")
    assert test[-3:] == [
        '$(PYTEST) -q -n $(WORKERS) -m "not ($(REAL_TIME))"',
        '$(PYTEST) -q -m "$(REAL_TIME)"',
        "$(postgres_pass)",
    ]
    assert _make_target(makefile, "test-postgres") == ["$(postgres_pass)"]
    postgres_pass = makefile.split("define postgres_pass\n", 1)[1].split("\nendef", 1)[0]
    assert [line.strip() for line in postgres_pass.splitlines()] == [
        '$(PYTEST) -q -n $(WORKERS) -m "platform and not ($(REAL_TIME))" $(POSTGRES)',
        '$(PYTEST) -q -m "platform and ($(REAL_TIME))" $(POSTGRES)',
    ]
    texts = {f"tests/{p.name}": p.read_text("utf-8") for p in (root / "tests").glob("test_*.py")}
    marked = {name for name, text in texts.items() if PLATFORM_MARK in text}
    driven = {
        name
        for name, text in texts.items()
        if name != f"tests/{Path(__file__).name}" and "driver: PlatformDriver" in text
    }
    assert driven - SOAK <= marked


# -- the compose profile "scale" --------------------------------------------------------------

COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):?[-?](?P<default>[^}]*)\}")


def test_the_scale_profile_splits_the_shards_over_two_bots_on_one_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from bot.app import full_settings_class

    root = Path(__file__).resolve().parent.parent
    services = yaml.safe_load((root / "docker-compose.yml").read_text("utf-8"))["services"]
    scaled = {name: s for name, s in services.items() if s.get("profiles") == ["scale"]}
    assert {"postgres", "llama-a", "llama-b", "parley-shard0", "parley-shard1"} <= set(scaled)
    given = {
        "POSTGRES_PASSWORD": "pw",
        "PARLEY_DISCORD__TOKEN": "t",
        "PARLEY_TELEGRAM__TOKEN": "1:a",
    }
    bots = []
    for name in ("parley-shard0", "parley-shard1"):
        with monkeypatch.context() as env:
            for key, value in scaled[name]["environment"].items():
                value = COMPOSE_VARIABLE.sub(
                    lambda m: given.get(m["name"], m["default"]), str(value)
                )
                env.setenv(key, value)
            bots.append(full_settings_class()())
    shards = [DiscordSettings.of(bot) for bot in bots]
    assert [s.shard_count for s in shards] == [2, 2]
    assert sorted(i for s in shards for i in s.shard_ids) == [0, 1]
    urls = {bot.storage.url.get_secret_value() for bot in bots}
    assert urls == {"postgresql://parley:pw@postgres:5432/parley"}
    assert all(sharding.shares_budget(bot, s) for bot, s in zip(bots, shards, strict=True))
    assert all(len(bot.llm.backends) == 2 for bot in bots)
    # Telegram in one process only: one webhook is enough for its 30 messages/s.
    telegram = [TelegramSettings.of(bot).token.get_secret_value() for bot in bots]
    assert [bool(token) for token in telegram] == [True, False]
