"""`BrokerLink`: one connection to the broker, kept up for as long as Parley runs.

It connects (MQTT 5, with a retained `offline` as its will), subscribes to the requests in the
shared group, announces a retained `online`, and hands each request to the adapter. A lost or
refused connection is logged once and retried with the one backoff policy (bot/backoff.py);
meanwhile the rest of Parley runs on. Several processes on one broker each announce `online`:
when one of them stops (or dies and its will says `offline`), the others say `online` again,
so the status is `offline` only once none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from adapters.mqtt.config import MqttSettings
from adapters.mqtt.errors import (
    SubscriptionRefused,
    check_granted,
    delivery_errors,
    describe,
    is_login_refused,
)
from adapters.mqtt.limits import PUBLISH_WAIT_S
from adapters.mqtt.rules import OFFLINE, ONLINE, Topics
from bot.backoff import Backoff

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 1.0  # first wait after a failed or lost connection; doubles up to the cap
RECONNECT_MAX_S = 60.0
KEEPALIVE_S = 30  # the broker notices a silent Parley (and sends its will) within 1.5 times this
CALL_TIMEOUT_S = 10.0  # a CONNACK, SUBACK or PUBACK that takes longer means the link is broken
GOODBYE_S = 2.0  # the `offline` status and DISCONNECT at a stop, when the broker is slow
PENDING_CALLS_WARNING = 1000  # events awaiting the broker's PUBACK before aiomqtt warns


class BrokerLink:
    """Connects, subscribes and reconnects; `publish` waits (briefly) for a connection."""

    def __init__(
        self,
        settings: MqttSettings,
        on_request: Callable[[aiomqtt.Message], None],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._topics = Topics(settings.topic_prefix)
        self._on_request = on_request
        self._backoff = backoff or Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        self._client: aiomqtt.Client | None = None  # while connected and subscribed
        self._up = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._trouble: str | None = None  # the failure last logged, so an outage logs once
        self._was_connected = False
        self._serving = False  # this connection got as far as taking requests

    @property
    def connected(self) -> bool:
        """True while subscribed to the requests (for /healthz)."""
        return self._client is not None

    def start(self) -> None:
        """Connect in the background: a broker that is down holds nothing else up."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="mqtt-link")

    async def stop_requests(self) -> None:
        """Take no more requests (the broker gives new ones to the other processes)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(self._topics.requests, timeout=GOODBYE_S)

    async def close(self) -> None:
        """Say `offline` (retained) and disconnect cleanly, so the broker sends no will."""
        self._closing = True
        client, self._client = self._client, None
        self._up.clear()
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._status(client, OFFLINE, wait_s=GOODBYE_S)
        if self._runner is not None:
            self._runner.cancel()  # leaves the client's context: a DISCONNECT packet
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        for chore in list(self._chores):
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)

    async def publish(self, topic: str, payload: bytes, properties: Properties) -> None:
        """Publish at `mqtt.qos`, waiting up to PUBLISH_WAIT_S for the connection to be back.

        Raises `ConnectionError` (an `OSError`, which the reply streamer retries) if it is not.
        """
        try:
            async with asyncio.timeout(PUBLISH_WAIT_S):
                while (client := self._client) is None:
                    await self._up.wait()
        except TimeoutError:
            raise ConnectionError("not connected to the MQTT broker") from None
        with delivery_errors():
            qos = self._settings.qos
            await client.publish(
                topic, payload, qos=qos, properties=properties, timeout=PUBLISH_WAIT_S
            )

    # -- the connection --------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        broker = self._settings.broker
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            identifier=self._settings.client_id or None,  # None: the broker assigns one
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self._topics.status, OFFLINE, qos=self._settings.qos, retain=True),
            tls_params=aiomqtt.TLSParameters() if broker.tls else None,
            timeout=CALL_TIMEOUT_S,
            keepalive=KEEPALIVE_S,
        )
        # aiomqtt warns from 10 unacknowledged calls on; each reply in progress has one.
        client.pending_calls_threshold = PENDING_CALLS_WARNING
        return client

    async def _run(self) -> None:
        while not self._closing:
            self._serving = False
            try:
                async with self._new_client() as client:
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._failed(exc)
            # The connection's error boundary: whatever went wrong, try again later.
            except Exception:
                log.exception("MQTT: the connection to %s failed", self._settings.broker.address)
            await asyncio.sleep(self._backoff.next())

    async def _serve(self, client: aiomqtt.Client) -> None:
        qos = self._settings.qos
        topics = self._topics
        check_granted(await client.subscribe(topics.requests, qos=qos), topics.requests)
        # noLocal: only the other processes' `offline` (or their will) comes back.
        status = SubscribeOptions(qos=qos, noLocal=True)
        check_granted(await client.subscribe(topics.status, options=status), topics.status)
        await self._status(client, ONLINE)
        self._client, self._serving = client, True
        self._up.set()
        self._backoff.reset()
        address = self._settings.broker.address
        if self._was_connected:
            log.info("MQTT: connected to %s again; taking requests", address)
        else:
            log.info("MQTT: connected to %s; requests on %s", address, self._topics.requests)
        self._trouble = None
        self._was_connected = True
        try:
            async for message in client.messages:
                if message.topic.value == self._topics.status:
                    # Another process left (a retained value is an old one: ours follows it).
                    if message.payload == OFFLINE and not message.retain and not self._closing:
                        self._chore(self._status(client, ONLINE))
                else:
                    self._on_request(message)
        finally:
            if self._client is client:
                self._client = None
                self._up.clear()

    async def _status(
        self, client: aiomqtt.Client, state: bytes, *, wait_s: float = CALL_TIMEOUT_S
    ) -> None:
        await client.publish(
            self._topics.status, state, qos=self._settings.qos, retain=True, timeout=wait_s
        )

    def _failed(self, exc: aiomqtt.MqttError) -> None:
        """Log a failure once per outage (again only when the reason changes)."""
        reason = describe(exc)
        address = self._settings.broker.address
        if self._serving:
            log.warning("MQTT: lost the connection to %s (%s); reconnecting", address, reason)
        elif reason == self._trouble:
            log.debug("MQTT: %s still unavailable: %s", address, reason)
        elif is_login_refused(exc):
            log.error("MQTT: %s refused the login (%s): check mqtt.url; retrying", address, reason)
        elif isinstance(exc, SubscriptionRefused):
            log.error("MQTT: %s %s: check the broker's access control; retrying", address, reason)
        else:
            log.warning("MQTT: cannot reach %s (%s); retrying in the background", address, reason)
        self._trouble = reason

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[None]) -> None:
        self._chores.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.info("MQTT: status not announced: %s", describe(exc))
