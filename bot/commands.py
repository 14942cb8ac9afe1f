"""Chat commands: one table (name, parameters, who may use them, help) and their handlers.

Every surface renders from `COMMANDS`: `/help` here, Telegram's `setMyCommands`, Discord's slash
commands and the console; `Commands.run` is the one dispatch, and it checks who asks every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from bot.channel_config import CHANNEL_KEYS, ChannelSettings, parse_channel_value
from bot.config import Settings
from bot.errors import StorageError, storage_trouble
from bot.personas import PERSONAS
from bot.storage import HistoryStore
from bot.types import IncomingMessage

log = logging.getLogger(__name__)

VOICE_MODES = ("off", "reply-to-voice", "always")
_CHOICES_SHOWN = 3  # usage lines list up to this many choices, else the parameter's name
MSG_BLOCKED = "Sorry, you can't use this bot."
MSG_NOT_SAVED = "I couldn't do that: {trouble}; please try again later."


class Access(Enum):
    """Who may use a command (or change something with it)."""

    EVERYONE = "everyone"
    OWNER = "admins, or anyone in their own private chat"
    ADMIN = "admins only"

    def allows(self, msg: IncomingMessage) -> bool:
        """Whether the sender of `msg` may, where they sent it."""
        if self is Access.EVERYONE or msg.is_admin:
            return True
        return self is Access.OWNER and msg.is_private


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of a command."""

    name: str
    help: str
    choices: tuple[str, ...] = ()
    required: bool = False
    kind: Literal["text", "flag"] = "text"
    metavar: str = ""  # how usage lines show it (default: the name in capitals)
    labels: tuple[str, ...] = ()  # a longer label per choice, for menus that show them


@dataclass(frozen=True, slots=True)
class Command:
    """One entry of the command table."""

    name: str
    help: str  # one line: /help and the platforms' command menus
    params: tuple[Param, ...] = ()
    access: Access = Access.EVERYONE  # to run it at all
    change_access: Access | None = None  # to run it with arguments, which change something
    subcommands: tuple[Command, ...] = ()
    private: bool = False  # answered to the caller alone where the platform can (Discord)
    turn: bool = False  # not a command: its text is a message to answer (/ask)
    platforms: tuple[str, ...] = ()  # only there (empty: everywhere)
    setting: str | None = None  # the chat setting its arguments change, for the audit log

    @property
    def usage(self) -> str:
        """How it is typed, e.g. `/voice [off|reply-to-voice|always]`."""
        if self.subcommands:
            return " | ".join(
                f"/{self.name} {sub.usage.removeprefix('/')}" for sub in self.subcommands
            )
        parts = [f"/{self.name}"]
        for param in self.params:
            if param.kind == "flag":
                continue
            few = 0 < len(param.choices) <= _CHOICES_SHOWN
            shown = "|".join(param.choices) if few else param.metavar or param.name.upper()
            parts.append(shown if param.required else f"[{shown}]")
        return " ".join(parts)

    def available_on(self, platform: str) -> bool:
        """Whether `platform` offers this command."""
        return not self.platforms or platform in self.platforms


_KEY = Param(
    "key",
    "the setting",
    choices=tuple(CHANNEL_KEYS),
    labels=tuple(f"{key}: {about}" for key, about in CHANNEL_KEYS.items()),
    required=True,
)

COMMANDS: tuple[Command, ...] = (
    Command("start", "Say hello", platforms=("telegram", "console")),
    Command("help", "What I can do", private=True),
    Command(
        "ask",
        "Ask me anything; the answer streams in as it is written",
        params=(
            Param("prompt", "your message", required=True),
            Param("voice", "also answer with a voice message", kind="flag"),
        ),
        turn=True,
    ),
    Command("reset", "Forget this conversation"),
    Command(
        "persona",
        "Show or change how I talk",
        params=(
            Param(
                "persona",
                f"a preset ({', '.join(PERSONAS)}) or your own text",
                metavar="name or text",
            ),
        ),
        change_access=Access.OWNER,
        setting="persona",
    ),
    Command(
        "voice",
        "Show or change when I answer with voice",
        params=(Param("mode", "off, only to voice messages, or always", choices=VOICE_MODES),),
        change_access=Access.OWNER,
        setting="voice_mode",
    ),
    Command(
        "config",
        "This chat's settings",
        subcommands=(
            Command("show", "Show this chat's settings", private=True),
            Command(
                "set",
                "Change a setting",
                params=(_KEY, Param("value", "its new value", required=True)),
                access=Access.ADMIN,
                private=True,
            ),
        ),
        private=True,
    ),
    Command("forget", "Delete every message you sent me", private=True),
)


def find(name: str) -> Command | None:
    """The table entry called `name` (case and a leading slash ignored)."""
    wanted = name.lower().lstrip("/")
    return next((command for command in COMMANDS if command.name == wanted), None)


def commands_for(platform: str) -> list[Command]:
    """The commands `platform` offers, in table order."""
    return [command for command in COMMANDS if command.available_on(platform)]


_ACCESS_NOTES = {
    Access.EVERYONE: "",
    Access.OWNER: " (in groups, admins change it)",
    Access.ADMIN: " (admins)",
}


def help_text(bot_name: str, platform: str) -> str:
    """The /help answer, from the table."""
    lines = [f"Hi, I'm {bot_name}. Talk to me by text or voice note."]
    for command in commands_for(platform):
        if command.name in ("start", "help"):
            continue
        for entry in command.subcommands or (command,):
            usage = f"/{command.name} {entry.usage[1:]}" if entry is not command else entry.usage
            note = _ACCESS_NOTES[entry.change_access or entry.access]
            lines.append(f"{usage} — {entry.help[:1].lower()}{entry.help[1:]}{note}")
    return "\n".join(lines)


