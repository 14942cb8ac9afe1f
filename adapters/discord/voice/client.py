"""`ParleyVoiceClient`: discord.py's VoiceClient, plus what receiving needs to know.

discord.py 2.7 keeps the voice websocket's SPEAKING and client connect/disconnect messages to
itself; its `VoiceConnectionState` takes a websocket hook that sees every JSON message after
discord.py has handled it, so `create_connection_state` installs one. From it the client keeps
the SSRC -> user map and tells its listeners (the receiver) about users coming and going.

Its socket reader thread is replaced by one that looks at the socket again every quarter
second: discord.py's waits up to 30 s in `select()` on the socket it started with, and once
the receiver keeps it running, a reconnect (which swaps the UDP socket) left IP discovery of
the new connection waiting for those 30 s.

A voice server that closes with 4015 ("crashed, resume") asks for a RESUME on a new websocket,
keeping the UDP session, its key and the DAVE group. discord.py 2.7.1 instead repeats the whole
join through the main gateway and then waits for a SESSION_DESCRIPTION that a resumed session
does not get, and leaves the channel after its 30 s timeout; `ParleyConnectionState` resumes
for real (RESUME, wait for RESUMED) and joins afresh only if the server refuses.

It also adds the transport mode discord.py lacks, `aead_aes256_gcm_rtpsize` (Discord's preferred
one), next to `aead_xchacha20_poly1305_rtpsize`; discord.py picks the first mode of the voice
server's list that the client supports and encrypts with the method `_encrypt_<mode>`.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord.errors import ConnectionClosed
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import ConnectionFlowState, SocketReader, VoiceConnectionState

from adapters.discord.voice.opus import ensure_opus
from adapters.discord.voice.transport import SUPPORTED_MODES, TransportCipher, make_cipher

if TYPE_CHECKING:
    from discord.types.voice import SupportedModes

log = logging.getLogger(__name__)

# Voice gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#voice).
OP_SESSION_DESCRIPTION = DiscordVoiceWebSocket.SESSION_DESCRIPTION  # 4
OP_SPEAKING = DiscordVoiceWebSocket.SPEAKING  # 5: {user_id, ssrc, speaking}
OP_RESUMED = DiscordVoiceWebSocket.RESUMED  # 9
OP_CLIENTS_CONNECT = DiscordVoiceWebSocket.CLIENTS_CONNECT  # 11: {user_ids}
OP_CLIENT_CONNECT = DiscordVoiceWebSocket.CLIENT_CONNECT  # 12: {user_id, audio_ssrc} (older form)
OP_CLIENT_DISCONNECT = DiscordVoiceWebSocket.CLIENT_DISCONNECT  # 13: {user_id}
NONCE_LIMIT = 0xFFFF_FFFF  # the 32-bit rtpsize nonce counter wraps here
READER_SELECT_S = 0.25  # how long the socket reader waits before looking at the socket again
UDP_RECEIVE_BYTES = 2048  # what discord.py's reader reads per datagram (Opus packets are small)


class VoiceListener(Protocol):
    """Told about the call's members as the voice gateway reports them (on the event loop)."""

    def on_ssrc(self, ssrc: int, user_id: int) -> None: ...

    def on_user_left(self, user_id: int) -> None: ...

    def on_closed(self) -> None: ...


class _PromptSocketReader(SocketReader):
    """discord.py's UDP reader thread, but never stuck on a socket a reconnect replaced."""

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


WebsocketHook = Callable[[DiscordVoiceWebSocket, dict[str, Any]], Coroutine[Any, Any, Any]]


class ParleyConnectionState(VoiceConnectionState):
    """discord.py's connection state with the prompt socket reader and a real resume."""

    def __init__(self, voice_client: discord.VoiceClient, *, hook: WebsocketHook) -> None:
        self._client_hook = hook
        self._resumed = False
        super().__init__(voice_client, hook=self._on_message)
        self._socket_reader.stop()  # discord.py's own, started paused: let it end
        self._socket_reader = _PromptSocketReader(self)
        self._socket_reader.start()

    async def _on_message(self, ws: DiscordVoiceWebSocket, message: dict[str, Any]) -> None:
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
            except (ConnectionClosed, TimeoutError) as exc:
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
        self.ws = await self._connect_websocket(True)
        while not self._resumed:
            await self.ws.poll_event()
        self.ws.secret_key = self.secret_key  # unchanged by a resume
        self.state = ConnectionFlowState.connected


