"""Streamed tool calls: the `delta.tool_calls` pieces of a chat completion, put back together.

llama-server (and OpenAI) stream each call as pieces sharing an `index`: the first carries the
call's `id` and `function.name`, the following ones `function.arguments` in fragments. Pieces of
several calls may interleave; a call is whole when the stream ends (`finish_reason`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete call the model asked for; `arguments` is its JSON text, as written."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class _Partial:
    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Collects one streamed reply's `delta.tool_calls` pieces; `finish()` gives the calls."""

    def __init__(self) -> None:
        self._partials: dict[int, _Partial] = {}
        self._last_index = -1

    @property
    def started(self) -> bool:
        """True once the reply has streamed a piece of a tool call."""
        return bool(self._partials)

    def feed(self, pieces: Sequence[Mapping[str, Any]] | None) -> None:
        """Add one chunk's `choices[0].delta.tool_calls` (None or empty: nothing to add)."""
        for piece in pieces or ():
            partial = self._partials.setdefault(self._index_of(piece), _Partial())
            call_id = piece.get("id")
            if isinstance(call_id, str) and call_id and not partial.id:
                partial.id = call_id
            function = piece.get("function")
            if not isinstance(function, Mapping):
                continue
            name, arguments = function.get("name"), function.get("arguments")
            if isinstance(name, str) and name:
                partial.name.append(name)
            if isinstance(arguments, str):
                partial.arguments.append(arguments)

    def finish(self) -> list[ToolCall]:
        """The stream ended: every call in index order (a call without a name is dropped)."""
        calls = []
        for index in sorted(self._partials):
            partial = self._partials[index]
            name = "".join(partial.name)
            if not name:
                logger.warning("the model streamed a tool call without a name; it is ignored")
                continue
            call_id = partial.id or f"call_{uuid.uuid4().hex[:24]}"
            calls.append(ToolCall(call_id, name, "".join(partial.arguments).strip() or "{}"))
        return calls

    def _index_of(self, piece: Mapping[str, Any]) -> int:
        index = piece.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            self._last_index = max(self._last_index, index)
            return index
        # Servers that send one call per chunk may leave out the index: a new id opens a call,
        # anything else continues the latest one.
        call_id = piece.get("id")
        known = {p.id for p in self._partials.values()}
        if self._last_index < 0 or (isinstance(call_id, str) and call_id and call_id not in known):
            self._last_index += 1
        return self._last_index


def assemble(chunks: Iterable[Sequence[Mapping[str, Any]] | None]) -> list[ToolCall]:
    """The calls of a whole stream, given each chunk's `delta.tool_calls`."""
    assembler = ToolCallAssembler()
    for pieces in chunks:
        assembler.feed(pieces)
    return assembler.finish()
