"""The command table: each command's name, parameters, who may use it, and its description.

`COMMANDS` are the core's, offered everywhere; a platform adds the commands only it has (its
`Platform.commands`, e.g. Telegram's /start, Discord's /join) and `table()` joins the two. Every
surface renders from a platform's table: /help, Telegram's `setMyCommands`, Discord's slash
commands and the console.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from bot.channel_config import CHANNEL_KEYS, MODEL_KEY
from bot.languages import ENGLISH
from bot.messages import Msg, Phrase, phrase, say
from bot.personas import PERSONAS
from bot.types import IncomingMessage, OutgoingFile

if TYPE_CHECKING:
    from collections.abc import Iterable

VOICE_MODES = ("off", "reply-to-voice", "always")
_CHOICES_SHOWN = 3  # usage lines list up to this many choices, else the parameter's name


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
    about: Msg | Phrase  # what it is, for menus that describe their options
    choices: tuple[str, ...] = ()
    required: bool = False
    kind: Literal["text", "flag", "voice_channel"] = "text"  # voice_channel: a channel picker
    metavar: str = ""  # how usage lines show it (default: the name in capitals)
    labels: tuple[str, ...] = ()  # a longer label per choice, for menus that show them


@dataclass(frozen=True, slots=True)
class Command:
    """One entry of the command table."""

    name: str
    about: Msg | Phrase  # one line: /help and the platforms' command menus
    params: tuple[Param, ...] = ()
    access: Access = Access.EVERYONE  # to run it at all
    change_access: Access | None = None  # to run it with arguments, which change something
    subcommands: tuple[Command, ...] = ()
    private: bool = False  # answered to the caller alone where the platform can (Discord)
    turn: bool = False  # not a command: its text is a message to answer (/ask)
    setting: str | None = None  # the chat setting its arguments change, for the audit log
    # Its handler comes from the platform that offers it (`Commands.provide`), e.g. /join,
    # which only the Discord adapter can carry out.
    by_platform: bool = False
    runs: str | None = None  # the core command whose handler it shares (/start runs /help's)

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


_KEY = Param(
    "key",
    Msg.PARAM_KEY,
    choices=tuple(CHANNEL_KEYS),
    labels=tuple(f"{key}: {about}" for key, about in CHANNEL_KEYS.items()),
    required=True,
)

_MEMORY_ID = Param("id", Msg.PARAM_FACT_ID, required=True, metavar="ID|all")

COMMANDS: tuple[Command, ...] = (
    Command("help", Msg.CMD_HELP, private=True),
    Command(
        "ask",
        Msg.CMD_ASK,
        params=(
            Param("prompt", Msg.PARAM_PROMPT, required=True),
            Param("voice", Msg.PARAM_VOICE, kind="flag"),
        ),
        turn=True,
    ),
    Command("reset", Msg.CMD_RESET),
    Command(
        "persona",
        Msg.CMD_PERSONA,
        params=(
            Param(
                "persona",
                phrase(Msg.PARAM_PERSONA, presets=", ".join(PERSONAS)),
                metavar="name or text",
            ),
        ),
        change_access=Access.OWNER,
        setting="persona",
    ),
    Command(
        "voice",
        Msg.CMD_VOICE,
        params=(Param("mode", Msg.PARAM_VOICE_MODE, choices=VOICE_MODES),),
        change_access=Access.OWNER,
        setting="voice_mode",
    ),
    Command(
        "config",
        Msg.CMD_CONFIG,
        subcommands=(
            Command("show", Msg.CMD_CONFIG_SHOW, private=True),
            Command(
                "set",
                Msg.CMD_CONFIG_SET,
                params=(_KEY, Param("value", Msg.PARAM_VALUE, required=True)),
                access=Access.ADMIN,
                private=True,
            ),
        ),
        private=True,
    ),
    Command("forget", Msg.CMD_FORGET, private=True),
    Command(
        "remember",
        Msg.CMD_REMEMBER,
        params=(Param("fact", Msg.PARAM_FACT, required=True),),
        private=True,
    ),
    Command(
        "memory",
        Msg.CMD_MEMORY,
        subcommands=(
            Command("show", Msg.CMD_MEMORY_SHOW, private=True),
            Command("forget", Msg.CMD_MEMORY_FORGET, params=(_MEMORY_ID,), private=True),
            Command("share", Msg.CMD_MEMORY_SHARE, params=(_MEMORY_ID,), private=True),
            Command("private", Msg.CMD_MEMORY_PRIVATE, params=(_MEMORY_ID,), private=True),
        ),
        private=True,
    ),
    Command(
        "model",
        Msg.CMD_MODEL,
        params=(Param("name", Msg.PARAM_MODEL),),
        change_access=Access.OWNER,
        setting=MODEL_KEY,
    ),
    Command("tools", Msg.CMD_TOOLS),
    Command(
        "session",
        Msg.CMD_SESSION,
        subcommands=(
            Command("list", Msg.CMD_SESSION_LIST),  # the first: what a bare /session does
            Command(
                "new",
                Msg.CMD_SESSION_NEW,
                params=(Param("name", Msg.PARAM_SESSION_NEW),),
                access=Access.OWNER,
            ),
            Command(
                "resume",
                Msg.CMD_SESSION_RESUME,
                params=(Param("name", Msg.PARAM_SESSION_RESUME, required=True),),
                access=Access.OWNER,
            ),
            Command("export", Msg.CMD_SESSION_EXPORT),
        ),
    ),
)

# A platform's greeting, for the platforms whose users start a chat with it (Telegram's "Start"
# button sends /start): it answers as /help does.
START = Command("start", Msg.CMD_START, runs="help")


def table(own: Sequence[Command] = ()) -> tuple[Command, ...]:
    """The commands a platform offers: its greeting first, the core's, then the rest of its own."""
    greetings = [command for command in own if command.runs == "help"]
    rest = [command for command in own if command.runs != "help"]
    return (*greetings, *COMMANDS, *rest)


