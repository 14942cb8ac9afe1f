"""Every place Parley reaches into discord.py past its public API, checked when the adapter starts.

discord.py has no option for some of what Parley needs, so Parley patches it, here and nowhere
else:
- `redirect_endpoints`: REST URLs are built from the class attribute `discord.http.Route.BASE`
  (read whenever a Route is made, webhook routes included) and the gateway is opened at
  `DiscordWebSocket.DEFAULT_GATEWAY` (read in `DiscordWebSocket.from_client`). Neither can be set
  per client, so both point at `discord.api_base_url` and `discord.gateway_url` for the whole
  process: one Discord adapter per process.
- `skip_unreadable_events`: an exception from one of discord.py's event parsers ends
  `Client.connect()` for good, so one malformed event would keep the bot offline.
- `gate_requests`: discord.py has no hook before a request, so a sharded bot's shared REST
  budget wraps the client's `HTTPClient.request`.
- `PromptSocketReader` and `ResumingConnectionState`: the voice connection's UDP reader and its
  resume after close code 4015.
Other modules extend discord.py through conventions it does not document (the voice client's
`_encrypt_<mode>` methods and `create_connection_state`, the connection state's socket
listeners, davey's session). `RELIANCES` lists all of it; `require_libraries()` stops the start
with one line naming the library, its version and what is gone, instead of a release Parley was
not tested with failing later, in a voice call or on a gateway event.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import select
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import discord
import discord.gateway
import discord.http
import discord.voice_state
import yarl

from bot.errors import ConfigError

log = logging.getLogger(__name__)

# The versions Parley is tested with (pyproject.toml pins them): "2.7" covers every 2.7.x.
TESTED = {"discord.py": "2.7", "davey": "0.1"}


@dataclass(frozen=True, slots=True)
class Reliance:
    """What Parley needs of one class of a platform library, and what for."""

    library: str  # the distribution's name, for its version: "discord.py", "davey"
    module: str
    qualname: str  # the class inside `module`
    use: str  # the feature that needs it, for the error line
    names: tuple[str, ...] = ()  # on the class: methods, properties, class attributes
    # Attributes each instance gets in `__init__`, looked for among the names `__init__` uses
    # rather than on an instance: making a voice connection state starts a thread, and a
    # gateway connection state needs a running client.
    set_in_init: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The dotted names of what is gone; empty when everything is there."""
        owner_name = f"{self.module}.{self.qualname}"
        try:
            owner: Any = importlib.import_module(self.module)
            for part in self.qualname.split("."):
                owner = getattr(owner, part)
        except (ImportError, AttributeError):
            return [owner_name]
        gone = [name for name in self.names if not hasattr(owner, name)]
        init = getattr(getattr(owner, "__init__", None), "__code__", None)
        used_in_init = set(init.co_names) if init is not None else set()
        gone += [name for name in self.set_in_init if name not in used_in_init]
        return [f"{owner_name}.{name}" for name in gone]


