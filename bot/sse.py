"""Server-sent events from OpenAI-compatible streaming endpoints, parsed without trusting them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class SSEDecoder:
    """Turns raw lines of an SSE stream into the payloads of its `data:` fields.

    `:` lines are keep-alive comments; a blank line ends an event; `[DONE]` ends the stream.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed_line(self, raw: bytes | str) -> str | None:
        """Consume one line; return an event's data when the line completes one."""
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """End the current event (blank line or end of stream)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


@dataclass(slots=True)
class ChunkDelta:
    """What one streamed chunk adds: answer text, reasoning text, pieces of tool calls, and the
    end-of-stream facts."""

    text: str = ""
    reasoning: str = ""
    # `delta.tool_calls` as sent: pieces of the calls the model makes (bot/tools/calls.py).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def parse_chunk(data: str) -> ChunkDelta:
    """Read one chat or completion chunk; malformed or unexpected JSON yields an empty delta."""
    try:
        obj = json.loads(data)
    except ValueError:
        return ChunkDelta()
    if not isinstance(obj, dict):
        return ChunkDelta()
    delta = ChunkDelta()
    if isinstance(obj.get("error"), dict | str):
        err = obj["error"]
        delta.error = str(err.get("message", err)) if isinstance(err, dict) else err
    if isinstance(obj.get("usage"), dict):
        delta.usage = obj["usage"]
    if isinstance(obj.get("timings"), dict):
        delta.timings = obj["timings"]
    choices = obj.get("choices")
    # The final usage chunk has "choices": [] (stream_options.include_usage).
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return delta
    choice = choices[0]
    if isinstance(choice.get("finish_reason"), str):
        delta.finish_reason = choice["finish_reason"]
    if isinstance(choice.get("text"), str):  # /v1/completions
        delta.text = choice["text"]
    message = choice.get("delta")
    if isinstance(message, dict):  # /v1/chat/completions
        if isinstance(message.get("content"), str):
            delta.text = message["content"]
        for key in ("reasoning_content", "reasoning"):
            if isinstance(message.get(key), str):
                delta.reasoning += message[key]
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            delta.tool_calls = [piece for piece in calls if isinstance(piece, dict)]
    return delta


class ThinkSplitter:
    """Moves `<think>...</think>` spans out of the answer text, even when tags straddle chunks."""

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Return (answer, reasoning) for this piece; a possible partial tag waits for more text."""
        buf = self._pending + text
        self._pending = ""
        answer: list[str] = []
        reasoning: list[str] = []
        while buf:
            tag = self.CLOSE if self._inside else self.OPEN
            idx = buf.find(tag)
            if idx >= 0:
                (reasoning if self._inside else answer).append(buf[:idx])
                buf = buf[idx + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _partial_suffix(buf, tag)
            (reasoning if self._inside else answer).append(buf[: len(buf) - keep])
            self._pending = buf[len(buf) - keep :]
            break
        return "".join(answer), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """End of stream: a dangling partial tag is plain text after all."""
        pending, self._pending = self._pending, ""
        return ("", pending) if self._inside else (pending, "")


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