Handler = Callable[[IncomingMessage, int, str], Awaitable[str]]


class Commands:
    """Runs the table's commands against the store; every refusal is audited."""

    def __init__(self, settings: Settings, store: HistoryStore) -> None:
        self.settings = settings
        self.store = store
        self._blocked = frozenset(settings.engine.blocked_users)
        self._handlers: dict[str, Handler] = {
            "start": self._help,
            "help": self._help,
            "reset": self._reset,
            "persona": self._persona,
            "voice": self._voice,
            "config show": self._config_show,
            "config set": self._config_set,
            "forget": self._forget,
        }
        missing = [
            key for key in self._table_keys() if key not in self._handlers
        ]  # a table entry without a handler is a programming error: fail at start, not in chat
        if missing:
            raise RuntimeError(f"commands without a handler: {', '.join(missing)}")

    @staticmethod
    def _table_keys() -> list[str]:
        keys = []
        for command in COMMANDS:
            if command.turn:
                continue
            if command.subcommands:
                keys += [f"{command.name} {sub.name}" for sub in command.subcommands]
            else:
                keys.append(command.name)
        return keys

    async def run(self, msg: IncomingMessage, name: str, args: str = "") -> str:
        """Run a chat command and return its reply text (refusals included)."""
        command = find(name)
        if command is None or command.turn or not command.available_on(msg.platform):
            return f"Unknown command /{name.lower().lstrip('/')}. Try /help."
        if f"{msg.platform}:{msg.user_id}" in self._blocked:
            return MSG_BLOCKED
        args = args.strip()
        key = command.name
        if command.subcommands:
            verb, _, rest = args.partition(" ")
            sub = next((s for s in command.subcommands if s.name == (verb or "show")), None)
            if sub is None:
                return f"Usage: {command.usage}"
            command, key, args = sub, f"{command.name} {sub.name}", rest.strip()
        try:
            channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
            needed = command.change_access if args and command.change_access else command.access
            if not needed.allows(msg):
                await self._audit_refusal(msg, channel_id, key, command, args)
                return _refusal(key)
            return await self._handlers[key](msg, channel_id, args)
        except StorageError as exc:  # the store logged it, once per kind of failure
            return MSG_NOT_SAVED.format(trouble=storage_trouble(exc.problem))

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

    async def channel_settings(self, channel_id: int) -> ChannelSettings:
        """A chat's settings: the engine defaults with its overrides."""
        return await ChannelSettings.load(self.store, self.settings.engine, channel_id)

    async def set_value(self, msg: IncomingMessage, channel_id: int, key: str, raw: str) -> str:
        """Validate and store one chat setting, audited; the answer says what changed or why not."""
        try:
            value = parse_channel_value(self.settings.engine, key, raw)
        except ValueError as exc:
            return f"Can't set {key}: {exc}."
        if key == "stt_language" and value != "auto" and not await _known_language(value):
            return (
                f"Can't set stt_language: {value!r} is not a language Whisper knows "
                "(use a code like en, de, fr, or auto)."
            )
        old = getattr(await self.channel_settings(channel_id), key, None)
        await self.store.set_channel_setting(
            channel_id, key, value, actor_id=msg.user_id, actor_name=msg.user_name, old=old
        )
        return f"{key} is now {_show(value)} (was {_show(old)}). It applies from the next message."

    # -- handlers, one per table entry -----------------------------------------------------

    async def _help(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        return help_text(self.settings.engine.bot_name, msg.platform)

    async def _reset(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        deleted = await self.store.clear_channel(
            channel_id, actor_id=msg.user_id, actor_name=msg.user_name
        )
        return f"Conversation cleared ({deleted} messages). Let's start over."

    async def _forget(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        deleted = await self.store.forget_author(
            msg.platform, msg.user_id, actor_name=msg.user_name
        )
        return f"Deleted {deleted} of your messages."

    async def _persona(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        if not args:
            current = (await self.channel_settings(channel_id)).persona
            return f"Persona: {_show(current)}. Presets: {', '.join(PERSONAS)}; or any text."
        return await self.set_value(msg, channel_id, "persona", args)

    async def _voice(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        if not args:
            mode = (await self.channel_settings(channel_id)).voice_mode
            return f"Voice replies: {mode} ({' | '.join(VOICE_MODES)})."
        return await self.set_value(msg, channel_id, "voice_mode", args)

    async def _config_show(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        settings = await self.channel_settings(channel_id)
        lines = [f"{key} = {_show(getattr(settings, key))}" for key in CHANNEL_KEYS]
        return "Settings for this chat:\n" + "\n".join(lines)

    async def _config_set(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        key, _, value = args.partition(" ")
        if not key or not value.strip():
            return f"Usage: /config set KEY VALUE. Keys: {', '.join(CHANNEL_KEYS)}"
        return await self.set_value(msg, channel_id, key, value)


_REFUSALS = {
    "persona": "Only admins can change the persona here.",
    "voice": "Only admins can change voice replies here.",
    "config set": "Sorry, only admins can change settings.",
}


def _refusal(key: str) -> str:
    return _REFUSALS.get(key, f"Sorry, only admins can use /{key} here.")


async def _known_language(code: str) -> bool:
    from bot.speech.stt import language_codes  # imports faster-whisper: off the event loop

    return code in await asyncio.to_thread(language_codes)


def _show(value: object) -> str:
    text = str(value)
    return repr(text[:60] + "…") if len(text) > 60 else repr(text) if text == "" else text
