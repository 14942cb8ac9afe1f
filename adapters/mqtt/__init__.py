"""MQTT, through aiomqtt: the `mqtt` platform, a bridge for devices and home automation.

Importing this package stays light (its settings only); the adapter loads aiomqtt when it starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.mqtt.config import MqttSettings
from bot.platform import Platform, Services

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.doctor import Finding
    from bot.platform import PlatformAdapter


def _create(services: Services) -> PlatformAdapter:
    from adapters.mqtt.adapter import MqttAdapter

    return MqttAdapter(services)


async def _check(settings: Settings) -> list[Finding]:
    from adapters.mqtt.doctor import check

    return await check(settings)


PLATFORM = Platform(settings=MqttSettings, create=_create, check=_check)
