"""The `[tools]` section: the MCP servers whose tools the model may call, and the limits."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from bot.section import Section

_TOOL_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class ToolServerSettings(Section):
    """One MCP server, `[tools.servers.NAME]`: a command Parley starts (stdio) or a URL it
    connects to (streamable HTTP)."""

    command: list[str] = []
    """The server's program and its arguments, e.g. `["mcp-server-time", "--local-timezone",
    "UTC"]`; a bare program name is looked up on PATH, then beside Parley's own Python."""
    env: dict[str, SecretStr] = {}
    """Environment variables for the command, on top of a minimal PATH/HOME environment (secrets:
    never logged or shown)."""
    url: str = ""
    """A streamable-HTTP MCP endpoint, e.g. "http://127.0.0.1:8000/mcp" (instead of a command)."""
    tools: list[str] = []
    """The server's tools the model may call; empty: all of them."""

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_text(cls, value: Any) -> Any:
        # TOML numbers and booleans become text; anything else fails without echoing a value.
        if not isinstance(value, dict):
            raise ValueError("must be a table of NAME = value")
        env: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, bool):
                item = str(item).lower()
            elif isinstance(item, int | float):
                item = str(item)
            elif not isinstance(item, str | SecretStr):
                raise ValueError(f"{key}: must be a string")
            env[key] = item
        return env

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _one_way_to_reach_it(self) -> ToolServerSettings:
        if bool(self.command) == bool(self.url):
            raise ValueError("set command (a program Parley starts) or url, exactly one of them")
        if self.url and self.env:
            raise ValueError("env is for a command Parley starts, not for a url")
        if any(not part for part in self.command):
            raise ValueError("command has an empty part")
        return self


class ToolsSettings(Section):
    """Tools the model may call, from MCP servers; admins turn them on or off per chat."""

    enabled: bool = False
    """Chats offer the tools to the model (`/config set tools on|off` per chat)."""
    servers: dict[str, ToolServerSettings] = {}
    """The MCP servers, as `[tools.servers.NAME]` tables (only these: no user can add one)."""
    timeout_s: float = Field(20.0, gt=0)
    """One tool call's deadline; past it the model gets an error result."""
    max_rounds: int = Field(5, ge=1, le=100)
    """Rounds of tool calls in one reply before the model must answer."""
    max_result_chars: int = Field(4000, ge=1)
    """A tool's output is cut to this many characters (the model is told it was cut)."""

    @field_validator("servers")
    @classmethod
    def _server_names(cls, value: dict[str, ToolServerSettings]) -> dict[str, ToolServerSettings]:
        for name in value:
            if not _TOOL_SERVER_NAME.match(name):
                raise ValueError(f"server name {name!r}: letters, digits, _ and - (up to 32)")
        return value
