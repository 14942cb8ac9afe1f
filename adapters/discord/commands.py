"""Discord's command table (bot/command_table.py) as slash commands on a discord.py `CommandTree`.

discord.py reads a command's options from its callback's signature, so each table entry gets a
callback whose `__signature__` lists the entry's parameters; the callback only collects the
options and hands over to a `CommandHandler` (the Discord adapter).

Descriptions are in `engine.language`; with "auto" (the default) they are English, with a
`description_localizations` entry for each Discord locale that Parley has a translation for: each
is a `locale_str` carrying its message, which `CatalogTranslator` says in the locale's language
when the tree is synced. Names stay English.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Protocol

import discord
from discord import app_commands

from bot.catalog import catalog_language
from bot.command_table import Access, Command, Param
from bot.languages import AUTO, ENGLISH
from bot.messages import Msg, Phrase, say

MAX_DESCRIPTION = 100  # Discord's limit for command, option and choice descriptions/names


class CommandHandler(Protocol):
    """What the commands call; the Discord adapter implements it."""

    async def ask(self, interaction: discord.Interaction, prompt: str, voice: bool) -> None:
        """Answer a prompt, streamed into the interaction's response."""
        ...

    async def run_command(
        self, interaction: discord.Interaction, name: str, args: str, *, ephemeral: bool
    ) -> None:
        """Run a command of the table and show its reply."""
        ...


class CatalogTranslator(app_commands.Translator):
    """Says each description in the language of a Discord locale, from the message catalog
    (when `engine.language` is "auto": a fixed language is everyone's, in the descriptions)."""

    def __init__(self, language: str) -> None:
        self._auto = language == AUTO

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        """The description in `locale`'s language; None (English only) for names, for English
        and for a language without a translation."""
        about = string.extras.get("about")
        if about is None or not self._auto or catalog_language(locale.value) == ENGLISH:
            return None
        return _described(about, string.extras.get("admin", False), locale.value)


def _described(about: Msg | Phrase, admin: bool, lang: str) -> str:
    note = say(Msg.DISCORD_ADMIN_NOTE, lang=lang) if admin else ""
    return _short(say(about, lang=lang) + note)


def _localized(about: Msg | Phrase, lang: str, *, admin: bool = False) -> app_commands.locale_str:
    """A description in `lang`, with the message for `CatalogTranslator` to say in others."""
    return app_commands.locale_str(_described(about, admin, lang), about=about, admin=admin)


def build_command_tree(
    client: discord.Client,
    handler: CommandHandler,
    commands: Iterable[Command],
    language: str = AUTO,
) -> app_commands.CommandTree[discord.Client]:
    """A CommandTree with every command of Discord's table, described in `language`
    (`engine.language`; "auto": English, localized by `CatalogTranslator`)."""
    lang = ENGLISH if language == AUTO else language
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for command in commands:
        if not command.subcommands:
            tree.add_command(_slash(command, handler, lang))
            continue
        group = app_commands.Group(name=command.name, description=_localized(command.about, lang))
        for sub in command.subcommands:
            group.add_command(_slash(sub, handler, lang, parent=command.name))
        tree.add_command(group)
    return tree


def _slash(
    command: Command, handler: CommandHandler, lang: str, *, parent: str | None = None
) -> app_commands.Command[Any, ..., None]:
    async def callback(interaction: discord.Interaction, **options: Any) -> None:
        if command.turn:
            prompt = str(options.get("prompt") or "")
            await handler.ask(interaction, prompt, bool(options.get("voice")))
            return
        values = [_value(param, options.get(param.name)) for param in command.params]
        args = " ".join(str(value) for value in values if value not in (None, ""))
        name = parent or command.name
        if parent is not None:
            args = f"{command.name} {args}"
        await handler.run_command(interaction, name, args.strip(), ephemeral=command.private)

    interaction = inspect.Parameter(
        "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
    )
    callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [interaction, *(_option(param) for param in command.params)]
    )
    described = app_commands.describe(
        **{param.name: _localized(param.about, lang) for param in command.params}
    )(callback)
    choices = {
        param.name: [
            app_commands.Choice(name=_short(label), value=value)
            for value, label in zip(param.choices, param.labels or param.choices, strict=True)
        ]
        for param in command.params
        if param.choices
    }
    if choices:
        described = app_commands.choices(**choices)(described)
    # Discord's own admins (Manage Server) are the bot's admins there too.
    admin = command.access is Access.ADMIN
    return app_commands.Command(
        name=command.name,
        description=_localized(command.about, lang, admin=admin),
        callback=described,
    )


def _value(param: Param, value: Any) -> Any:
    """An option's value as command text: a channel by its id (its name may have spaces)."""
    if param.kind == "voice_channel" and isinstance(value, discord.abc.Snowflake):
        return value.id
    return value


# How each kind of parameter is offered: a voice channel as Discord's channel picker, limited
# to voice channels (discord.py derives the option's channel types from the annotation).
_ANNOTATIONS: dict[str, Any] = {"flag": bool, "text": str, "voice_channel": discord.VoiceChannel}


def _option(param: Param) -> inspect.Parameter:
    annotation: Any = _ANNOTATIONS[param.kind]
    default: Any = inspect.Parameter.empty
    if not param.required:
        default = False if param.kind == "flag" else None
        if param.kind != "flag":
            annotation = annotation | None
    return inspect.Parameter(
        param.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def _short(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"
