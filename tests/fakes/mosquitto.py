"""A real, throwaway mosquitto broker on a loopback port, and a device that talks to it.

`Mosquitto` runs Debian's `mosquitto -c FILE` (scripts/setup.sh installs it) with a config of its
own in a temporary directory: one listener on 127.0.0.1, no persistence, anonymous clients (or a
password file). `Device` is a real MQTT 5 client (aiomqtt) that publishes requests and keeps every
message it receives, for the tests to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BINARY = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
START_TIMEOUT_S = 10.0


def available() -> bool:
    """Whether mosquitto is installed (scripts/setup.sh installs it with the dev extras)."""
    return Path(BINARY).is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """One broker process; `start()`, `stop()`, `start()` again on the same port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        users: dict[str, str] | None = None,
    ) -> None:
        """`users`: name -> password (no anonymous clients then)."""
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="parley-mqtt-"))
        self.log_path = self.root / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if users:
            passwords = self.root / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([PASSWD, "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to the `mosquitto` user
        self.config = self.root / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def url(self, login: str = "") -> str:
        """`mqtt://[login@]127.0.0.1:PORT`, for `mqtt.url`."""
        return f"mqtt://{login + '@' if login else ''}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Mosquitto:
        """Start the broker and wait until it takes connections."""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [BINARY, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (SIGTERM); its clients lose their connections."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Received:
    """One message the device received: its topic, JSON payload (or text) and properties."""

    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    at: float  # time.monotonic() when it arrived

    @property
    def event(self) -> dict[str, Any]:
        data = json.loads(self.payload)
        assert isinstance(data, dict)
        return data


@dataclass
class Device:
    """A real MQTT 5 client: `ask()` publishes a request, `received` keeps what came back."""

    client: aiomqtt.Client
    received: list[Received] = field(default_factory=list)

    async def ask(
        self,
        session: str,
        payload: str | bytes | dict[str, Any],
        *,
        prefix: str = "parley",
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Publish a request on `{prefix}/{session}/in` (a dict goes as JSON)."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        properties = None
        if response_topic is not None or correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        await self.client.publish(f"{prefix}/{session}/in", payload, qos=1, properties=properties)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.received if m.topic == topic]

    def events(self, topic: str) -> list[dict[str, Any]]:
        """The JSON events received on `topic`, oldest first."""
        return [m.event for m in self.on(topic)]

    def finals(self, topic: str) -> list[dict[str, Any]]:
        """The `done` and `error` events on `topic`: one per request answered there."""
        return [e for e in self.events(topic) if e["type"] in ("done", "error")]

    async def wait_until(self, predicate: Callable[[], object], limit_s: float = 60.0) -> None:
        """A hang guard, not a timing: wait until `predicate()` holds."""
        async with asyncio.timeout(limit_s):
            while not predicate():
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def device(broker: Mosquitto, *topics: str) -> AsyncIterator[Device]:
    """A device connected to `broker`, subscribed to `topics` (QoS 1), collecting messages."""
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        dev = Device(client)
        for topic in topics:
            await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                dev.received.append(
                    Received(
                        message.topic.value,
                        payload,
                        message.retain,
                        getattr(message.properties, "CorrelationData", None),
                        time.monotonic(),
                    )
                )

        task = asyncio.create_task(collect())
        try:
            yield dev
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
