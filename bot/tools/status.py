"""The tool servers' states as `parley doctor` and /healthz show them (never a secret)."""

from __future__ import annotations

from bot.tools.hub import ToolHub
from bot.tools.server import ServerStatus
from bot.tools.settings import ToolsSettings

PROBE_TIMEOUT_S = 30.0  # doctor's whole check is bounded at 60 s; a server still starting says so


def health_detail(statuses: list[ServerStatus]) -> dict[str, object]:
    """JSON-ready state per server, for /healthz (`HealthChecks.add_detail`)."""
    return {
        status.name: {
            "state": status.state,
            "transport": status.transport,
            "tools": status.tools,
            "restarts": status.restarts,
            "error": status.last_error,
        }
        for status in statuses
    }


def summary(status: ServerStatus) -> str:
    """One line for a report: "ready, 2 tools (stdio)", or what went wrong."""
    tools = f"{status.tools} tool" + ("" if status.tools == 1 else "s")
    if status.state == "ready":
        return f"ready, {tools} ({status.transport})"
    if status.state == "starting":
        why = f"; last error: {status.last_error}" if status.last_error else ""
        return f"still starting ({status.transport}){why}"
    return f"failed ({status.transport}): {status.last_error or 'no reason given'}"


async def probe(
    settings: ToolsSettings, *, timeout_s: float = PROBE_TIMEOUT_S
) -> list[ServerStatus]:
    """Start every configured server once, see how it fares within `timeout_s`, stop it."""
    hub = ToolHub(settings, start_timeout_s=timeout_s)
    await hub.start()
    try:
        await hub.wait_settled(timeout_s)
        return hub.status()
    finally:
        await hub.aclose()