_ENDPOINTS = "endpoint redirection"
_VOICE = "voice channels"
RELIANCES = (
    Reliance("discord.py", "discord.http", "Route", _ENDPOINTS, names=("BASE",)),
    Reliance(
        "discord.py", "discord.gateway", "DiscordWebSocket", _ENDPOINTS, names=("DEFAULT_GATEWAY",)
    ),
    Reliance("discord.py", "discord", "Client", "gateway events", set_in_init=("_connection",)),
    Reliance(
        "discord.py", "discord.state", "ConnectionState", "gateway events", set_in_init=("parsers",)
    ),
    Reliance("discord.py", "discord", "Client", "REST", set_in_init=("http",)),
    Reliance("discord.py", "discord.http", "HTTPClient", "REST", set_in_init=("user_agent",)),
    Reliance("discord.py", "discord.http", "HTTPClient", "sharding", names=("request",)),
    Reliance("discord.py", "discord.http", "Route", "sharding", set_in_init=("path",)),
    Reliance(
        "discord.py",
        "discord",
        "AutoShardedClient",
        "sharding",
        names=("before_identify_hook", "fetch_session_start_limits"),
    ),
    Reliance(
        "discord.py",
        "discord",
        "VoiceClient",
        _VOICE,
        names=(
            "create_connection_state",
            "supported_modes",
            "cleanup",
            "secret_key",
            "checked_add",
            # The send path encrypts with `getattr(self, "_encrypt_" + mode)`: Parley adds
            # the AES-GCM mode as one more such method, next to discord.py's XChaCha20 one.
            "_get_voice_packet",
            "_encrypt_aead_xchacha20_poly1305_rtpsize",
        ),
        set_in_init=("_connection", "_incr_nonce"),
    ),
    Reliance(
        "discord.py",
        "discord.voice_state",
        "VoiceConnectionState",
        _VOICE,
        names=(
            "_connect",
            "_connect_websocket",
            "disconnect",
            "add_socket_listener",
            "remove_socket_listener",
            "can_encrypt",
            "state",
        ),
        set_in_init=(
            "hook",
            "_socket_reader",
            "ws",
            "ip",
            "secret_key",
            "mode",
            "ssrc",
            "dave_session",
            "dave_protocol_version",
        ),
    ),
    Reliance(
        "discord.py", "discord.voice_state", "ConnectionFlowState", _VOICE, names=("connected",)
    ),
    Reliance(
        "discord.py",
        "discord.voice_state",
        "SocketReader",
        _VOICE,
        names=("_do_run",),
        set_in_init=("state", "_callbacks", "_running", "_end"),
    ),
    Reliance(
        "discord.py",
        "discord.gateway",
        "DiscordVoiceWebSocket",
        _VOICE,
        names=(
            "SESSION_DESCRIPTION",
            "SPEAKING",
            "RESUMED",
            "CLIENTS_CONNECT",
            "CLIENT_CONNECT",
            "CLIENT_DISCONNECT",
            "poll_event",
            "close",
        ),
    ),
    Reliance("discord.py", "discord.channel", "VocalGuildChannel", _VOICE),
    Reliance("davey", "davey", "DaveSession", _VOICE, names=("decrypt", "epoch")),
    Reliance("davey", "davey", "MediaType", _VOICE, names=("audio",)),
)


def installed_version(library: str) -> str:
    """The installed version of a distribution, or "(unknown version)"."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def problems() -> list[str]:
    """One line per library that lacks something Parley relies on (none when all is there)."""
    gone: dict[str, list[str]] = {}
    for reliance in RELIANCES:
        for name in reliance.missing():
            gone.setdefault(reliance.library, []).append(f"{name} ({reliance.use})")
    return [
        f"{library} {installed_version(library)} lacks what Parley relies on: "
        f"{', '.join(names)}. Parley is tested with {library} {TESTED[library]}.x: "
        f"pip install '{library}=={TESTED[library]}.*'"
        for library, names in gone.items()
    ]


def require_libraries() -> None:
    """Raise ConfigError (one line per library) when something Parley relies on is gone."""
    lines = problems()
    if lines:
        raise ConfigError(lines)
    for library, tested in TESTED.items():
        version = installed_version(library)
        if version.split(".")[:2] != tested.split("."):
            log.warning("%s %s: Parley is tested with %s.x", library, version, tested)


# The classes below subclass discord.py internals: check them first, so that a release without
# them stops Parley with the same one line as at start rather than an import error.
require_libraries()


# -- endpoints -------------------------------------------------------------------------------


def redirect_endpoints(api_base_url: str, gateway_url: str) -> Callable[[], None]:
    """Point discord.py's REST and gateway at these URLs, process-wide; returns the undo."""
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    discord.http.Route.BASE = api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

    def restore() -> None:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved

    return restore


# -- gateway events --------------------------------------------------------------------------

# What reading a gateway event that is not shaped as documented raises inside discord.py.
EVENT_ERRORS = (AttributeError, IndexError, KeyError, OverflowError, TypeError, ValueError)


def skip_unreadable_events(client: discord.Client) -> None:
    """Make each of the client's event parsers log and skip an event it cannot read."""
    parsers: dict[str, Callable[[Any], None]] = client._connection.parsers
    for event, parser in parsers.items():
        parsers[event] = _skipping_unreadable(event, parser)


def _skipping_unreadable(event: str, parser: Callable[[Any], None]) -> Callable[[Any], None]:
    def parse(data: Any) -> None:
        try:
            parser(data)
        except EVENT_ERRORS as exc:
            log.warning("Discord: a %s event could not be read, skipped (%r)", event, exc)

    return parse


# -- REST ------------------------------------------------------------------------------------


def gate_requests(http: discord.http.HTTPClient, before: Callable[[str], Awaitable[None]]) -> None:
    """Await `before(path)` (the route's path, e.g. "/users/@me") before each of the client's
    REST calls: login, command sync, interaction callbacks and everything else it sends."""
    request: Callable[..., Awaitable[Any]] = http.request

    async def gated(route: discord.http.Route, **kwargs: Any) -> Any:
        await before(route.path)
        return await request(route, **kwargs)

    setattr(http, "request", gated)  # noqa: B010 - the instance's bound method, replaced


