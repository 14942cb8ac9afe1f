"""The websocket half of the fake Discord: one gateway session per connected client.

It speaks gateway v10 JSON the way Discord does: HELLO, then READY and one GUILD_CREATE per guild
after a valid IDENTIFY, HEARTBEAT_ACK for every heartbeat, and dispatches pushed by the test.
A session that identifies with `shard: [shard_id, shard_count]` is one shard of the bot: like
Discord, the fake sends it only the events of guilds with (guild_id >> 22) % shard_count ==
shard_id, and DMs (events without a guild) only to shard 0. discord.py asks for transport
compression (`compress=zlib-stream` or `zstd-stream` in the query); the fake answers with
uncompressed text frames, which discord.py reads without its decompressor (it only inflates
binary frames).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.discord_world import shard_of

# Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

# Close codes Discord uses when it refuses a session.
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_INVALID_SHARD = 4010
CLOSE_DISALLOWED_INTENTS = 4014

# Intents Discord only grants when they are switched on in the developer portal.
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT


@dataclass
class GatewayFrame:
    """One frame seen on a gateway socket, in either direction."""

    direction: str  # "in" (client -> fake) or "out"
    op: int
    event: str | None = None
    data: Any = None


@dataclass
class GatewaySession:
    """One client connection: what it asked for and every frame exchanged."""

    socket: web.WebSocketResponse
    query: dict[str, str]
    frames: list[GatewayFrame] = field(default_factory=list)
    identify: dict[str, Any] | None = None
    sequence: int = 0
    close_code: int | None = None

    @property
    def shard(self) -> tuple[int, int] | None:
        """(shard_id, shard_count) from IDENTIFY; None for an unsharded session."""
        value = (self.identify or {}).get("shard")
        if not isinstance(value, list) or len(value) != 2:
            return None
        return int(value[0]), int(value[1])

    def receives(self, guild_id: int | None) -> bool:
        """Whether Discord would send this session an event of `guild_id` (None: a DM)."""
        shard = self.shard
        return shard is None or shard_of(guild_id, shard[1]) == shard[0]

    @property
    def ready(self) -> bool:
        """READY went out on this session."""
        return any(f.event == "READY" for f in self.frames if f.direction == "out")

    def heartbeats(self) -> int:
        """How many heartbeats the client sent."""
        return sum(1 for f in self.frames if f.direction == "in" and f.op == OP_HEARTBEAT)

    def acks(self) -> int:
        """How many heartbeat ACKs the fake sent."""
        return sum(1 for f in self.frames if f.direction == "out" and f.op == OP_HEARTBEAT_ACK)

    async def send(self, op: int, data: Any, event: str | None = None) -> None:
        """Send one frame; dispatches get the next sequence number."""
        seq = None
        if op == OP_DISPATCH:
            self.sequence += 1
            seq = self.sequence
        self.frames.append(GatewayFrame("out", op, event, data))
        await self.socket.send_str(json.dumps({"op": op, "d": data, "s": seq, "t": event}))

    async def dispatch(self, event: str, data: Any) -> None:
        """Push one DISPATCH event (MESSAGE_CREATE, INTERACTION_CREATE, ...)."""
        await self.send(OP_DISPATCH, data, event)

    async def close(self, code: int, reason: str) -> None:
        """Close the socket the way Discord refuses a session."""
        self.close_code = code
        await self.socket.close(code=code, message=reason.encode())


VoiceStateHandler = Callable[[GatewaySession, dict[str, Any]], Awaitable[None]]


class Gateway:
    """Accepts gateway connections for the fake and runs each session's protocol."""

    def __init__(
        self,
        *,
        token: str,
        heartbeat_interval_ms: int,
        granted_intents: Callable[[], int],
        ready_events: Callable[[GatewaySession], list[tuple[str, Any]]],
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self._token = token
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._granted_intents = granted_intents
        self._ready_events = ready_events
        self._on_change = on_change
        self.sessions: list[GatewaySession] = []
        # Set by the voice fake (tests/fakes/discord_voice): answers a client's op 4 (join or
        # leave a voice channel) with VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE dispatches.
        self.on_voice_state: VoiceStateHandler | None = None

    @property
    def live(self) -> list[GatewaySession]:
        """Sessions that completed IDENTIFY and are still open."""
        return [s for s in self.sessions if s.ready and not s.socket.closed]

    async def dispatch(self, event: str, data: Any) -> None:
        """Send an event to the live sessions that get it: every session of an unsharded bot
        (it has one), or the shard of the event's guild."""
        guild_id = _guild_of(event, data)
        for session in self.live:
            if session.receives(guild_id):
                await session.dispatch(event, data)
        await self._on_change()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """aiohttp handler of GET /gateway."""
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        session = GatewaySession(socket=socket, query=dict(request.query))
        self.sessions.append(session)
        await session.send(OP_HELLO, {"heartbeat_interval": self._heartbeat_interval_ms})
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            op, data = frame.get("op"), frame.get("d")
            session.frames.append(GatewayFrame("in", op, None, data))
            if op == OP_HEARTBEAT:
                await session.send(OP_HEARTBEAT_ACK, None)
            elif op == OP_IDENTIFY:
                await self._identify(session, data)
            elif op == OP_VOICE_STATE_UPDATE and self.on_voice_state is not None:
                await self.on_voice_state(session, data)
            elif op == OP_RESUME:
                # Sessions are not kept: tell the client to identify afresh, as Discord does
                # for a session it no longer knows.
                await session.send(OP_INVALID_SESSION, False)
            await self._on_change()
        await self._on_change()
        return socket

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        session.identify = data
        if data.get("token") != self._token:
            await session.close(CLOSE_AUTHENTICATION_FAILED, "Authentication failed.")
            return
        shard = data.get("shard")
        if shard is not None and not (
            isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]
        ):
            await session.close(CLOSE_INVALID_SHARD, "Invalid shard.")
            return
        asked = int(data.get("intents", 0))
        refused = asked & PRIVILEGED_INTENTS & ~self._granted_intents()
        if refused:
            await session.close(CLOSE_DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        for event, payload in self._ready_events(session):
            await session.dispatch(event, payload)


GUILD_EVENTS = ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE")


def _guild_of(event: str, data: Any) -> int | None:
    """The guild an event is about (which decides its shard); None for a DM."""
    if not isinstance(data, dict):
        return None
    raw = data.get("guild_id")
    if raw is None and event in GUILD_EVENTS:  # the guild object itself
        raw = data.get("id")
    if raw is None:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None  # a payload damaged on purpose (fuzz tests): delivered as a DM would be
