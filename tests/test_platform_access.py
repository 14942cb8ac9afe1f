"""Abuse limits and admin authority, end to end through the platform fakes.

Allow lists (per platform), the block list (`engine.blocked_users`, "platform:user_id"), the
per-user message rate, and `/config set`: the caller's rights are checked on every command,
and both refusals and changes land in the audit log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.discord.adapter import MSG_NOT_ALLOWED
from adapters.telegram.adapter import MSG_REFUSED
from bot.commands import MSG_BLOCKED
from bot.engine import MSG_SLOW_DOWN
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeInteraction, FakeUser, snowflake
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

ANN, BOB, ROOT = 3001, 3002, 3003
GROUP, OTHER_GROUP = -100301, -100302
MSG_ONLY_ADMINS = "Sorry, only admins can change settings."


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=echo_reply)) as server:
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as api:
        yield api


def asked(llm: FakeLLMServer) -> list[str]:
    return [last_user_text(body) for body in llm.requests]


def audit_log(db: Path) -> list[tuple[Any, ...]]:
    """(action, actor, key, old, new) of every audit row, oldest first."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT action, actor_id, key, old_value, new_value FROM audit_log ORDER BY id"
        ).fetchall()


# -- Telegram ------------------------------------------------------------------------------


async def test_telegram_allow_lists_admit_listed_users_in_listed_chats(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann, bob, root = (telegram.user(i, n) for i, n in ((ANN, "Ann"), (BOB, "Bob"), (ROOT, "Root")))
    group, other = telegram.group_chat(GROUP), telegram.group_chat(OTHER_GROUP)
    settings = telegram_settings(
        tmp_path,
        telegram,
        llm.url,
        allowed_user_ids=[ANN],
        allowed_chat_ids=[GROUP],
        admin_ids=[ROOT],
    )
    async with telegram_bot(settings):
        telegram.send_text(group, ann, "@ParleyTestBot ann in the group")
        telegram.send_text(other, ann, "@ParleyTestBot ann elsewhere")
        telegram.send_text(group, bob, "@ParleyTestBot bob in the group")
        telegram.send_text(telegram.private_chat(bob), bob, "bob in private")
        telegram.send_text(other, root, "@ParleyTestBot root elsewhere")
        await telegram.wait_for(
            lambda a: (
                len(telegram_replies(a, GROUP)) == 2
                and len(telegram_replies(a, OTHER_GROUP)) == 2
                and telegram_replies(a, BOB) == [MSG_REFUSED]
            )
        )
    assert sorted(telegram_replies(telegram, GROUP)) == sorted(
        ["echo ann in the group", MSG_REFUSED]
    )
    assert sorted(telegram_replies(telegram, OTHER_GROUP)) == sorted(
        [MSG_REFUSED, "echo root elsewhere"]  # admins are never locked out
    )
    assert sorted(asked(llm)) == ["ann in the group", "root elsewhere"]


async def test_telegram_blocked_user_is_ignored_and_others_are_not(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann, bob = telegram.user(ANN, "Ann"), telegram.user(BOB, "Bob")
    group = telegram.group_chat(GROUP)
    # Ann is blocked on Discord only: the same number on another platform is someone else.
    blocked = {"blocked_users": [f"telegram:{BOB}", f"discord:{ANN}"]}
    settings = telegram_settings(tmp_path, telegram, llm.url, engine=blocked, admin_ids=[BOB])
    async with telegram_bot(settings):
        telegram.send_text(telegram.private_chat(bob), bob, "hello?")
        telegram.send_text(group, bob, "@ParleyTestBot hello?")
        telegram.send_text(group, bob, "/config set temperature 0.1")  # even as an admin
        telegram.send_text(group, ann, "@ParleyTestBot hi")
        await telegram.wait_for(
            lambda a: sorted(telegram_replies(a, GROUP)) == sorted([MSG_BLOCKED, "echo hi"])
        )
    assert telegram_replies(telegram, BOB) == []  # a message gets no reply at all
    assert asked(llm) == ["hi"]
    assert audit_log(tmp_path / "parley.db") == []


async def test_telegram_flooding_user_is_slowed_down_and_others_are_not(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann, bob = telegram.user(ANN, "Ann"), telegram.user(BOB, "Bob")
    settings = telegram_settings(
        tmp_path, telegram, llm.url, engine={"user_messages_per_minute": 2}
    )
    async with telegram_bot(settings):
        for n in range(3):
            telegram.send_text(telegram.private_chat(ann), ann, f"spam {n}")
        telegram.send_text(telegram.private_chat(bob), bob, "calm")
        slow_down = MSG_SLOW_DOWN.format(limit=2)
        await telegram.wait_for(
            lambda a: len(telegram_replies(a, ANN)) == 3 and telegram_replies(a, BOB)
        )
    assert sorted(telegram_replies(telegram, ANN)) == sorted(
        ["echo spam 0", "echo spam 1", slow_down]
    )
    assert telegram_replies(telegram, BOB) == ["echo calm"]


async def test_telegram_config_rights_are_checked_every_time_and_audited(
    tmp_path: Path, telegram: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    bob, root = telegram.user(BOB, "Bob"), telegram.user(ROOT, "Root")
    group = telegram.group_chat(GROUP)

    async def command(user: dict[str, Any], text: str, answer: str) -> None:
        count = len(telegram_replies(telegram, GROUP))
        telegram.send_text(group, user, text)
        await telegram.wait_for(
            lambda a: (
                len(replies := telegram_replies(a, GROUP)) > count and answer in replies[count]
            )
        )

    async with telegram_bot(telegram_settings(tmp_path, telegram, llm.url, admin_ids=[ROOT])):
        await command(bob, "/config set temperature 0.2", MSG_ONLY_ADMINS)
        await command(root, "/config set temperature 0.3", "temperature is now 0.3")
        await command(bob, "/persona pirate", "Only admins can change the persona here.")
    # Root is no admin any more: the next command is refused, whatever he could do before.
    async with telegram_bot(telegram_settings(tmp_path, telegram, llm.url, admin_ids=[])):
        await command(root, "/config set temperature 0.4", MSG_ONLY_ADMINS)
        await command(bob, "/config show", "temperature = 0.3")
    assert audit_log(tmp_path / "parley.db") == [
        ("config.refused", str(BOB), "temperature", None, "0.2"),
        ("config.set", str(ROOT), "temperature", "0.7", "0.3"),
        ("config.refused", str(BOB), "persona", None, None),
        ("config.refused", str(ROOT), "temperature", None, "0.4"),
    ]


# -- Discord -------------------------------------------------------------------------------


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


def reply_of(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    return "".join(m.content for m in fake.reply_messages(interaction))


async def run_command(
    fake: FakeDiscord, user: FakeUser, command: str, options: dict[str, Any]
) -> str:
    interaction = await fake.interact(command, options, user=user)
    await fake.wait_until(lambda: bool(reply_of(fake, interaction)))
    return reply_of(fake, interaction)


async def set_temperature(fake: FakeDiscord, user: FakeUser, value: str) -> str:
    return await run_command(fake, user, "config set", {"key": "temperature", "value": value})


async def test_discord_allow_and_block_lists(
    tmp_path: Path, discord: FakeDiscord, llm: FakeLLMServer
) -> None:
    zed = FakeUser(snowflake(), "Zed")  # on the allow list, but blocked
    settings = discord_settings(
        tmp_path,
        discord,
        llm.url,
        allowed_user_ids=[discord.ALICE.id, zed.id],
        engine={"blocked_users": [f"discord:{zed.id}", f"telegram:{discord.ALICE.id}"]},
    )
    async with discord_bot(settings):
        await discord.post_message(discord.CAROL, "carol asks", mention_bot=True)
        await discord.post_message(zed, "zed asks", dm=True)
        refused = await run_command(discord, discord.CAROL, "ask", {"prompt": "carol again"})
        blocked = await run_command(discord, zed, "help", {})
        await discord.post_message(discord.ALICE, "alice asks", mention_bot=True)
        general = discord.GENERAL_ID
        await discord.wait_until(lambda: "echo alice asks" in discord_replies(discord, general))
    assert refused == MSG_NOT_ALLOWED
    assert blocked == MSG_BLOCKED
    assert discord_replies(discord, discord.dm_channel(zed)) == []
    assert asked(llm) == ["alice asks"]


async def test_discord_config_rights_are_checked_every_time_and_audited(
    tmp_path: Path, discord: FakeDiscord, llm: FakeLLMServer
) -> None:
    alice, carol = discord.ALICE, discord.CAROL
    listed = discord_settings(tmp_path, discord, llm.url, admin_ids=[carol.id])
    async with discord_bot(listed):
        reply = await run_command(
            discord, alice, "config set", {"key": "temperature", "value": "0.2"}
        )
        assert reply == MSG_ONLY_ADMINS
        reply = await run_command(
            discord, carol, "config set", {"key": "temperature", "value": "0.3"}
        )
        assert reply.startswith("temperature is now 0.3")
    async with discord_bot(discord_settings(tmp_path, discord, llm.url, admin_ids=[])):
        reply = await run_command(
            discord, carol, "config set", {"key": "temperature", "value": "0.4"}
        )
        assert reply == MSG_ONLY_ADMINS
    assert audit_log(tmp_path / "parley.db") == [
        ("config.refused", str(alice.id), "temperature", None, "0.2"),
        ("config.set", str(carol.id), "temperature", "0.7", "0.3"),
        ("config.refused", str(carol.id), "temperature", None, "0.4"),
    ]
