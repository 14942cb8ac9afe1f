"""The MQTT bridge: a request on `{prefix}/{session}/in` is a turn of the chat `{session}`.

The answer goes to `{prefix}/{session}/out` (or the request's MQTT 5 Response Topic, with its
Correlation Data echoed) as JSON events (adapters/mqtt/targets.py). Each request is answered in
its own task, so a slow reply never holds up other sessions; the engine keeps each session's
turns in order, across processes too (the store's turn order). Commands in the text (`/reset`,
`/help`) run as in any chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt.commands import PLATFORM
from adapters.mqtt.config import MqttSettings
from adapters.mqtt.connection import BrokerLink
from adapters.mqtt.limits import LIMITS
from adapters.mqtt.rules import (
    Topics,
    Unreadable,
    check_session,
    read_request,
)
from adapters.mqtt.targets import MqttReplyTarget
from bot.command_table import CommandCall, parse_call
from bot.errors import ConfigError
from bot.messages import Msg, say
from bot.platform import STOP_GRACE_S
from bot.repair import InterruptedReplies
from bot.storage.reply_parts import OpenPart
from bot.types import IncomingMessage
from bot.update_tasks import UpdateTasks

if TYPE_CHECKING:
    from bot.backoff import Backoff
    from bot.platform import Services

log = logging.getLogger(__name__)

_LAST_WORD_S = 1.0  # the error event of a reply cut off by a stop
_UTF8 = 1  # MQTT 5 Payload Format Indicator: the payload is UTF-8 text


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request's events go, and the Correlation Data they carry back."""

    topic: str
    correlation: bytes | None = None


class MqttAdapter:
    """Connects the engine to one MQTT broker; `await start()` ... `await stop()`."""

    def __init__(
        self,
        services: Services,
        *,
        backoff: Backoff | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._mq = MqttSettings.of(services.settings)
        self._engine = services.engine
        self._commands = services.commands
        self._topics = Topics(self._mq.topic_prefix)
        self._link = BrokerLink(self._mq, self._on_request, backoff=backoff)
        self._tasks = UpdateTasks("MQTT", stop_grace_s)
        self._repairs = InterruptedReplies(
            services.engine.store,
            PLATFORM,
            self._rewrite,
            max_chars=LIMITS.max_chars,
            settings=services.settings,
        )

    @property
    def connected(self) -> bool:
        """True while subscribed to the requests; for /healthz."""
        return self._link.connected

    async def start(self) -> None:
        """Start connecting; returns at once (a broker that is down is retried meanwhile)."""
        if not self._mq.enabled:
            raise ConfigError(["config: mqtt.url is empty"])
        log.info("MQTT: connecting to %s", self._mq.broker.address)
        self._link.start()
        self._repairs.start()  # its events wait for the connection, as a reply's do

    async def stop(self) -> None:
        """Take no more requests, let replies in progress finish (bounded), say `offline`."""
        await self._repairs.stop()
        await self._link.stop_requests()
        await self._tasks.drain()
        await self._link.close()

    # -- answering -------------------------------------------------------------------------

    def _on_request(self, message: aiomqtt.Message) -> None:
        self._tasks.spawn(self._answer(message))

    async def _answer(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        session = self._topics.session_of(topic)
        if session is None:  # not a request topic: the subscription does not deliver these
            return
        route, bad_route = self._route(message, session)
        target = MqttReplyTarget(
            functools.partial(self._emit, route), session=session, limits=LIMITS
        )
        try:
            if bad_route:
                raise Unreadable(say(Msg.MQTT_BAD_RESPONSE_TOPIC, topic=route.topic))
            check_session(session)
            request = read_request(message.payload)
            incoming = IncomingMessage(
                platform=PLATFORM,
                channel_key=session,
                user_id=request.user or session,
                user_name=request.user or session,
                text=request.text,
                is_private=True,  # a session is one device's (or person's) own conversation
            )
        except Unreadable as exc:
            log.info("MQTT: request on %s not read: %s", topic, exc)
            await self._last_word(target.error(str(exc)), session)
            return
        try:
            call = parse_call(incoming.text, self._commands.table(PLATFORM))
            await self._turn(incoming, call, target)
        except asyncio.CancelledError:
            # A stop cut the reply short: the device hears so rather than waiting for ever.
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_LAST_WORD_S):
                    await target.error(say(Msg.MQTT_STOPPING))
            raise
        except OSError as exc:  # the broker stayed unreachable: nobody to tell
            log.warning("MQTT: reply to session %s not delivered: %s", session, exc)
        # One request's error boundary: log it, tell the device, keep serving.
        except Exception:
            log.exception("MQTT: answering a request of session %s failed", session)
            await self._last_word(target.error(say(Msg.MESSAGE_FAILED)), session)

    async def _turn(
        self, incoming: IncomingMessage, call: CommandCall | None, target: MqttReplyTarget
    ) -> None:
        if call is not None and call.command.turn:  # /ask: its text is the message
            if not call.args:
                await target.error(say(Msg.MQTT_EMPTY))
                return
            incoming, call = dataclasses.replace(incoming, text=call.args), None
        if call is None:
            await self._engine.handle(incoming, target)
            await target.conclude()
            return
        reply = await self._commands.execute(incoming, call.command.name, call.args)
        for file in reply.files:
            await target.send_file(file)
        await target.done(reply.text)

    async def _rewrite(self, part: OpenPart, text: str) -> None:
        """End a reply a killed process left without its final event: the interrupted note and
        `done` with the text saved, on the session's own topic (a Response Topic the request
        named is not known any more)."""
        if not part.last:
            return  # one final event per reply, sent for its last part
        session = part.channel_key
        target = MqttReplyTarget(
            functools.partial(self._emit, Route(self._topics.replies(session))),
            session=session,
            limits=LIMITS,
        )
        await target.notice(say(Msg.REPLY_INTERRUPTED))
        finish = functools.partial(target.done, part.content.rstrip(), "partial")
        await self._engine.scheduler.call(target, finish, what="repair")

    def _route(self, message: aiomqtt.Message, session: str) -> tuple[Route, bool]:
        """Where the events go, and whether the Response Topic asked for had to be refused."""
        properties = message.properties
        asked = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        if asked is not None and self._topics.answerable(asked):
            return Route(asked, correlation), False
        return Route(self._topics.replies(session), correlation), asked is not None

    async def _emit(self, route: Route, event: dict[str, Any]) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.PayloadFormatIndicator = _UTF8
        properties.ContentType = "application/json"
        if route.correlation is not None:
            properties.CorrelationData = route.correlation
        payload = json.dumps(event, ensure_ascii=False).encode("utf-8")
        await self._link.publish(route.topic, payload, properties)

    async def _last_word(self, event: Coroutine[Any, Any, None], session: str) -> None:
        """A final event whose own failure is only logged."""
        try:
            await event
        except OSError as exc:
            log.warning("MQTT: error event to session %s not delivered: %s", session, exc)

    # -- tasks -----------------------------------------------------------------------------
