"""The command table (bot/commands.py) as Telegram's command menu (`setMyCommands`)."""

from __future__ import annotations

from telegram import BotCommand
from telegram.constants import BotCommandLimit

from bot.commands import Command, commands_for

PLATFORM = "telegram"


def menu() -> list[BotCommand]:
    """One menu entry per command Telegram offers, its help trimmed to Telegram's limit."""
    limit = int(BotCommandLimit.MAX_DESCRIPTION)
    return [BotCommand(c.name, _describe(c)[:limit]) for c in commands_for(PLATFORM)]


def _describe(command: Command) -> str:
    if command.subcommands:
        return f"{command.help}: " + ", or ".join(
            sub.usage.removeprefix("/") for sub in command.subcommands
        )
    choices = next((p.choices for p in command.params if p.choices), ())
    return f"{command.help}: {', '.join(choices)}" if choices else command.help


def find(name: str) -> Command | None:
    """The command called `name`, if Telegram offers it."""
    return next((c for c in commands_for(PLATFORM) if c.name == name), None)
