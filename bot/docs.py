"""The reference pages written from the code: docs/configuration.md and docs/commands.md.

`python -m bot.docs` (or `make docs`) rewrites them. The settings page comes from the settings
models (each field's docstring is its description), the commands page from the command table; the
output depends on nothing else, so tests/test_docs.py can tell when a committed page is stale.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from bot.app import full_settings_class, platform_commands
from bot.command_table import Access, Command, Param, table
from bot.config import PlatformSettings, Settings
from bot.memory import MAX_MEMORIES_PER_USER, MAX_MEMORY_CHARS
from bot.messages import say
from bot.sessions import AUTO_NAME, EXPORT_MAX_BYTES, EXPORT_MAX_MESSAGES

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The console chat (adapters/console.py) offers commands too, but is not a platform package.
CONSOLE = "console"
_GENERATED = (
    "<!-- Written by `python -m bot.docs` (`make docs`) from {source}: "
    "change those, then run `make docs`; do not edit this page. -->"
)


def anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lowercase, no punctuation, - for spaces."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _fold(text: str) -> str:
    """Text on one line, whitespace folded, `<` shown as text outside code spans."""
    parts = " ".join(text.split()).split("`")
    parts[::2] = [part.replace("<", "&lt;") for part in parts[::2]]
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text as one table cell: folded, pipes escaped."""
    return _fold(text).replace("|", "\\|")


def _doc_links(text: str) -> str:
    """`docs/x.md` named in a docstring, as a link between the pages of docs/."""
    return re.sub(r"\bdocs/([\w-]+\.md)\b", r"[\1](\1)", text)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class _Section:
    key: str  # as in TOML: "llm", "llm.server", "llm.models.NAME"
    model: type[BaseModel]


def settings_model() -> type[Settings]:
    """`Settings` with every platform's section, as the running bot composes it."""
    model = full_settings_class()
    if not (isinstance(model, type) and issubclass(model, Settings)):
        raise TypeError(f"full_settings_class() gave {model!r}, not a Settings class")
    return model


def platform_names() -> list[str]:
    """The platforms' names, in the order their settings sections are composed."""
    return [
        field.annotation.NAME
        for field in settings_model().model_fields.values()
        if isinstance(field.annotation, type) and issubclass(field.annotation, PlatformSettings)
    ]


def _sections() -> Iterator[_Section]:
    """Every settings table, each followed by the tables nested in it."""

    def walk(key: str, model: type[BaseModel]) -> Iterator[_Section]:
        yield _Section(key, model)
        for name, field in model.model_fields.items():
            if (nested := _model_of(field.annotation)) is not None:
                yield from walk(f"{key}.{name}", nested)
            elif (entry := _dict_entry_model(field.annotation)) is not None:
                yield from walk(f"{key}.{name}.NAME", entry)

    for name, field in settings_model().model_fields.items():
        model = _model_of(field.annotation)
        if model is None:
            raise TypeError(f"settings field {name} is not a section")
        yield from walk(name, model)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _dict_entry_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a keyed table's entries (`dict[str, Model]`), else None."""
    if get_origin(annotation) is not dict:
        return None
    return _model_of(get_args(annotation)[1])


def env_name(key: str) -> str:
    """The environment variable that sets a dotted key, e.g. PARLEY_LLM__SERVER__MODEL_PATH."""
    config = Settings.model_config
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter") or "__"
    parts = [part if part != "NAME" else "<NAME>" for part in key.split(".")]
    return prefix + delimiter.join(part.upper() for part in parts)


def _type_name(annotation: Any) -> str:
    if annotation is SecretStr:
        return "string, **secret**"
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in simple:
        return simple[annotation]
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in get_args(annotation))
    if origin is list:
        item = get_args(annotation)[0]
        if get_origin(item) is Literal:
            return "list of " + _type_name(item).removeprefix("one of ")
        return f"list of {_type_name(item)}s"
    if _dict_entry_model(annotation) is not None:
        return "tables"
    if origin is dict:
        key, value = get_args(annotation)
        return f"table of {_type_name(key)} to {_type_name(value)}"
    raise TypeError(f"no documentation name for the type {annotation!r}")


def _bounds(field: FieldInfo) -> str:
    """A field's numeric limits, e.g. "0 to 65535" or "> 0"."""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                found[name] = getattr(item, name)
    if "ge" in found and "le" in found:
        return f"{found['ge']} to {found['le']}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{signs[name]} {value}" for name, value in found.items())


