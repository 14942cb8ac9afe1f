"""`parley doctor` for Telegram: getMe with the token, so a bad token or no route shows at once."""

from __future__ import annotations

from typing import Any

from adapters.telegram.config import TelegramSettings
from bot.config import Settings
from bot.doctor import AUTH_REFUSED, Finding, token_check
from bot.urls import url_host


async def check(settings: Settings) -> list[Finding]:
    """The token is valid and Telegram (or `telegram.api_base_url`) is reachable."""
    tg = TelegramSettings.of(settings)
    host = url_host(tg.api_base_url)  # no credentials

    def judge(status: int, data: Any) -> Finding:
        result = data.get("result") if isinstance(data, dict) else None
        if status == 200 and isinstance(result, dict):
            return Finding("telegram", "ok", f"token valid: @{result.get('username')} via {host}")
        if status in (*AUTH_REFUSED, 404):  # 404: a token of the wrong shape
            return Finding("telegram", "fail", f"Telegram rejected the token (HTTP {status})")
        description = data.get("description", "") if isinstance(data, dict) else ""
        detail = f"HTTP {status} from {host}: {description}".rstrip(": ")
        return Finding("telegram", "fail", detail)

    url = f"{tg.api_base_url}{tg.token.get_secret_value()}/getMe"
    # trust_env: like python-telegram-bot (httpx), honour HTTP(S)_PROXY.
    return await token_check("telegram", url, judge, trust_env=True)
