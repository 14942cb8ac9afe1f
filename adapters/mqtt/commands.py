"""The command table in a request's text: `/reset`, `/help`... as in any chat."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.command_table import Command, find

PLATFORM = "mqtt"


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A request that runs a command: the command and the text after its name."""

    command: Command
    args: str


def parse(text: str, commands: Iterable[Command]) -> CommandCall | None:
    """The command `text` runs, if it starts with the name of one the bridge offers.

    Other text starting with "/" is a message like any other (the console does the same).
    """
    if not text.startswith("/"):
        return None
    name, *rest = text[1:].split(None, 1) or [""]
    command = find(commands, name)
    return CommandCall(command, rest[0].strip() if rest else "") if command is not None else None
