"""`ParleyVoiceClient`: discord.py's VoiceClient, plus what receiving needs to know.

discord.py 2.7 keeps the voice websocket's SPEAKING and client connect/disconnect messages to
itself; its `VoiceConnectionState` takes a websocket hook that sees every JSON message after
discord.py has handled it, so `create_connection_state` installs one, on the connection state
of adapters/discord/compat.py (a prompt socket reader, a real resume after close code 4015).
From it the client keeps the SSRC -> user map and tells its listeners (the receiver) about
users coming and going.

It also adds the transport mode discord.py lacks, `aead_aes256_gcm_rtpsize` (Discord's preferred
one), next to `aead_xchacha20_poly1305_rtpsize`; discord.py picks the first mode of the voice
server's list that the client supports and encrypts with the method `_encrypt_<mode>`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord.gateway import DiscordVoiceWebSocket
from discord.voice_state import VoiceConnectionState

from adapters.discord.compat import ResumingConnectionState
from adapters.discord.voice.opus import ensure_opus
from adapters.discord.voice.transport import SUPPORTED_MODES, TransportCipher, make_cipher

if TYPE_CHECKING:
    from discord.types.voice import SupportedModes

log = logging.getLogger(__name__)

# Voice gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#voice).
OP_SESSION_DESCRIPTION = DiscordVoiceWebSocket.SESSION_DESCRIPTION  # 4
OP_SPEAKING = DiscordVoiceWebSocket.SPEAKING  # 5: {user_id, ssrc, speaking}
OP_CLIENTS_CONNECT = DiscordVoiceWebSocket.CLIENTS_CONNECT  # 11: {user_ids}
OP_CLIENT_CONNECT = DiscordVoiceWebSocket.CLIENT_CONNECT  # 12: {user_id, audio_ssrc} (older form)
OP_CLIENT_DISCONNECT = DiscordVoiceWebSocket.CLIENT_DISCONNECT  # 13: {user_id}
NONCE_LIMIT = 0xFFFF_FFFF  # the 32-bit rtpsize nonce counter wraps here


class VoiceListener(Protocol):
    """Told about the call's members as the voice gateway reports them (on the event loop)."""

    def on_ssrc(self, ssrc: int, user_id: int) -> None: ...

    def on_user_left(self, user_id: int) -> None: ...

    def on_closed(self) -> None: ...


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
        return ResumingConnectionState(self, hook=self._on_voice_message)

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