class ParleyVoiceClient(discord.VoiceClient):
    """A VoiceClient that tracks who is behind each SSRC and speaks both AEAD modes."""

    supported_modes: tuple[SupportedModes, ...] = SUPPORTED_MODES  # type: ignore[assignment]

    def __init__(self, client: discord.Client, channel: discord.abc.Connectable) -> None:
        ensure_opus()
        self.ssrc_users: dict[int, int] = {}
        self.members: set[int] = set()
        self._listeners: list[VoiceListener] = []
        self._send_cipher: TransportCipher | None = None
        self._send_key: bytes | None = None
        super().__init__(client, channel)

    @property
    def connection(self) -> VoiceConnectionState:
        """discord.py's connection state (secret key, mode, the DAVE session, the UDP socket)."""
        return self._connection

    @property
    def e2ee_ready(self) -> bool:
        """Audio sent now is end-to-end encrypted, or the call does not use DAVE at all."""
        state = self._connection
        return state.dave_protocol_version == 0 or state.can_encrypt

    def add_listener(self, listener: VoiceListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: VoiceListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def create_connection_state(self) -> VoiceConnectionState:
        return ParleyConnectionState(self, hook=self._on_voice_message)

    def cleanup(self) -> None:
        super().cleanup()
        for listener in list(self._listeners):
            listener.on_closed()

    async def _on_voice_message(self, _ws: DiscordVoiceWebSocket, message: dict[str, Any]) -> None:
        # An exception here would end discord.py's websocket poller: never let one out.
        try:
            self._handle_voice_message(message)
        except Exception:
            log.exception("voice: could not handle voice gateway message op %s", message.get("op"))

    def _handle_voice_message(self, message: dict[str, Any]) -> None:
        op, data = message.get("op"), message.get("d") or {}
        if op == OP_SPEAKING or (op == OP_CLIENT_CONNECT and "audio_ssrc" in data):
            user_id = int(data["user_id"])
            ssrc = int(data.get("ssrc", data.get("audio_ssrc", 0)))
            if not ssrc:
                return
            self.members.add(user_id)
            if self.ssrc_users.get(ssrc) != user_id:
                log.debug("voice: ssrc %d is user %d", ssrc, user_id)
            self.ssrc_users[ssrc] = user_id
            for listener in list(self._listeners):
                listener.on_ssrc(ssrc, user_id)
        elif op == OP_CLIENTS_CONNECT:
            self.members.update(int(user) for user in data.get("user_ids", []))
        elif op == OP_CLIENT_DISCONNECT:
            user_id = int(data["user_id"])
            self.members.discard(user_id)
            for ssrc in [s for s, u in self.ssrc_users.items() if u == user_id]:
                del self.ssrc_users[ssrc]
            for listener in list(self._listeners):
                listener.on_user_left(user_id)
        elif op == OP_SESSION_DESCRIPTION:
            log.debug("voice: session uses %s, DAVE protocol %s",
                      data.get("mode"), data.get("dave_protocol_version"))  # fmt: skip

    def _encrypt_aead_aes256_gcm_rtpsize(self, header: bytes, data: bytes) -> bytes:
        """discord.py's send path calls `_encrypt_<mode>`: the AES-GCM one it does not have."""
        key = bytes(self.secret_key)
        if self._send_cipher is None or key != self._send_key:
            self._send_cipher = make_cipher("aead_aes256_gcm_rtpsize", key)
            self._send_key = key
        counter = self._incr_nonce
        self.checked_add("_incr_nonce", 1, NONCE_LIMIT)
        return self._send_cipher.encrypt(bytes(header), bytes(data), counter)
