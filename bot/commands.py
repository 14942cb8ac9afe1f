"""Chat commands: one table (name, parameters, who may use them, help) and their handlers.

Every surface renders from `COMMANDS`: `/help` here, Telegram's `setMyCommands`, Discord's slash
commands and the console; `Commands.run` is the one dispatch, and it checks who asks every time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from bot.channel_config import CHANNEL_KEYS, MODEL_KEY, ChannelSettings, parse_channel_value
from bot.config import Settings
from bot.errors import StorageError, storage_trouble
from bot.llm import estimate_tokens
from bot.memory import MAX_MEMORIES_PER_USER, MAX_MEMORY_CHARS
from bot.models import DEFAULT_MODEL
from bot.personas import PERSONAS
from bot.sessions import AUTO_NAME, EXPORT_MAX_MESSAGES, export_markdown, normalise_name
from bot.storage import MAIN_SESSION, HistoryStore, Memory, Session
from bot.types import IncomingMessage, OutgoingFile

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

_MEMORY_ID = Param("id", "a fact's id from /memory, or all", required=True, metavar="ID|all")

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
    Command(
        "forget", "Delete every message you sent me and what I remember about you", private=True
    ),
    Command(
        "remember",
        "Remember a fact about you, for every chat where you talk to me",
        params=(Param("fact", "what to remember, e.g. I'm vegetarian", required=True),),
        private=True,
    ),
    Command(
        "memory",
        "What I remember about you",
        subcommands=(
            Command("show", "List what I remember about you, with ids", private=True),
            Command("forget", "Forget a fact, or all of them", params=(_MEMORY_ID,), private=True),
            Command(
                "share",
                "Use a fact in group chats too",
                params=(_MEMORY_ID,),
                private=True,
            ),
            Command(
                "private",
                "Use a fact in private chats only (the default)",
                params=(_MEMORY_ID,),
                private=True,
            ),
        ),
        private=True,
    ),
    Command(
        "model",
        "Show the models, or pick one for this chat",
        params=(Param("name", "a model from /model, or default"),),
        change_access=Access.OWNER,
        setting=MODEL_KEY,
    ),
    Command(
        "session",
        "This chat's conversations: start a new one, list, resume, export",
        subcommands=(
            Command("list", "This chat's conversations"),  # the first: what a bare /session does
            Command(
                "new",
                "Start a new conversation (this one is kept)",
                params=(Param("name", "a name for it: letters, digits, - and _"),),
                access=Access.OWNER,
            ),
            Command(
                "resume",
                "Go back to a conversation",
                params=(Param("name", "its name, from /session list", required=True),),
                access=Access.OWNER,
            ),
            Command("export", "This conversation as a Markdown file"),
        ),
    ),
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


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A command's answer: its text, and files to send with it (e.g. an export)."""

    text: str
    files: tuple[OutgoingFile, ...] = ()


