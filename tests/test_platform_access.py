"""Abuse limits and admin authority, end to end through the platform fakes.

Allow lists (per platform), the block list (`engine.blocked_users`, "platform:user_id"), the
per-user message rate, and `/config set`: the caller's rights are checked on every command,
and both refusals and changes land in the audit log. What every platform does is tested once,
on each platform, through its driver (tests/fakes/drivers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.messages import Msg, say
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeInteraction, FakeUser
from tests.fakes.drivers import Person, PlatformDriver
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
from tests.fakes.stored import stored_rows
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB, ROOT = 3001, 3002, 3003
GROUP, OTHER_GROUP = -100301, -100302
MSG_ONLY_ADMINS = "Sorry, only admins can change settings."
MSG_ONLY_ADMINS_PERSONA = "Only admins can change the persona here."


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


def asked(llm: FakeLLMServer) -> list[str]:
    return [last_user_text(body) for body in llm.requests]


def audit_log(db: Path) -> list[tuple[Any, ...]]:
    """(action, actor, key, old, new) of every audit row, oldest first."""
    return stored_rows(
        db, "SELECT action, actor_id, key, old_value, new_value FROM audit_log ORDER BY id"
    )


# -- every platform ------------------------------------------------------------------------


@pytest.mark.parametrize("allow_listed", [False, True], ids=["no-allow-list", "allow-listed"])
async def test_blocked_users_are_ignored_and_others_are_not(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer, allow_listed: bool
) -> None:
    bob, zed, ann = driver.person("Bob"), driver.person("Zed"), driver.person("Ann")
    # Ann is blocked on the other platform only: the same number there is someone else.
    other = "discord" if driver.name == "telegram" else "telegram"
    blocked = [f"{driver.name}:{bob.id}", f"{driver.name}:{zed.id}", f"{other}:{ann.id}"]
    # The block list wins over the allow list, and over being an admin (Bob).
    allowed = [bob.id, zed.id, ann.id] if allow_listed else []
    settings = driver.settings(
        tmp_path,
        fake_llm.url,
        engine={"blocked_users": blocked},
        admin_ids=[bob.id],
        allowed_user_ids=allowed,
    )
    async with driver.running(settings):
        for person in (bob, zed):
            await driver.say(person, "hello?")
            await driver.say(person, "hello?", group=True)
            assert await driver.command(person, "help", group=True) == say(Msg.BLOCKED)
            setting = await driver.command(person, "config set", "temperature", "0.1", group=True)
            assert setting == say(Msg.BLOCKED)
        await driver.say(ann, "hi", group=True)
        await driver.wait_until(lambda: "echo hi" in driver.replies(group=True))
    assert driver.replies(bob) == [] and driver.replies(zed) == []  # a message gets no reply
    assert sorted(driver.replies(group=True)) == sorted([*[say(Msg.BLOCKED)] * 4, "echo hi"])
    assert asked(fake_llm) == ["hi"]
    assert audit_log(tmp_path / "parley.db") == []


async def test_flooding_user_is_slowed_down_and_others_are_not(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    settings = driver.settings(tmp_path, fake_llm.url, engine={"user_messages_per_minute": 2})
    async with driver.running(settings):
        for n in range(3):
            await driver.say(ann, f"spam {n}")
        await driver.say(bob, "calm")
        await driver.wait_until(lambda: len(driver.replies(ann)) == 3 and driver.replies(bob))
    slow_down = say(Msg.SLOW_DOWN, limit=2)
    assert sorted(driver.replies(ann)) == sorted(["echo spam 0", "echo spam 1", slow_down])
    assert driver.replies(bob) == ["echo calm"]


async def test_config_rights_are_checked_every_time_and_audited(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    bob, root = driver.person("Bob"), driver.person("Root")

    async def config_set(person: Person, value: str) -> str:
        return await driver.command(person, "config set", "temperature", value, group=True)

    async with driver.running(driver.settings(tmp_path, fake_llm.url, admin_ids=[root.id])):
        assert await config_set(bob, "0.2") == MSG_ONLY_ADMINS
        assert (await config_set(root, "0.3")).startswith("temperature is now 0.3")
        persona = await driver.command(bob, "persona", "pirate", group=True)
        assert persona == MSG_ONLY_ADMINS_PERSONA
    # Root is no admin any more: the next command is refused, whatever he could do before.
    async with driver.running(driver.settings(tmp_path, fake_llm.url, admin_ids=[])):
        assert await config_set(root, "0.4") == MSG_ONLY_ADMINS
        assert "temperature = 0.3" in await driver.command(bob, "config show", group=True)
    assert audit_log(tmp_path / "parley.db") == [
        ("config.refused", str(bob.id), "temperature", None, "0.2"),
        ("config.set", str(root.id), "temperature", "0.7", "0.3"),
        ("config.refused", str(bob.id), "persona", None, None),
        ("config.refused", str(root.id), "temperature", None, "0.4"),
    ]


# -- Telegram: allow lists of users and chats; admins are never locked out ------------------


async def test_telegram_allow_lists_admit_listed_users_in_listed_chats(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann, bob, root = (telegram.user(i, n) for i, n in ((ANN, "Ann"), (BOB, "Bob"), (ROOT, "Root")))
    group, other = telegram.group_chat(GROUP), telegram.group_chat(OTHER_GROUP)
    settings = telegram_settings(
        tmp_path,
        telegram,
        fake_llm.url,
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
                and telegram_replies(a, BOB) == [say(Msg.REFUSED)]
            )
        )
    assert sorted(telegram_replies(telegram, GROUP)) == sorted(
        ["echo ann in the group", say(Msg.REFUSED)]
    )
    assert sorted(telegram_replies(telegram, OTHER_GROUP)) == sorted(
        [say(Msg.REFUSED), "echo root elsewhere"]  # admins are never locked out
    )
    assert sorted(asked(fake_llm)) == ["ann in the group", "root elsewhere"]


# -- Discord: an allow list of users; their messages (and admins') are answered, others' not --


def reply_of(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    return "".join(m.content for m in fake.reply_messages(interaction))


async def run_command(
    fake: FakeDiscord, user: FakeUser, command: str, options: dict[str, Any]
) -> str:
    interaction = await fake.interact(command, options, user=user)
    await fake.wait_until(lambda: bool(reply_of(fake, interaction)))
    return reply_of(fake, interaction)


async def test_discord_allow_list_admits_listed_users_only(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(
        tmp_path,
        discord,
        fake_llm.url,
        allowed_user_ids=[discord.ALICE.id],
        admin_ids=[discord.BOB.id],
    )
    async with discord_bot(settings):
        await discord.post_message(discord.CAROL, "carol asks", mention_bot=True)
        refused = await run_command(discord, discord.CAROL, "ask", {"prompt": "carol again"})
        await discord.post_message(discord.ALICE, "alice asks", mention_bot=True)
        general = discord.GENERAL_ID
        await discord.wait_until(lambda: "echo alice asks" in discord_replies(discord, general))
        # The bot's own admins are never locked out, as on Telegram.
        await discord.post_message(discord.BOB, "bob the admin asks", mention_bot=True)
        await discord.wait_until(
            lambda: "echo bob the admin asks" in discord_replies(discord, general)
        )
    assert refused == say(Msg.NOT_ALLOWED_HERE)
    assert asked(fake_llm) == ["alice asks", "bob the admin asks"]
