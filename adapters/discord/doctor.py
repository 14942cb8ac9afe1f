"""`parley doctor` for Discord: GET /users/@me with the token."""

from __future__ import annotations

from typing import Any

from adapters.discord.config import DiscordSettings
from bot.config import Settings
from bot.doctor import AUTH_REFUSED, Finding, token_check
from bot.urls import url_host


async def check(settings: Settings) -> list[Finding]:
    """The token is valid and Discord (or `discord.api_base_url`) is reachable."""
    dc = DiscordSettings.of(settings)
    host = url_host(dc.api_base_url)  # no credentials

    def judge(status: int, data: Any) -> Finding:
        if status == 200 and isinstance(data, dict):
            return Finding("discord", "ok", f"token valid: {data.get('username')} via {host}")
        if status in AUTH_REFUSED:
            return Finding("discord", "fail", f"Discord rejected the token (HTTP {status})")
        message = data.get("message", "") if isinstance(data, dict) else ""
        return Finding("discord", "fail", f"HTTP {status} from {host}: {message}".rstrip(": "))

    headers = {"Authorization": f"Bot {dc.token.get_secret_value()}"}
    return await token_check(
        "discord", dc.api_base_url.rstrip("/") + "/users/@me", judge, headers=headers
    )
