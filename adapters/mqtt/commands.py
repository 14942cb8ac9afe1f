"""The MQTT bridge's commands: those of the core's table, run from a request's text
(`bot.command_table.parse_call`); it has none of its own."""

from __future__ import annotations

PLATFORM = "mqtt"
