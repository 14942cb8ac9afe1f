"""A tool call's outcome as the model sees it: text, capped, with errors said in words."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from mcp.types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

Outcome = Literal["ok", "tool_error", "timeout", "unavailable", "bad_arguments", "unknown_tool"]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call gave back: its text (or what went wrong), whether it worked, its duration in
    seconds (Parley's part included), how it ended and the server that answered ("" if none)."""

    text: str
    ok: bool
    duration: float
    outcome: Outcome
    server: str


def result_text(result: CallToolResult) -> str:
    """The text of a tool's answer; pictures and sound are named, not inlined (the model reads
    text only here)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent | AudioContent):
            parts.append(f"[{block.type} ({block.mime_type}) not shown]")
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource: {block.uri}]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource: {resource.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts) if parts else "(no output)"


def cap(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars`, saying how much was left out."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[output cut: {len(text) - max_chars} more characters]"
