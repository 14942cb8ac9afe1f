"""Every configured MCP server behind one door: the tools in the chat API's format, and `call()`,
which always returns a result (never raises, never outlives `tools.timeout_s`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, Tool

from bot.backoff import Backoff
from bot.tools.names import assign_names, qualified_name
from bot.tools.result import Outcome, ToolResult, cap, result_text
from bot.tools.server import (
    START_TIMEOUT_S,
    ServerStatus,
    ServerUnavailable,
    ToolServer,
    restart_backoff,
)
from bot.tools.settings import ToolsSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One call for the audit log: who, which tool, how long, how it ended; never its arguments
    or its output."""

    chat: str
    tool: str
    server: str  # empty for an unknown tool
    duration: float
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool as `/tools` lists it."""

    name: str  # the name the model calls it by
    server: str
    description: str


AuditHook = Callable[[ToolCallRecord], None]


class ToolHub:
    """The configured MCP servers: `start()`, `openai_tools()`, `call()`, `status()`, `aclose()`."""

    def __init__(
        self,
        settings: ToolsSettings,
        *,
        audit: AuditHook | None = None,
        backoff: Callable[[], Backoff] = restart_backoff,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self._audit = audit
        self._servers = {
            name: ToolServer(
                name,
                server,
                probe_timeout_s=settings.timeout_s,
                start_timeout_s=start_timeout_s,
                backoff=backoff(),
            )
            for name, server in settings.servers.items()
        }

    async def start(self) -> None:
        """Start (or connect to) every server in the background; returns at once."""
        for server in self._servers.values():
            server.start()

    async def wait_settled(self, timeout_s: float) -> None:
        """Until every server's first start has succeeded or failed, at most `timeout_s`."""
        if not self._servers:
            return
        waits = [asyncio.ensure_future(s.wait_settled()) for s in self._servers.values()]
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for wait in pending:
            wait.cancel()

    def tools(self) -> list[ToolInfo]:
        """The tools the model may call, from each server's latest listing."""
        return [
            ToolInfo(name, server, tool.description or "")
            for name, (server, tool) in self._named_tools().items()
        ]

    def openai_tools(self) -> list[dict[str, Any]]:
        """The same tools as the chat API's `tools` parameter (OpenAI's function format)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": tool.description or "",
                    "parameters": tool.input_schema,
                },
            }
            for name, (_, tool) in self._named_tools().items()
        ]

    def status(self) -> list[ServerStatus]:
        """Each server's state now, in configuration order."""
        return [server.status() for server in self._servers.values()]

    async def call(self, name: str, arguments: str, *, chat: str = "") -> ToolResult:
        """Run the tool the model named with its JSON `arguments`: an error result (never an
        exception) for an unknown tool, bad arguments, a failed or silent server."""
        started = time.perf_counter()
        target = self._resolve(name)
        if target is None:
            known = ", ".join(self._named_tools()) or "none"
            text = f"Error: there is no tool named {name!r} (tools: {known})."
            return self._finish(chat, name, "", started, "unknown_tool", text)
        server, tool = target
        try:
            args = _parse_arguments(arguments)
        except ValueError as exc:
            text = f"Error: the arguments are not a JSON object ({exc})."
            return self._finish(chat, name, server.name, started, "bad_arguments", text)
        timeout_s = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                client = await server.client()
                result = await client.call_tool(tool, args)
        except TimeoutError:
            server.suspect()
            text = f"Error: the tool did not answer within {timeout_s:g} s."
            return self._finish(chat, name, server.name, started, "timeout", text)
        except ServerUnavailable as exc:
            text = f"Error: the tool's server is unavailable: {exc}"
            return self._finish(chat, name, server.name, started, "unavailable", text)
        except MCPError as exc:
            # The server refused the call (e.g. invalid parameters), or its connection broke.
            if exc.code == CONNECTION_CLOSED:
                server.suspect()
                text = "Error: the tool's server stopped; it is being restarted."
                return self._finish(chat, name, server.name, started, "unavailable", text)
            text = f"Error: {server.redact(exc.message)}"
            return self._finish(chat, name, server.name, started, "tool_error", text)
        except Exception as exc:  # noqa: BLE001 - a broken server must not break the turn
            server.suspect()
            logger.warning("tool %s on %s failed: %s", name, server.name, type(exc).__name__)
            text = "Error: the tool's server failed; it is being checked."
            return self._finish(chat, name, server.name, started, "unavailable", text)
        text = server.redact(result_text(result))
        outcome: Outcome = "tool_error" if result.is_error else "ok"
        return self._finish(chat, name, server.name, started, outcome, text)

    async def aclose(self) -> None:
        """Stop every server (child processes included), concurrently, in bounded time."""
        await asyncio.gather(*(server.aclose() for server in self._servers.values()))

    def _named_tools(self) -> dict[str, tuple[str, Tool]]:
        by_name = {name: {t.name: t for t in s.tools} for name, s in self._servers.items()}
        names = assign_names((server, tools.keys()) for server, tools in by_name.items())
        return {name: (server, by_name[server][tool]) for name, (server, tool) in names.items()}

    def _resolve(self, name: str) -> tuple[ToolServer, str] | None:
        """The server and tool a function name stands for; `server__tool` always works."""
        named = self._named_tools().get(name)
        if named is not None:
            return self._servers[named[0]], named[1].name
        for server in self._servers.values():
            for tool in server.tools:
                if qualified_name(server.name, tool.name) == name:
                    return server, tool.name
        return None

    def _finish(
        self, chat: str, tool: str, server: str, started: float, outcome: Outcome, text: str
    ) -> ToolResult:
        duration = time.perf_counter() - started
        record = ToolCallRecord(chat, tool, server, duration, outcome)
        level = logging.DEBUG if outcome == "ok" else logging.INFO
        logger.log(level, "tool %s (%s): %s in %.3f s", tool, server or "-", outcome, duration)
        if self._audit is not None:
            try:
                self._audit(record)
            except Exception:
                logger.exception("the tool audit hook failed")
        capped = cap(text, self.settings.max_result_chars)
        return ToolResult(capped, outcome == "ok", duration, outcome, server)


def _parse_arguments(text: str) -> dict[str, Any]:
    """The model's JSON arguments as a dict ("" counts as {})."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value
