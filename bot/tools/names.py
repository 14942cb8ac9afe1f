"""The names tools go by on the chat API: function names are `[A-Za-z0-9_-]{1,64}`, and a tool
name two servers share is told apart by its server's name (`server__tool`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

MAX_NAME_CHARS = 64  # OpenAI's limit for a function name
SEPARATOR = "__"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")


def function_name(text: str) -> str:
    """`text` as a valid function name."""
    return _NOT_ALLOWED.sub("_", text)[:MAX_NAME_CHARS] or "_"


def qualified_name(server: str, tool: str) -> str:
    """The name that always reaches `tool` of `server`, whatever the other servers offer."""
    return function_name(f"{server}{SEPARATOR}{tool}")


def assign_names(listings: Iterable[tuple[str, Iterable[str]]]) -> dict[str, tuple[str, str]]:
    """Function name -> (server, tool) for every tool of every (server, tool names) listing:
    a tool's own name when no other server's tool goes by it, else its qualified name."""
    pairs = [(server, tool) for server, tools in listings for tool in tools]
    counts = Counter(function_name(tool) for _, tool in pairs)
    names: dict[str, tuple[str, str]] = {}
    for server, tool in pairs:
        plain = function_name(tool)
        name = plain if counts[plain] == 1 else qualified_name(server, tool)
        names.setdefault(name, (server, tool))
    return names
