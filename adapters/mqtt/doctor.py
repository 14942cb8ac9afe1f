"""`parley doctor` for MQTT: log in to the broker and leave, so a wrong URL or login shows."""

from __future__ import annotations

import asyncio

import aiomqtt

from adapters.mqtt.config import MqttSettings
from adapters.mqtt.errors import describe, is_login_refused
from bot.config import Settings
from bot.doctor import NETWORK_TIMEOUT_S, Finding


async def check(settings: Settings) -> list[Finding]:
    """The broker at `mqtt.url` is reachable and takes the login (MQTT 5)."""
    mq = MqttSettings.of(settings)
    broker = mq.broker
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_params=aiomqtt.TLSParameters() if broker.tls else None,
        timeout=NETWORK_TIMEOUT_S,
    )
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            async with client:
                pass
    except TimeoutError:
        detail = f"cannot reach {broker.address}: no answer within {NETWORK_TIMEOUT_S:g} s"
        return [Finding("mqtt", "fail", detail)]
    except aiomqtt.MqttError as exc:
        if is_login_refused(exc):
            return [Finding("mqtt", "fail", f"{broker.address} refused the login: check mqtt.url")]
        return [Finding("mqtt", "fail", f"cannot reach {broker.address}: {describe(exc)}")]
    scheme = "TLS" if broker.tls else "no TLS"
    return [Finding("mqtt", "ok", f"connected to {broker.address} (MQTT 5, {scheme})")]
