"""Discord, through discord.py: the `discord` platform.

Importing this package stays light (its settings only); the adapter loads discord.py when it starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.discord.config import DiscordSettings
from bot.command_table import Command, Param
from bot.messages import Msg
from bot.platform import Platform, Services

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.doctor import Finding
    from bot.platform import PlatformAdapter

# Voice channels: the adapter carries these out (adapters/discord/voice/).
JOIN = Command(
    "join",
    Msg.CMD_JOIN,
    params=(Param("channel", Msg.PARAM_VOICE_CHANNEL, kind="voice_channel"),),
    by_platform=True,
)
LEAVE = Command("leave", Msg.CMD_LEAVE, by_platform=True)


def _create(services: Services) -> PlatformAdapter:
    from adapters.discord.adapter import DiscordAdapter

    return DiscordAdapter(services)


async def _check(settings: Settings) -> list[Finding]:
    from adapters.discord.doctor import check

    return await check(settings)


PLATFORM = Platform(settings=DiscordSettings, create=_create, check=_check, commands=(JOIN, LEAVE))