def find(commands: Iterable[Command], name: str) -> Command | None:
    """The entry of `commands` called `name` (case and a leading slash ignored)."""
    wanted = name.lower().lstrip("/")
    return next((command for command in commands if command.name == wanted), None)


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A message that runs a command: the command and the text after its name."""

    command: Command
    args: str


def parse_call(text: str, commands: Iterable[Command]) -> CommandCall | None:
    """The command `text` runs, if it starts with the name of one of `commands`, for platforms
    where a command is plain text (MQTT, the HTTP API). Other text starting with "/" is a message
    like any other (as on the console)."""
    if not text.startswith("/"):
        return None
    name, *rest = text[1:].split(None, 1) or [""]
    command = find(commands, name)
    return CommandCall(command, rest[0].strip() if rest else "") if command is not None else None


_ACCESS_NOTES = {
    Access.EVERYONE: None,
    Access.OWNER: Msg.ACCESS_OWNER_NOTE,
    Access.ADMIN: Msg.ACCESS_ADMIN_NOTE,
}


def help_text(bot_name: str, commands: Iterable[Command], lang: str = ENGLISH) -> str:
    """The /help answer, from a platform's table, in `lang`."""
    lines = [say(Msg.HELP_INTRO, lang=lang, bot_name=bot_name)]
    for command in commands:
        if command.name == "help" or command.runs == "help":
            continue
        for entry in command.subcommands or (command,):
            usage = f"/{command.name} {entry.usage[1:]}" if entry is not command else entry.usage
            note = _ACCESS_NOTES[entry.change_access or entry.access]
            about = say(entry.about, lang=lang)
            lines.append(
                say(
                    Msg.HELP_LINE,
                    lang=lang,
                    usage=usage,
                    about=about[:1].lower() + about[1:],
                    note=say(note, lang=lang) if note is not None else "",
                )
            )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A command's answer: its text, and files to send with it (e.g. an export)."""

    text: str
    files: tuple[OutgoingFile, ...] = ()


# A command's handler: the message, the chat's channel id in the store, the arguments.
Handler = Callable[[IncomingMessage, int, str], Awaitable["str | CommandReply"]]
