"""One command table: dispatch, /help, Telegram's menu, Discord's slash commands, console."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.telegram.commands import menu
from bot import command_table
from bot.app import ParleyApp, platform_commands
from bot.command_table import COMMANDS, Access, Command, help_text, table
from bot.commands import Commands
from bot.messages import Msg, say
from tests.conftest import make_settings, message
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.parley_process import parley_env, start_parley
from tests.fakes.platform_bots import echo_reply, telegram_bot, telegram_replies, telegram_settings
from tests.fakes.stored import stored_rows
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN = 601
GROUP = -100600


TABLES = {name: table(own) for name, own in platform_commands().items()}


def test_help_lists_every_command_the_platform_offers() -> None:
    assert set(TABLES) == {"api", "discord", "mqtt", "telegram", "console"}
    for platform, commands in TABLES.items():
        text = help_text("Parley", commands)
        for command in commands:
            if command.name in ("start", "help"):
                continue
            assert f"/{command.name}" in text, (platform, command.name)
    assert "/start" not in help_text("Parley", TABLES["discord"])  # a Telegram convention only
    assert "/join" not in help_text("Parley", TABLES["telegram"])  # voice channels: Discord's
    assert "/config set KEY VALUE — change a setting (admins)" in help_text(
        "Parley", TABLES["telegram"]
    )


def test_the_core_table_names_no_platform_command() -> None:
    core = {command.name for command in COMMANDS}
    assert not core & {"start", "join", "leave"}
    assert [c.name for c in TABLES["telegram"]][:2] == ["start", "help"]
    assert [c.name for c in TABLES["discord"]][-2:] == ["join", "leave"]


def test_telegram_menu_is_the_table() -> None:
    entries = {c.command: c.description for c in menu(TABLES["telegram"])}
    assert list(entries) == [c.name for c in TABLES["telegram"]]
    assert entries["voice"].endswith("off, reply-to-voice, always")
    assert all(3 <= len(d) <= 256 for d in entries.values())  # Telegram's description limits


async def test_every_entry_has_a_handler_and_a_missing_one_is_caught(
    app: ParleyApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    Commands(app.settings, app.store)  # the real table: complete
    extra = Command("teleport", Msg.CMD_HELP)
    monkeypatch.setattr(command_table, "COMMANDS", (*COMMANDS, extra))
    with pytest.raises(RuntimeError, match="teleport"):
        Commands(app.settings, app.store)


async def test_who_may_change_follows_the_table(app: ParleyApp, tmp_path: Path) -> None:
    run = app.commands.run
    # /persona: anyone may look; a change takes an admin, or the owner of a private chat.
    assert (await run(message(), "persona")).startswith("Persona: default")
    assert "Only admins" in await run(message(user="eve"), "persona", "pirate")
    assert "persona is now pirate" in await run(message(is_private=True), "persona", "pirate")
    assert "persona is now concise" in await run(message(is_admin=True), "persona", "concise")
    # /config set: admins only, even in a private chat.
    refused = await run(message(is_private=True), "config", "set temperature 0.1")
    assert refused == "Sorry, only admins can change settings."
    assert await run(message(), "config") == await run(message(), "config", "show")
    assert (await run(message(), "config", "frobnicate")).startswith("Usage: /config show")
    assert (await run(message(), "teleport")).startswith("Unknown command /teleport")
    assert (await run(message(), "ask", "hi")).startswith("Unknown command")  # a turn, not this
    audit = stored_rows(
        tmp_path / "parley.db", "SELECT actor_id, action, key, new_value FROM audit_log ORDER BY id"
    )
    assert audit == [
        ("eve", "config.refused", "persona", None),
        ("u1", "config.set", "persona", '"pirate"'),
        ("u1", "config.set", "persona", '"concise"'),
        ("u1", "config.refused", "temperature", "0.1"),
    ]


async def test_tools_says_why_a_chat_has_none(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    run, admin = app.commands.run, message(is_admin=True)
    assert await run(message(), "tools") == say(Msg.TOOLS_NONE_SET_UP)
    # The chat setting: on/off for admins, with the config file's default.
    assert "tools = False" in await run(message(), "config", "show")
    assert (await run(admin, "config", "set tools maybe")).startswith("Can't set tools:")
    assert await run(admin, "config", "set tools on") == say(
        Msg.SETTING_CHANGED, key="tools", value="True", old="False"
    )
    # A server that cannot start: configured, but none ready. A base model: none at all.
    broken = {"command": [str(tmp_path / "no-such-server")]}
    for api, expected in (("chat", Msg.TOOLS_NOT_READY), ("completion", Msg.TOOLS_BASE_MODEL)):
        settings = make_settings(
            tmp_path / api,
            llm={"base_url": fake_llm.url, "api": api},
            tools={"enabled": True, "servers": {"broken": broken}},
        )
        async with ParleyApp(settings, speech=False) as parley:
            assert await parley.commands.run(message(), "tools") == say(expected)
            if api == "chat":
                await parley.commands.run(admin, "config", "set tools off")
                assert await parley.commands.run(message(), "tools") == say(Msg.TOOLS_OFF)


def test_access_levels() -> None:
    stranger, owner, admin = message(), message(is_private=True), message(is_admin=True)
    assert [Access.EVERYONE.allows(m) for m in (stranger, owner, admin)] == [True, True, True]
    assert [Access.OWNER.allows(m) for m in (stranger, owner, admin)] == [False, True, True]
    assert [Access.ADMIN.allows(m) for m in (stranger, owner, admin)] == [False, False, True]


async def test_ask_is_a_turn_on_telegram_too(tmp_path: Path) -> None:
    # In a group with privacy mode on, a bot sees commands only: /ask is how to talk to it.
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        group = api.group_chat(GROUP)
        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            api.send_text(group, ann, "/ask@ParleyTestBot what is the capital of France")
            await api.wait_for(
                lambda a: "echo what is the capital of France" in telegram_replies(a, GROUP)
            )


async def test_console_runs_the_table_and_asks(tmp_path: Path) -> None:
    async with FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        env = parley_env(PARLEY_LLM__BASE_URL=llm.url, PARLEY_STORAGE__PATH=str(tmp_path / "p.db"))
        proc = await start_parley("chat", env=env)
        out, err = await asyncio.wait_for(proc.communicate(b"/help\n/ask two words\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert help_text("Parley", TABLES["console"]) in text
    assert "Parley: echo two words" in text