def _toml(value: Any) -> str:
    """A default as it is written in config.toml."""
    if isinstance(value, SecretStr):
        return '""' if not value.get_secret_value() else '"**********"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table
        items = (f"{_toml_key(str(key))} = {_toml(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML form for the default {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _field_row(section: _Section, name: str, field: FieldInfo) -> str:
    key = f"{section.key}.{name}"
    kind = _type_name(field.annotation)
    if bounds := _bounds(field):
        kind += f" ({bounds})"
    description = _doc_links(_cell(field.description or ""))
    if _dict_entry_model(field.annotation) is not None:
        description += f" See [`[{key}.NAME]`](#{anchor(f'[{key}.NAME]')})."
    default = _toml(field.get_default(call_default_factory=True))
    return f"| `{name}` | {kind} | `{default}` | `{env_name(key)}` | {description} |"


_CONFIG_INTRO = """\
Settings come from a TOML file (`--config PATH`, else `$PARLEY_CONFIG`, else `./config.toml`,
else the defaults below); `config.example.toml` lists every key with its default. Any key can be
set by an environment variable instead, which wins over the file: `PARLEY_<SECTION>__<KEY>`, one
`__` per level (`PARLEY_LLM__SERVER__MODEL_PATH`). Lists and tables in a variable are JSON, e.g.
`PARLEY_DISCORD__SHARD_IDS='[1]'`.

Keys marked **secret** (tokens, API keys, passwords, a database URL) print as `**********` and
never reach logs, replies, pages or the database: prefer environment variables for them.

An invalid configuration stops Parley with exit code 2 and one line per problem, naming the key,
the value and why (secret values are never shown); an unknown key gets a "did you mean":

```
config: llm.base_url = 'localhost:8080': must start with http:// or https://
config: engine.temperature = 7: Input should be less than or equal to 2
```
"""


def configuration_page() -> str:
    """docs/configuration.md: every settings table and key."""
    sections = list(_sections())
    lines = [
        "# Configuration",
        "",
        _GENERATED.format(source="the settings models (bot/config.py, adapters/*/config.py)"),
        "",
        _CONFIG_INTRO,
        "| section | what it holds |",
        "|---|---|",
    ]
    for section in sections:
        title = f"[{section.key}]"
        about = _cell(section.model.__doc__ or "")
        lines.append(f"| [`{title}`](#{anchor(title)}) | {about} |")
    for section in sections:
        lines += ["", f"## `[{section.key}]`", ""]
        if section.model.__doc__:
            lines += [_fold(section.model.__doc__), ""]
        lines += [
            "| key | type | default | environment variable | description |",
            "|---|---|---|---|---|",
        ]
        for name, field in section.model.model_fields.items():
            if _model_of(field.annotation) is None:
                lines.append(_field_row(section, name, field))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- commands


def command_surfaces() -> dict[str, list[Command]]:
    """Each place that offers commands (every platform, then the console) and what it offers.

    The one place this module reads the command table.
    """
    own = platform_commands()
    return {surface: list(table(own[surface])) for surface in [*platform_names(), CONSOLE]}


# What the table's one-line help cannot say, by command name. A name the table lacks is an error,
# so a renamed command cannot leave its note behind.
_NOTES = {
    "start": "Telegram sends it when someone opens the bot; it answers as `/help` does.",
    "ask": (
        "On Discord the reply streams into the command's response; in a Telegram group with "
        "privacy mode on, this is how to talk to the bot without a mention."
    ),
    "reset": "Only the current session is forgotten; the chat's other sessions stay.",
    "persona": "A change applies to the next message, no restart, and is written to the audit log.",
    "config": (
        "`/config set` applies to the next message, no restart, and is written to the audit log "
        "(who, when, old and new value)."
    ),
    "forget": (
        "Deletes every message the caller sent the bot on this platform, in every chat, and every "
        "fact it remembers about them."
    ),
    "remember": (
        f"Up to {MAX_MEMORY_CHARS} characters a fact, {MAX_MEMORIES_PER_USER} facts a user. Facts "
        "are private: used when you talk to the bot in a private chat, until `/memory share` "
        "lets one be used in groups. See [Memory and sessions](memory-and-sessions.md)."
    ),
    "memory": (
        "A bare `/memory` lists your facts (on Discord, `/memory show`). In a Telegram group it "
        "refuses, to keep them private; Discord answers only you. `/memory forget` is audited."
    ),
    "model": (
        "The models set up as `[llm.models.NAME]` tables; a pick is stored with the chat's "
        "settings and audited (`/model default` goes back). See "
        "[LLM servers](llm-servers.md#models-per-chat)."
    ),
    "tools": (
        "Lists the tools of the servers in `[tools]` that this chat's model is offered, or why "
        "there are none: no servers configured, tools off in this chat (`/config set tools on`), "
        "or a base model that cannot call tools. See [Tools](tools.md)."
    ),
    "session": (
        "`/session list` shows each conversation's messages, last day, and which one is current. "
        f"`/session new` without a name: `{AUTO_NAME.format(n=2)}`, `{AUTO_NAME.format(n=3)}`…; "
        "the first conversation is `main`. `/session export` sends the newest "
        f"{EXPORT_MAX_MESSAGES:,} messages, under {EXPORT_MAX_BYTES // 2**20} MiB, as a Markdown "
        "file. `/session new` and `/session resume` are audited."
    ),
    "join": (
        "The allow lists and `discord.voice_channels` apply. "
        "See [Voice channels](voice-channels.md)."
    ),
    "leave": "Leaves the server's voice channel.",
}

_WHO = {
    Access.EVERYONE: "everyone",
    Access.OWNER: "admins, or anyone in their own private chat",
    Access.ADMIN: "admins only",
}

_COMMANDS_INTRO = """\
The same commands everywhere, from one table (`bot/commands.py`): slash commands on Discord, the
command menu and `/commands` on Telegram, `/commands` in the console. `/help` lists what the place
it is asked in offers.
"""

_ADMINS = """\
## Who is an admin

- **Telegram**: the user ids in `telegram.admin_ids`.
- **Discord**: members with the Manage Server permission, and the ids in `discord.admin_ids` and
  `discord.admin_role_ids`.
- **Console**: you.

Allow lists (`telegram.allowed_user_ids`, `telegram.allowed_chat_ids`;
`discord.allowed_user_ids`, `discord.allowed_channel_ids`; empty: everyone) never lock out the ids
in `admin_ids`; `engine.blocked_users` wins over everything. Every `/config set`, refusal, reset
and forget is written to the audit log (who, when, old and new value), and so are
`/memory forget`, `/session new` and `/session resume`.

The `parley` command line (`run`, `chat`, `migrate`, `doctor`, `healthcheck`,
`admin set-password`) is on [Operations](operations.md#the-parley-command).
"""


def _who(command: Command) -> str:
    if command.change_access is None:
        return _WHO[command.access]
    return f"to show, {_WHO[command.access]}; to change, {_WHO[command.change_access]}"


def _param_lines(param: Param, owner: str) -> list[str]:
    if param.kind == "flag":
        kind = "a true/false option of the slash command"
    else:
        kind = "required" if param.required else "optional"
    line = f"- {owner}`{param.metavar or param.name}` ({kind}): {say(param.about)}"
    if param.labels:
        return [line, *(f"  - `{key}`:{about}" for key, _, about in map(_split, param.labels))]
    if param.choices:
        line += "; one of " + ", ".join(f"`{choice}`" for choice in param.choices)
    return [line]


def _split(label: str) -> tuple[str, str, str]:
    """A choice's label, "key: about", in its parts."""
    return label.partition(":")


def _usage(command: Command, entry: Command) -> str:
    return entry.usage if entry is command else f"/{command.name} {entry.usage[1:]}"


_PRIVATE = "Answered to the caller alone where the platform can (Discord)."


def _command_section(command: Command, surfaces: dict[str, list[Command]]) -> list[str]:
    where = [surface for surface, offered in surfaces.items() if command in offered]
    lines = [f"### /{command.name}", "", f"{say(command.about)}."]
    if len(where) < len(surfaces):
        lines[-1] += f" Only on {' and '.join(where)}."
    params: list[str] = []
    if not command.subcommands:
        lines += ["", f"- Usage: `{command.usage}`", f"- Who: {_who(command)}"]
        if command.private:
            lines.append(f"- {_PRIVATE}")
        for param in command.params:
            params += _param_lines(param, "")
    else:
        lines += ["", "| usage | who | what |", "|---|---|---|"]
        for entry in command.subcommands:
            what = say(entry.about)
            if entry.private and not all(sub.private for sub in command.subcommands):
                what += " (answered to the caller alone where the platform can)"
            lines.append(f"| `{_cell(_usage(command, entry))}` | {_who(entry)} | {_cell(what)} |")
            for param in entry.params:
                params += _param_lines(param, f"`/{command.name} {entry.name}` ")
        if all(sub.private for sub in command.subcommands):
            lines += ["", _PRIVATE]
    if params:
        lines += ["", "Arguments:", "", *params]
    if note := _NOTES.get(command.name):
        lines += ["", note]
    return lines


def _merged(lists: list[list[Command]]) -> list[Command]:
    """Every command of `lists` once, each list's order kept (each joins after its predecessor)."""
    merged: list[Command] = []
    for offered in lists:
        for i, command in enumerate(offered):
            if command not in merged:
                merged.insert(merged.index(offered[i - 1]) + 1 if i else 0, command)
    return merged


def commands_page() -> str:
    """docs/commands.md: every command, who may use it, and where it is offered."""
    surfaces = command_surfaces()
    commands = _merged(list(surfaces.values()))
    unknown = sorted(set(_NOTES) - {command.name for command in commands})
    if unknown:
        raise LookupError(f"notes for commands the table does not have: {', '.join(unknown)}")
    names = list(surfaces)
    lines = [
        "# Commands",
        "",
        _GENERATED.format(source="the command table (bot/commands.py)"),
        "",
        _COMMANDS_INTRO,
        "## Where each command is offered",
        "",
        "| command | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for command in commands:
        marks = ["yes" if command in surfaces[name] else "" for name in names]
        link = f"[`/{command.name}`](#{anchor('/' + command.name)})"
        lines.append(f"| {link} | " + " | ".join(marks) + " |")
    lines += ["", "## Every command"]
    for command in commands:
        lines += ["", *_command_section(command, surfaces)]
    lines += ["", _ADMINS.rstrip()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the pages


def pages() -> dict[Path, str]:
    """Each generated page and its text."""
    return {
        DOCS / "configuration.md": configuration_page(),
        DOCS / "commands.md": commands_page(),
    }


def main() -> int:
    """Rewrite the generated pages; print the ones that changed."""
    for path, text in pages().items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
