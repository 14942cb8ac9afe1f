"""Telegram's command table (bot/command_table.py) as its command menu (`setMyCommands`)."""

from __future__ import annotations

from collections.abc import Iterable

from telegram import BotCommand
from telegram.constants import BotCommandLimit

from bot.command_table import Command
from bot.messages import Msg, say


def menu(commands: Iterable[Command]) -> list[BotCommand]:
    """One menu entry per command Telegram offers, its help trimmed to Telegram's limit."""
    limit = int(BotCommandLimit.MAX_DESCRIPTION)
    return [BotCommand(c.name, _describe(c)[:limit]) for c in commands]


def _describe(command: Command) -> str:
    about = say(command.about)
    if command.subcommands:
        choices = say(Msg.LAST_CHOICE).join(
            sub.usage.removeprefix("/") for sub in command.subcommands
        )
        return say(Msg.MENU_CHOICES, about=about, choices=choices)
    listed = next((p.choices for p in command.params if p.choices), ())
    return say(Msg.MENU_CHOICES, about=about, choices=", ".join(listed)) if listed else about
