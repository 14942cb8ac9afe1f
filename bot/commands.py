"""Chat commands: the one dispatch of the table (bot/command_table.py), and its handlers.

`Commands.execute` runs a command of the caller's platform table, checking who asks every time;
the memory and session handlers live in bot/memory_commands.py and bot/session_commands.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bot.catalog import catalog_language
from bot.channel_config import (
    CHANNEL_KEYS,
    MODEL_KEY,
    ChannelSettings,
    chat_language,
    parse_channel_value,
)
from bot.command_table import (
    VOICE_MODES,
    Command,
    CommandReply,
    Handler,
    find,
    help_text,
    table,
)
from bot.config import Settings
from bot.errors import StorageError, storage_trouble
from bot.languages import AUTO, ENGLISH, FOLLOW, is_setting, primary, turn_language
from bot.memory_commands import MemoryCommands
from bot.messages import Msg, phrase, say
from bot.models import DEFAULT_MODEL
from bot.personas import PERSONAS
from bot.session_commands import SessionCommands
from bot.storage import HistoryStore
from bot.tool_commands import ToolCommands
from bot.types import IncomingMessage

if TYPE_CHECKING:
    from bot.models import ModelCatalog
    from bot.tools.hub import ToolHub

log = logging.getLogger(__name__)

_SHOWN_CHARS = 60  # a setting's value is cut here when shown


class Commands:
    """Runs the table's commands against the store; every refusal is audited."""

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        platforms: Mapping[str, Sequence[Command]] | None = None,
        *,
        tools: ToolHub | None = None,
        models: ModelCatalog | None = None,
    ) -> None:
        """`platforms`: each platform's own commands, offered there besides the core's;
        `tools`: the tool servers (None: none configured); `models`: the chats' models."""
        self.settings = settings
        self.store = store
        self._tables = {name: table(own) for name, own in (platforms or {}).items()}
        self._blocked = frozenset(settings.engine.blocked_users)
        memory = MemoryCommands(store)
        sessions = SessionCommands(store, settings.engine.bot_name)
        self._handlers: dict[str, Handler] = {
            "help": self._help,
            "reset": self._reset,
            "persona": self._persona,
            "voice": self._voice,
            "config show": self._config_show,
            "config set": self._config_set,
            "forget": self._forget,
            "remember": memory.remember,
            "model": self._model,
            "tools": ToolCommands(settings, store, tools, models).listing,
            "memory show": memory.show,
            "memory forget": memory.forget,
            "memory share": memory.share,
            "memory private": memory.private,
            "session new": sessions.new,
            "session list": sessions.listing,
            "session resume": sessions.resume,
            "session export": sessions.export,
        }
        # A table entry without a handler is a programming error: fail at start, not in chat.
        missing = sorted({key for key in self._table_keys() if key not in self._handlers})
        if missing:
            raise RuntimeError(f"commands without a handler: {', '.join(missing)}")

    def table(self, platform: str) -> tuple[Command, ...]:
        """The commands `platform` offers: the core's and its own."""
        return self._tables.get(platform) or table()

    def provide(self, name: str, handler: Handler) -> None:
        """Carry out the platform command `name` with `handler` (the platform's)."""
        offered = [find(commands, name) for commands in self._tables.values()]
        if not any(command is not None and command.by_platform for command in offered):
            raise ValueError(f"/{name} is not a platform command of any table")
        self._handlers[name] = handler

    def withdraw(self, name: str, handler: Handler) -> None:
        """The platform that provided `handler` for `name` stopped: the command is unavailable."""
        if self._handlers.get(name) == handler:
            del self._handlers[name]

    def _table_keys(self) -> list[str]:
        keys = []
        for commands in (table(), *self._tables.values()):
            for command in commands:
                if command.turn or command.by_platform:
                    continue
                if command.subcommands:
                    keys += [f"{command.name} {sub.name}" for sub in command.subcommands]
                else:
                    keys.append(command.runs or command.name)
        return keys

    async def run(self, msg: IncomingMessage, name: str, args: str = "") -> str:
        """Run a chat command and return its reply text (refusals included)."""
        return (await self.execute(msg, name, args)).text

    async def execute(self, msg: IncomingMessage, name: str, args: str = "") -> CommandReply:
        """Run a chat command: its reply text and the files that go with it (an export).

        The answer is in the chat's language: the handler gets `msg` with its `language`
        resolved (the chat's setting over the sender's platform language).
        """
        command = find(self.table(msg.platform), name)
        if command is None or command.turn:
            lang = await self.language(msg)
            return CommandReply(say(Msg.UNKNOWN_COMMAND, lang=lang, name=name.lower().lstrip("/")))
        if msg.user_ref in self._blocked:  # told without touching the store
            lang = turn_language(self.settings.engine.language, msg.language)
            return CommandReply(say(Msg.BLOCKED, lang=lang))
        lang = await self.language(msg)
        msg = dataclasses.replace(msg, language=lang)
        args = args.strip()
        key = command.runs or command.name
        if command.subcommands:
            verb, _, rest = args.partition(" ")
            # A bare /config, /memory, /session runs the first subcommand: show, show, list.
            default = command.subcommands[0].name
            sub = next((s for s in command.subcommands if s.name == (verb or default)), None)
            if sub is None:
                return CommandReply(say(Msg.USAGE, lang=lang, usage=command.usage))
            command, key, args = sub, f"{command.name} {sub.name}", rest.strip()
        try:
            channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
            needed = command.change_access if args and command.change_access else command.access
            if not needed.allows(msg):
                await self._audit_refusal(msg, channel_id, key, command, args)
                return CommandReply(_refusal(key, lang))
            handler = self._handlers.get(key)
            if handler is None:  # a platform command whose platform is not running
                return CommandReply(say(Msg.UNAVAILABLE, lang=lang, name=key))
            reply = await handler(msg, channel_id, args)
        except StorageError as exc:  # the store logged it, once per kind of failure
            trouble = storage_trouble(exc.problem)
            return CommandReply(say(Msg.NOT_SAVED, lang=lang, trouble=trouble))
        return reply if isinstance(reply, CommandReply) else CommandReply(reply)

    async def _audit_refusal(
        self, msg: IncomingMessage, channel_id: int, key: str, command: Command, args: str
    ) -> None:
        setting, value = command.setting, None
        if key == "config set":
            setting, _, value = args.partition(" ")
        await self.store.audit(
            channel_id,
            actor_id=msg.user_id,
            actor_name=msg.user_name,
            action="config.refused" if setting else f"{key.replace(' ', '.')}.refused",
            key=setting or None,
            new_value=value[:200] if value else None,
        )

    async def language(self, msg: IncomingMessage) -> str:
        """The language to answer `msg` in: its chat's `language` setting, else the sender's."""
        return await chat_language(
            self.store, self.settings, msg.platform, msg.channel_key, msg.language
        )

    async def channel_settings(self, channel_id: int) -> ChannelSettings:
        """A chat's settings: the engine defaults with its overrides."""
        return await ChannelSettings.load(self.store, self.settings, channel_id)

    async def set_value(self, msg: IncomingMessage, channel_id: int, key: str, raw: str) -> str:
        """Validate and store one chat setting, audited; the answer says what changed or why not."""
        lang = msg.language
        if key == "language" and not is_setting(raw.strip()):
            return say(Msg.NOT_A_LANGUAGE, lang=lang, value=raw.strip())
        try:
            value = parse_channel_value(self.settings, key, raw)
        except ValueError as exc:
            return say(Msg.CANT_SET, lang=lang, key=key, reason=exc)
        whisper = key == "stt_language" and value not in (AUTO, FOLLOW)
        if whisper and not await _known_language(value):
            return say(Msg.UNKNOWN_LANGUAGE, lang=lang, value=value)
        old = getattr(await self.channel_settings(channel_id), key, None)
        await self.store.set_channel_setting(
            channel_id, key, value, actor_id=msg.user_id, actor_name=msg.user_name, old=old
        )
        if key != "language" or value == AUTO:
            return say(Msg.SETTING_CHANGED, lang=lang, key=key, value=_show(value), old=_show(old))
        # Said in the chat's new language, or that it has no translation yet.
        changed = say(Msg.SETTING_CHANGED, lang=value, key=key, value=value, old=_show(old))
        if catalog_language(value) == ENGLISH and primary(value) != ENGLISH:
            changed += "\n" + say(Msg.LANGUAGE_UNTRANSLATED, lang=value, language=value)
        return changed

    # -- handlers, one per table entry -----------------------------------------------------

    async def _help(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        return help_text(self.settings.engine.bot_name, self.table(msg.platform), msg.language)

    async def _reset(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        deleted = await self.store.clear_channel(
            channel_id, actor_id=msg.user_id, actor_name=msg.user_name
        )
        return say(Msg.RESET_DONE, lang=msg.language, deleted=deleted)

    async def _forget(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        facts = await self.store.forget_memories(
            msg.platform, msg.user_id, None, actor_name=msg.user_name
        )
        deleted = await self.store.forget_author(
            msg.platform, msg.user_id, actor_name=msg.user_name
        )
        if not facts:
            return say(Msg.FORGET_DONE, lang=msg.language, deleted=deleted)
        return say(
            Msg.FORGET_DONE_FACTS,
            lang=msg.language,
            deleted=deleted,
            facts=phrase(Msg.FACTS, count=facts),
        )

    async def _model(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        models = self.settings.llm.models
        current = (await self.channel_settings(channel_id)).model or DEFAULT_MODEL
        if current != DEFAULT_MODEL and current not in models:
            current = DEFAULT_MODEL  # picked once, since taken out of the configuration
        if not args:
            lines = [
                say(Msg.MODELS, lang=msg.language),
                _model_line(
                    DEFAULT_MODEL, say(Msg.MODEL_DEFAULT, lang=msg.language), current, msg.language
                ),
            ]
            lines += [
                _model_line(name, entry.about or entry.model, current, msg.language)
                for name, entry in models.items()
            ]
            lines.append(
                say(Msg.MODEL_PICK if models else Msg.MODEL_ONLY_DEFAULT, lang=msg.language)
            )
            return "\n".join(lines)
        name = args.strip().lower()
        if name != DEFAULT_MODEL and name not in models:
            return say(Msg.MODEL_UNKNOWN, lang=msg.language, name=args.strip())
        await self.store.set_channel_setting(
            channel_id, MODEL_KEY, name, actor_id=msg.user_id, actor_name=msg.user_name, old=current
        )
        return say(Msg.MODEL_CHANGED, lang=msg.language, name=name, old=current)

    async def _persona(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        if not args:
            current = (await self.channel_settings(channel_id)).persona
            return say(
                Msg.PERSONA_SHOWN,
                lang=msg.language,
                persona=_show(current),
                presets=", ".join(PERSONAS),
            )
        return await self.set_value(msg, channel_id, "persona", args)

    async def _voice(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        if not args:
            mode = (await self.channel_settings(channel_id)).voice_mode
            return say(
                Msg.VOICE_MODE_SHOWN, lang=msg.language, mode=mode, modes=" | ".join(VOICE_MODES)
            )
        return await self.set_value(msg, channel_id, "voice_mode", args)

    async def _config_show(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        settings = await self.channel_settings(channel_id)
        lines = [f"{key} = {_show(getattr(settings, key))}" for key in CHANNEL_KEYS]
        return say(Msg.CONFIG_SHOWN, lang=msg.language) + "\n" + "\n".join(lines)

    async def _config_set(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        key, _, value = args.partition(" ")
        if not key or not value.strip():
            return say(Msg.CONFIG_USAGE, lang=msg.language, keys=", ".join(CHANNEL_KEYS))
        return await self.set_value(msg, channel_id, key, value)


_REFUSALS = {
    "model": Msg.REFUSE_MODEL,
    "persona": Msg.REFUSE_PERSONA,
    "voice": Msg.REFUSE_VOICE,
    "config set": Msg.REFUSE_CONFIG,
}


def _model_line(name: str, about: str, current: str, lang: str) -> str:
    line = (
        say(Msg.MODEL_LINE_ABOUT, lang=lang, name=name, about=about)
        if about
        else say(Msg.MODEL_LINE, lang=lang, name=name)
    )
    return line + (say(Msg.MODEL_THIS_CHAT, lang=lang) if name == current else "")


def _refusal(key: str, lang: str) -> str:
    return say(_REFUSALS.get(key, Msg.REFUSE_COMMAND), lang=lang, name=key)


async def _known_language(code: str) -> bool:
    from bot.speech.stt import language_codes  # imports faster-whisper: off the event loop

    return code in await asyncio.to_thread(language_codes)


def _show(value: object) -> str:
    text = str(value)
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS] + "…")
    return repr(text) if text == "" else text