Handler = Callable[[IncomingMessage, int, str], Awaitable["str | CommandReply"]]


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
            "remember": self._remember,
            "model": self._model,
            "memory show": self._memory_show,
            "memory forget": self._memory_forget,
            "memory share": self._memory_share,
            "memory private": self._memory_private,
            "session new": self._session_new,
            "session list": self._session_list,
            "session resume": self._session_resume,
            "session export": self._session_export,
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
        return (await self.execute(msg, name, args)).text

    async def execute(self, msg: IncomingMessage, name: str, args: str = "") -> CommandReply:
        """Run a chat command: its reply text and the files that go with it (an export)."""
        command = find(name)
        if command is None or command.turn or not command.available_on(msg.platform):
            return CommandReply(f"Unknown command /{name.lower().lstrip('/')}. Try /help.")
        if f"{msg.platform}:{msg.user_id}" in self._blocked:
            return CommandReply(MSG_BLOCKED)
        args = args.strip()
        key = command.name
        if command.subcommands:
            verb, _, rest = args.partition(" ")
            # A bare /config, /memory, /session runs the first subcommand: show, show, list.
            default = command.subcommands[0].name
            sub = next((s for s in command.subcommands if s.name == (verb or default)), None)
            if sub is None:
                return CommandReply(f"Usage: {command.usage}")
            command, key, args = sub, f"{command.name} {sub.name}", rest.strip()
        try:
            channel_id = await self.store.channel_id(msg.platform, msg.channel_key)
            needed = command.change_access if args and command.change_access else command.access
            if not needed.allows(msg):
                await self._audit_refusal(msg, channel_id, key, command, args)
                return CommandReply(_refusal(key))
            reply = await self._handlers[key](msg, channel_id, args)
        except StorageError as exc:  # the store logged it, once per kind of failure
            return CommandReply(MSG_NOT_SAVED.format(trouble=storage_trouble(exc.problem)))
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
        facts = await self.store.forget_memories(
            msg.platform, msg.user_id, None, actor_name=msg.user_name
        )
        deleted = await self.store.forget_author(
            msg.platform, msg.user_id, actor_name=msg.user_name
        )
        also = (
            f" I also forgot the {_count(facts, 'fact')} you asked me to remember." if facts else ""
        )
        return f"Deleted {deleted} of your messages.{also}"

    # -- model -----------------------------------------------------------------------------

    async def _model(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        models = self.settings.llm.models
        current = (await self.channel_settings(channel_id)).model or DEFAULT_MODEL
        if current != DEFAULT_MODEL and current not in models:
            current = DEFAULT_MODEL  # picked once, since taken out of the configuration
        if not args:
            lines = ["Models:", _model_line(DEFAULT_MODEL, "the bot's default", current)]
            lines += [
                _model_line(name, entry.about or entry.model, current)
                for name, entry in models.items()
            ]
            lines.append(
                "/model NAME picks one for this chat (admins do in groups)."
                if models
                else "Only the default is set up here ([llm.models] in the config adds more)."
            )
            return "\n".join(lines)
        name = args.strip().lower()
        if name != DEFAULT_MODEL and name not in models:
            return f"There is no model called “{args.strip()}”. /model lists them."
        await self.store.set_channel_setting(
            channel_id, MODEL_KEY, name, actor_id=msg.user_id, actor_name=msg.user_name, old=current
        )
        return f"This chat now uses {name} (was {current}). It applies from the next message."

    # -- memory ----------------------------------------------------------------------------

    async def _remember(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        fact = " ".join(args.split())
        if not fact:
            return "Usage: /remember TEXT, e.g. /remember I'm vegetarian"
        if len(fact) > MAX_MEMORY_CHARS:
            return (
                f"That's too long to remember ({len(fact)} characters; the limit is "
                f"{MAX_MEMORY_CHARS}). Please shorten it."
            )
        if len(await self.store.memories(msg.platform, msg.user_id)) >= MAX_MEMORIES_PER_USER:
            return (
                f"I already remember {MAX_MEMORIES_PER_USER} facts about you, the most I keep. "
                "/memory forget ID makes room."
            )
        fact_id = await self.store.remember(
            msg.platform,
            msg.user_id,
            fact,
            token_count=estimate_tokens(fact),
            actor_name=msg.user_name,
        )
        return (
            f"I'll remember that (#{fact_id}). It stays private: I use it when you talk to me "
            f"in a private chat. /memory share {fact_id} lets me use it in groups too."
        )

    async def _memory_show(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        if not (msg.is_private or msg.private_reply):
            return (
                "To keep them private, I list what I remember about you only where nobody else "
                "can read it: in a private chat with me."
            )
        memories = await self.store.memories(msg.platform, msg.user_id)
        if not memories:
            return "I don't remember anything about you yet. /remember TEXT adds a fact."
        lines = [f"What I remember about you ({len(memories)}):"]
        lines += [_memory_line(memory) for memory in memories]
        lines.append("/memory forget ID|all · /memory share ID|all · /memory private ID|all")
        return "\n".join(lines)

    async def _memory_forget(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        try:
            which = _memory_id(args)
        except ValueError:
            return "Usage: /memory forget ID|all (the ids are in /memory)"
        deleted = await self.store.forget_memories(
            msg.platform, msg.user_id, which, actor_name=msg.user_name
        )
        if which is None:
            return (
                f"Forgot {_count(deleted, 'fact')}." if deleted else "There was nothing to forget."
            )
        return f"Forgot fact #{which}." if deleted else f"You have no fact #{which}."

    async def _memory_share(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        return await self._set_shared(msg, args, shared=True)

    async def _memory_private(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        return await self._set_shared(msg, args, shared=False)

    async def _set_shared(self, msg: IncomingMessage, args: str, *, shared: bool) -> str:
        verb = "share" if shared else "private"
        try:
            which = _memory_id(args)
        except ValueError:
            return f"Usage: /memory {verb} ID|all (the ids are in /memory)"
        changed = await self.store.share_memories(msg.platform, msg.user_id, which, shared=shared)
        where = "in groups too" if shared else "only in private chats"
        if which is None:
            return (
                f"I'll use {_count(changed, 'fact')} {where}."
                if changed
                else "You have no facts yet."
            )
        return f"I'll use fact #{which} {where}." if changed else f"You have no fact #{which}."

    # -- sessions --------------------------------------------------------------------------

    async def _session_new(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        sessions = await self.store.sessions(channel_id)
        taken = {session.name for session in sessions}
        if args:
            name = normalise_name(args)
            if name is None:
                return "A conversation's name is one word of letters, digits, - and _ (up to 40)."
        else:
            number = len(sessions) + 1
            while AUTO_NAME.format(n=number) in taken:
                number += 1
            name = AUTO_NAME.format(n=number)
        before = next((s.name for s in sessions if s.current), MAIN_SESSION)
        started = await self.store.new_session(
            channel_id, name, actor_id=msg.user_id, actor_name=msg.user_name
        )
        if started is None:
            return f"There is a conversation called “{name}” already: /session resume {name}."
        return (
            f"Started a new conversation, “{name}”. The one before is kept: "
            f"/session resume {before} goes back to it."
        )

    async def _session_list(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        sessions = await self.store.sessions(channel_id)
        lines = ["This chat's conversations:"]
        lines += [_session_line(session) for session in sessions]
        lines.append("/session resume NAME · /session new [NAME] · /session export")
        return "\n".join(lines)

    async def _session_resume(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        name = normalise_name(args)
        session = None
        if name is not None:
            session = await self.store.switch_session(
                channel_id, name, actor_id=msg.user_id, actor_name=msg.user_name
            )
        if session is None:
            return f"There is no conversation called “{args}” here. /session list shows them."
        return f"Back to “{session.name}” ({_count(session.messages, 'message')})."

    async def _session_export(
        self, msg: IncomingMessage, channel_id: int, args: str
    ) -> str | CommandReply:
        current = next(s for s in await self.store.sessions(channel_id) if s.current)
        rows = await self.store.session_messages(channel_id, current.id, EXPORT_MAX_MESSAGES)
        if not rows:
            return f"This conversation (“{current.name}”) is empty: nothing to export yet."
        file = await asyncio.to_thread(  # a long conversation is megabytes of text to build
            export_markdown,
            rows,
            session=current.name,
            chat=f"{msg.platform} chat {msg.channel_key}",
            bot_name=self.settings.engine.bot_name,
        )
        return CommandReply(f"Here is this conversation, “{current.name}”, as a file.", (file,))

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
    "model": "Only admins can change the model here.",
    "persona": "Only admins can change the persona here.",
    "voice": "Only admins can change voice replies here.",
    "config set": "Sorry, only admins can change settings.",
}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _memory_id(args: str) -> int | None:
    """A fact's id, or None for "all"; ValueError when `args` is neither."""
    word = args.strip().lower().lstrip("#")
    if word == "all":
        return None
    if not word.isdigit():
        raise ValueError(args)
    return int(word)


def _model_line(name: str, about: str, current: str) -> str:
    mark = " (this chat)" if name == current else ""
    return f"• {name}" + (f" — {about}" if about else "") + mark


def _memory_line(memory: Memory) -> str:
    where = " (also in groups)" if memory.shared else ""
    return f"#{memory.id}{where} {memory.content}"


def _session_line(session: Session) -> str:
    when = time.strftime("%Y-%m-%d", time.gmtime(session.last_at)) if session.last_at else ""
    about = _count(session.messages, "message") + (f", last {when}" if when else "")
    return f"• {session.name} — {about}" + (" (current)" if session.current else "")


def _refusal(key: str) -> str:
    return _REFUSALS.get(key, f"Sorry, only admins can use /{key} here.")


async def _known_language(code: str) -> bool:
    from bot.speech.stt import language_codes  # imports faster-whisper: off the event loop

    return code in await asyncio.to_thread(language_codes)


def _show(value: object) -> str:
    text = str(value)
    return repr(text[:60] + "…") if len(text) > 60 else repr(text) if text == "" else text