# -- voice -----------------------------------------------------------------------------------

OP_RESUMED = discord.gateway.DiscordVoiceWebSocket.RESUMED  # 9: the session goes on
READER_SELECT_S = 0.25  # how long the socket reader waits before looking at the socket again
UDP_RECEIVE_BYTES = 2048  # what discord.py's reader reads per datagram (Opus packets are small)

VoiceWebSocket = discord.gateway.DiscordVoiceWebSocket
WebsocketHook = Callable[[VoiceWebSocket, dict[str, Any]], Coroutine[Any, Any, Any]]


class PromptSocketReader(discord.voice_state.SocketReader):
    """discord.py's UDP reader thread, but never stuck on a socket a reconnect replaced.

    discord.py's waits up to 30 s in `select()` on the socket it started with; once the
    receiver keeps it running, a reconnect (which swaps the UDP socket) left IP discovery of the
    new connection waiting for those 30 s. This one looks at the socket again every quarter
    second.
    """

    def _do_run(self) -> None:
        while not self._end.is_set():
            if not self._running.is_set():
                self._running.wait()
                continue
            sock = self.state.socket
            try:
                readable, _, _ = select.select([sock], [], [], READER_SELECT_S)
            except (ValueError, TypeError, OSError):
                # No socket yet, or closed by a reconnect: look again shortly.
                self._end.wait(READER_SELECT_S)
                continue
            if not readable:
                continue
            try:
                data = sock.recv(UDP_RECEIVE_BYTES)
            except OSError:
                continue
            for callback in list(self._callbacks):
                try:
                    callback(data)
                except Exception:
                    log.exception("voice: socket listener %s failed", callback)


class ResumingConnectionState(discord.voice_state.VoiceConnectionState):
    """discord.py's voice connection state with the prompt socket reader and a real resume.

    A voice server that closes with 4015 ("crashed, resume") asks for a RESUME on a new
    websocket, keeping the UDP session, its key and the DAVE group. discord.py 2.7 instead
    repeats the whole join through the main gateway, then waits for a SESSION_DESCRIPTION that a
    resumed session does not get, and leaves the channel after its 30 s timeout. This resumes
    for real (RESUME, wait for RESUMED) and joins afresh only if the server refuses. `hook` sees
    every voice gateway JSON message after discord.py has handled it.
    """

    def __init__(self, voice_client: discord.VoiceClient, *, hook: WebsocketHook) -> None:
        self._client_hook = hook
        self._resumed = False
        super().__init__(voice_client, hook=self._on_message)
        self._socket_reader.stop()  # discord.py's own, started paused: let it end
        self._socket_reader = PromptSocketReader(self)
        self._socket_reader.start()

    async def _on_message(self, ws: VoiceWebSocket, message: dict[str, Any]) -> None:
        if message.get("op") == OP_RESUMED:
            self._resumed = True
        await self._client_hook(ws, message)

    async def _connect(
        self,
        reconnect: bool,
        timeout: float,  # noqa: ASYNC109 - discord.py's signature
        self_deaf: bool,
        self_mute: bool,
        resume: bool,
    ) -> None:
        if resume and self.ip and self.secret_key and self.ws:
            try:
                await asyncio.wait_for(self._resume_session(), timeout=timeout)
            except (discord.ConnectionClosed, TimeoutError) as exc:
                log.info("voice: the server did not resume the session (%s): joining again", exc)
                await self.disconnect(cleanup=False)
            else:
                log.info("voice: session resumed")
                return
            resume = False
        await super()._connect(reconnect, timeout, self_deaf, self_mute, resume)

    async def _resume_session(self) -> None:
        """RESUME on a new websocket; the UDP socket, its key and the DAVE session stay."""
        self._resumed = False
        # The closed websocket's heartbeat thread would go on beating (into a closed loop,
        # at the end): close it properly first, which stops that thread.
        with contextlib.suppress(discord.ConnectionClosed, OSError):
            await self.ws.close()
        self.ws = await self._connect_websocket(True)
        while not self._resumed:
            await self.ws.poll_event()
        self.ws.secret_key = self.secret_key  # unchanged by a resume
        self.state = discord.voice_state.ConnectionFlowState.connected
