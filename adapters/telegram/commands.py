"""Telegram's command table (bot/command_table.py) as its command menus (`setMyCommands`), one per
language Parley speaks: Telegram shows each user the menu of their `language_code`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from telegram import BotCommand
from telegram.constants import BotCommandLimit

from bot.catalog import shipped
from bot.command_table import Command
from bot.languages import AUTO, ENGLISH, primary
from bot.messages import Msg, say


def menus(commands: Sequence[Command], language: str) -> list[tuple[str | None, list[BotCommand]]]:
    """`(language_code, menu)` pairs to register: the default menu (None: for every language
    without its own) in `language` (`engine.language`; English when "auto"), then with "auto"
    one menu per translated language. An empty menu is one to delete: a fixed language speaks
    to everyone in the default menu."""
    default = ENGLISH if language == AUTO else language
    found: list[tuple[str | None, list[BotCommand]]] = [(None, menu(commands, default))]
    # Telegram's language_code is a two-letter ISO 639-1 code: one menu per language, from its
    # plain catalog when there is one ("pt" before "pt_BR").
    codes: dict[str, str] = {}
    for tag in shipped():
        codes.setdefault(primary(tag), tag)
    for code, tag in codes.items():
        if code != ENGLISH:
            found.append((code, menu(commands, tag) if language == AUTO else []))
    return found


def menu(commands: Iterable[Command], lang: str = ENGLISH) -> list[BotCommand]:
    """One menu entry per command Telegram offers, its help in `lang` trimmed to Telegram's
    limit."""
    limit = int(BotCommandLimit.MAX_DESCRIPTION)
    return [BotCommand(c.name, _describe(c, lang)[:limit]) for c in commands]


def _describe(command: Command, lang: str) -> str:
    about = say(command.about, lang=lang)
    if command.subcommands:
        choices = say(Msg.LAST_CHOICE, lang=lang).join(
            sub.usage.removeprefix("/") for sub in command.subcommands
        )
        return say(Msg.MENU_CHOICES, lang=lang, about=about, choices=choices)
    listed = next((p.choices for p in command.params if p.choices), ())
    if not listed:
        return about
    return say(Msg.MENU_CHOICES, lang=lang, about=about, choices=", ".join(listed))
