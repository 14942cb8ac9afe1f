"""Telegram, through python-telegram-bot: the `telegram` platform.

Importing this package stays light (its settings only); the adapter loads PTB when it starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.telegram.config import TelegramSettings
from bot.command_table import START
from bot.platform import Platform, Services

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.doctor import Finding
    from bot.platform import PlatformAdapter


def _create(services: Services) -> PlatformAdapter:
    from adapters.telegram.adapter import TelegramAdapter

    return TelegramAdapter(services)


async def _check(settings: Settings) -> list[Finding]:
    from adapters.telegram.doctor import check

    return await check(settings)


# /start: what Telegram's "Start" button sends when someone opens a chat with the bot.
PLATFORM = Platform(settings=TelegramSettings, create=_create, check=_check, commands=(START,))
