"""Discord, through discord.py: the `discord` platform.

Importing this package stays light (its settings only); the adapter loads discord.py when it starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.discord.config import DiscordSettings
from bot.platform import Platform, Services

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.doctor import Finding
    from bot.platform import PlatformAdapter


def _create(services: Services) -> PlatformAdapter:
    from adapters.discord.adapter import DiscordAdapter

    return DiscordAdapter(services)


async def _check(settings: Settings) -> list[Finding]:
    from adapters.discord.doctor import check

    return await check(settings)


PLATFORM = Platform(settings=DiscordSettings, create=_create, check=_check)
