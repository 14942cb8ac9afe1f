"""`FakeVoiceServer`: Discord's voice server on loopback, as discord.py 2.7 speaks to it.

What it plays (https://discord.com/developers/docs/topics/voice-connections and the DAVE
protocol, https://daveprotocol.com):

- The main gateway's part: the client's op 4 (join/leave a voice channel) is answered with
  VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE (endpoint `localhost:<port>`), and the voice
  channel and the people in it are part of GUILD_CREATE.
- The voice websocket, gateway v8, over TLS: HELLO, IDENTIFY -> READY (ssrc, UDP port, modes),
  SELECT_PROTOCOL -> SESSION_DESCRIPTION (mode, secret key, DAVE protocol version), heartbeats,
  SPEAKING, CLIENTS_CONNECT / CLIENT_DISCONNECT, RESUME -> RESUMED with a replay of what the
  client missed, `seq` on every server message; binary DAVE frames are `u16 seq | u8 op |
  payload` from the server and `u8 op | payload` from the client.
- DAVE: the server is the MLS external sender (op 25), proposes Add/Remove (op 27) when people
  join or leave or re-key, takes the first commit (op 28, the bot's or a fake human's), announces
  it (op 29) and welcomes the new members (op 30), then executes the transition (op 22) once
  every member said it is ready (op 23); op 21 prepares a protocol downgrade (passthrough).
- UDP: IP discovery, and RTP in `aead_aes256_gcm_rtpsize` or `aead_xchacha20_poly1305_rtpsize`:
  it relays each fake human's packets to the bot (re-encrypted with the bot's key, as Discord's
  SFU does) and decrypts what the bot sends so every fake human can hear it.

`FakeHuman` is a call member with its own davey session: it speaks real speech (synthesised by
Parley's offline piper voice) as 20 ms Opus frames, DAVE-encrypted, in RTP with its SSRC,
sequence and timestamp; and it hears the bot (transport + DAVE decryption, Opus decoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import davey
import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_gateway import GatewaySession
from tests.fakes.discord_voice import mls
from tests.fakes.discord_voice.media import (
    AES_GCM,
    FRAME,
    IP_DISCOVERY_BYTES,
    IP_DISCOVERY_REQUEST,
    OPUS_SILENCE,
    RATE,
    XCHACHA,
    OpusDecoder,
    OpusEncoder,
    Pcm,
    Received,
    Rtp,
    ip_discovery_response,
    parse_sent,
    seal,
    stereo_frames,
)
from tests.fakes.discord_voice.tls import installed_authority
from tests.fakes.discord_world import FakeUser

log = logging.getLogger(__name__)

# Voice gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#voice)
# and DAVE's (https://daveprotocol.com/#voice-gateway-opcodes).
OP_IDENTIFY = 0
OP_SELECT_PROTOCOL = 1
OP_READY = 2
OP_HEARTBEAT = 3
OP_SESSION_DESCRIPTION = 4
OP_SPEAKING = 5
OP_HEARTBEAT_ACK = 6
OP_RESUME = 7
OP_HELLO = 8
OP_RESUMED = 9
OP_CLIENTS_CONNECT = 11
OP_CLIENT_DISCONNECT = 13
OP_DAVE_PREPARE_TRANSITION = 21
OP_DAVE_EXECUTE_TRANSITION = 22
OP_DAVE_TRANSITION_READY = 23
OP_DAVE_PREPARE_EPOCH = 24
OP_MLS_EXTERNAL_SENDER = 25
OP_MLS_KEY_PACKAGE = 26
OP_MLS_PROPOSALS = 27
OP_MLS_COMMIT_WELCOME = 28
OP_MLS_ANNOUNCE_COMMIT = 29
OP_MLS_WELCOME = 30
OP_MLS_INVALID_COMMIT_WELCOME = 31

# Voice close codes.
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_SESSION_NO_LONGER_VALID = 4006
CLOSE_DISCONNECTED = 4014
CLOSE_VOICE_SERVER_CRASHED = 4015  # discord.py resumes after this one

VOICE_GATEWAY_VERSION = 8
HEARTBEAT_INTERVAL_MS = 13_750.0  # what Discord's voice servers announce
DAVE_VERSION = 1  # davey 0.1.7 speaks DAVE protocol version 1
PROPOSALS_APPEND = 0
VOICE_CHANNEL_ID = 1_100_000_000_000_000_020
TRANSITION_READY_TIMEOUT_S = 10.0  # Discord executes a transition anyway after a while
COMMIT_WAIT_S = 10.0  # hang guard while waiting for the bot's commit
REPLAY_LIMIT = 500  # messages kept per session for RESUME
WAIT_TIMEOUT_S = 60.0  # hang guard of `wait_for`; not a speed expectation
SILENCE_FRAMES_AFTER_SPEECH = 5  # Discord clients end a burst with five silence frames
QUIET_RMS = 1e-3  # a decoded frame below this is silence


@dataclass
class VoiceFrame:
    """One message on a voice websocket, either direction; `data` is JSON or the binary payload."""

    direction: str  # "in" (client -> fake) or "out"
    op: int
    data: Any


@dataclass
class HeardFrame:
    arrival: float
    sequence: int
    pcm: Pcm
    speech: bool


@dataclass
class Heard:
    """What one fake human heard from one sender."""

    frames: list[HeardFrame] = field(default_factory=list)
    silence_frames: int = 0  # the Opus silence frame (left clear by DAVE)
    dropped_plain: int = 0  # unencrypted frames in an E2EE call: a real client drops them
    plain_speech: int = 0  # ... of which carried sound (speech leaking unencrypted)
    dave_failed: int = 0

    def pcm(self) -> Pcm:
        if not self.frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.pcm for f in self.frames])

    @property
    def speech_frames(self) -> int:
        return sum(1 for f in self.frames if f.speech)

    def speech_pcm(self) -> Pcm:
        """From the first to the last frame with sound."""
        marks = [i for i, f in enumerate(self.frames) if f.speech]
        if not marks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.pcm for f in self.frames[marks[0] : marks[-1] + 1]])

    def last_speech_arrival(self) -> float | None:
        arrivals = [f.arrival for f in self.frames if f.speech]
        return arrivals[-1] if arrivals else None


class BotConnection:
    """One voice session of a real client: its websocket (across resumes) and UDP state."""

    def __init__(self, server: FakeVoiceServer, user_id: int, session_id: str, token: str) -> None:
        self.server = server
        self.user_id = user_id
        self.session_id = session_id
        self.token = token
        self.ssrc = server.new_ssrc()
        self.secret_key = b""
        self.mode = ""
        self.udp_addr: tuple[str, int] | None = None
        self.socket: web.WebSocketResponse | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.frames: list[VoiceFrame] = []
        self.sequence = 0
        self.outbox: list[tuple[int, str | bytes]] = []
        self.counter = random.randrange(1 << 20)  # our rtpsize nonce counter towards the client
        self.key_package: bytes | None = None
        self.announced: set[int] = set()  # SSRCs whose SPEAKING went out on this session
        self.resumes = 0
        self.closed = False
        self.packets_sent = 0  # RTP packets the client sent us
        self.speaking_states: list[int] = []

    @property
    def live(self) -> bool:
        return self.socket is not None and not self.socket.closed

    def received(self, op: int) -> list[Any]:
        return [f.data for f in self.frames if f.direction == "in" and f.op == op]

    def sent(self, op: int) -> list[Any]:
        return [f.data for f in self.frames if f.direction == "out" and f.op == op]

    async def send_json(self, op: int, data: Any) -> None:
        self.sequence += 1
        text = json.dumps({"op": op, "d": data, "seq": self.sequence})
        self._keep(text)
        self.frames.append(VoiceFrame("out", op, data))
        if self.live:
            assert self.socket is not None
            with contextlib.suppress(ConnectionError):
                await self.socket.send_str(text)

    async def send_binary(self, op: int, payload: bytes) -> None:
        self.sequence = (self.sequence + 1) & 0xFFFF
        frame = struct.pack(">HB", self.sequence, op) + payload
        self._keep(frame)
        self.frames.append(VoiceFrame("out", op, payload))
        if self.live:
            assert self.socket is not None
            with contextlib.suppress(ConnectionError):
                await self.socket.send_bytes(frame)

    def _keep(self, message: str | bytes) -> None:
        self.outbox.append((self.sequence, message))
        del self.outbox[:-REPLAY_LIMIT]

    # -- DAVE member interface ------------------------------------------------------------

    async def deliver_proposals(self, payload: bytes) -> None:
        await self.send_binary(OP_MLS_PROPOSALS, bytes([PROPOSALS_APPEND]) + payload)

    async def deliver_commit(self, transition_id: int, commit: bytes) -> None:
        await self.send_binary(OP_MLS_ANNOUNCE_COMMIT, struct.pack(">H", transition_id) + commit)

    async def deliver_welcome(self, transition_id: int, welcome: bytes) -> None:
        await self.send_binary(OP_MLS_WELCOME, struct.pack(">H", transition_id) + welcome)

    async def deliver_execute(self, transition_id: int) -> None:
        await self.send_json(OP_DAVE_EXECUTE_TRANSITION, {"transition_id": transition_id})


class FakeHuman:
    """A person in the voice channel, with a Discord client's DAVE session and Opus encoder."""

    def __init__(self, server: FakeVoiceServer, user: FakeUser) -> None:
        self.server = server
        self.user = user
        self.ssrc = server.new_ssrc()
        self.dave: davey.DaveSession | None = None
        self.encoder = OpusEncoder()
        self.sequence = random.randrange(1 << 16)
        self.timestamp = random.randrange(1 << 32)
        self.heard: dict[int, Heard] = {}
        self._decoders: dict[int, OpusDecoder] = {}
        self.in_call = False
        self.plain = not server.dave  # sends unencrypted Opus (no DAVE, or downgraded)
        self.frames_sent = 0
        self.frames_unsendable = 0  # frames skipped because the DAVE session was not ready
        self.pending_commit: davey.CommitWelcome | None = None
        self.speaking = False
        self.speech_sent_at: float | None = None  # monotonic: first frame after the lead-in

    @property
    def user_id(self) -> int:
        return self.user.id

    def new_dave_session(self) -> bytes:
        """A fresh davey session (joining, or re-joining with a new key): its key package."""
        self.dave = davey.DaveSession(DAVE_VERSION, self.user.id, self.server.channel_id)
        self.dave.set_external_sender(self.server.external_sender.package())
        return self.dave.get_serialized_key_package()

    # -- speaking ------------------------------------------------------------------------

    async def say_text(self, text: str, **options: Any) -> None:
        """Say `text` in the offline piper voice (see `say` for the options)."""
        await self.say(await self.server.speech(text), **options)

    async def say(
        self,
        pcm: Pcm,
        *,
        padding: int = 0,
        csrcs: tuple[int, ...] = (),
        announce: bool = True,
        announce_after_s: float = 0.0,
        stop_after_s: float | None = None,
        lead_in_s: float = 0.2,
        pace: float = 1.0,
    ) -> None:
        """Stream 48 kHz mono `pcm` as a Discord client does: in real time, 20 ms per packet.

        `padding`: RTP padding octets on every packet. `announce`: send SPEAKING (op 5) for the
        SSRC (False: the bot never learns whose SSRC it is); `announce_after_s`: send it only
        after that much audio (UDP overtaking the websocket). `stop_after_s`: leave the call
        that far into the speech (mid-utterance). `lead_in_s` of silence goes first. `pace`:
        send that many times faster than real time (RTP timestamps stay those of real time,
        as if the network delivered a backlog at once), to keep tests short.
        """
        lead = np.zeros(int(lead_in_s * RATE), dtype=np.float32)
        lead_frames = len(stereo_frames(lead)) if lead.size else 0
        frames = stereo_frames(np.concatenate((lead, pcm)))
        self.speech_sent_at = None
        loop = asyncio.get_running_loop()
        start = loop.time()
        announced = False
        self.speaking = True
        try:
            for index, frame in enumerate(frames):
                elapsed = index * FRAME / RATE
                if stop_after_s is not None and elapsed >= stop_after_s + lead_in_s:
                    await self.server.leave(self)
                    return
                if announce and not announced and elapsed >= announce_after_s:
                    await self.server.announce(self)
                    announced = True
                if index == lead_frames:
                    self.speech_sent_at = time.monotonic()
                self.send_opus(self.encoder.encode(frame), marker=index == 0, padding=padding,
                               csrcs=csrcs)  # fmt: skip
                due = start + (index + 1) * FRAME / RATE / pace
                await asyncio.sleep(max(0.0, due - loop.time()))
            for _ in range(SILENCE_FRAMES_AFTER_SPEECH):
                self.send_opus(OPUS_SILENCE, padding=padding, csrcs=csrcs)
        finally:
            self.speaking = False

    def send_opus(
        self, opus: bytes, *, marker: bool = False, padding: int = 0, csrcs: tuple[int, ...] = ()
    ) -> None:
        """One RTP packet of `opus`, DAVE-encrypted unless plain or the silence frame."""
        if not self.in_call:
            return
        payload = opus
        if opus != OPUS_SILENCE and not self.plain:
            if self.dave is None or not self.dave.ready:
                self.frames_unsendable += 1
                self._advance()
                return
            payload = self.dave.encrypt_opus(opus)
        self.server.relay(self, Rtp(self.ssrc, self.sequence, self.timestamp, payload,
                                    marker=marker, csrcs=csrcs, padding=padding))  # fmt: skip
        self.frames_sent += 1
        self._advance()

    def _advance(self) -> None:
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME) & 0xFFFF_FFFF

    # -- hearing -------------------------------------------------------------------------

    def hear(self, sender: int, packet: Received, arrival: float) -> None:
        """A packet the bot sent, as this member's client would decrypt and decode it."""
        heard = self.heard.setdefault(sender, Heard())
        decoder = self._decoders.setdefault(sender, OpusDecoder())
        payload = packet.payload
        if payload == OPUS_SILENCE:
            heard.silence_frames += 1
            return
        opus = payload
        if self.dave is not None and not self.plain:
            try:
                opus = self.dave.decrypt(sender, davey.MediaType.audio, payload)
            except ValueError as exc:
                if "Unencrypted" in str(exc):
                    heard.dropped_plain += 1
                    pcm = decoder.decode(payload)
                    if float(np.sqrt(np.mean(np.square(pcm)))) > QUIET_RMS:
                        heard.plain_speech += 1
                else:
                    heard.dave_failed += 1
                return
        pcm = decoder.decode(bytes(opus))
        speech = float(np.sqrt(np.mean(np.square(pcm)))) > QUIET_RMS
        heard.frames.append(HeardFrame(arrival, packet.sequence, pcm, speech))


class DaveGroup:
    """The MLS group of the call as the voice server runs it: who is in, at which epoch."""

    def __init__(self, server: FakeVoiceServer) -> None:
        self.server = server
        self.epoch = 0  # 0: no group yet
        self.leaves: list[int | None] = []
        self.members: set[int] = set()
        self.wanting_in: dict[int, bytes] = {}  # user -> key package
        self.leaving: set[int] = set()
        self.transition_id = 0
        self.rounds = 0
        self._commits: dict[int, tuple[bytes, bytes | None]] = {}
        self._commit_arrived = asyncio.Event()
        self._ready: set[int] = set()
        self._ready_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def key_package(self, user_id: int, package: bytes) -> None:
        if user_id in self.members:
            self.leaving.add(user_id)  # a new key for a member: remove and add again
        self.wanting_in[user_id] = package
        self._schedule()

    def leave(self, user_id: int) -> None:
        self.wanting_in.pop(user_id, None)
        if user_id in self.members:
            self.leaving.add(user_id)
            self._schedule()

    def commit_received(self, user_id: int, data: bytes) -> None:
        self._commits[user_id] = mls.split_commit_welcome(data)
        self._commit_arrived.set()

    def transition_ready(self, user_id: int, transition_id: int) -> None:
        if transition_id == self.transition_id:
            self._ready.add(user_id)
            self._ready_changed.set()

    def _schedule(self) -> None:
        self.idle.clear()
        task = asyncio.get_running_loop().create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async with self._lock:
            try:
                await self._round()
            except Exception:
                log.exception("fake voice: DAVE round failed")
            finally:
                if not self.pending_work():
                    self.idle.set()

    def pending_work(self) -> bool:
        """Someone must be added or removed (a lone first member waits for a second one)."""
        if self.leaving & self.members:
            return True
        joining = [u for u in self.wanting_in if self.server.member(u) is not None]
        return len(joining) >= 2 if self.epoch == 0 else bool(joining)

    async def _round(self) -> None:
        server = self.server
        leaving = {u for u in self.leaving if u in self.members}
        joining = [u for u in self.wanting_in if server.member(u) is not None]
        if not joining and not leaving:
            return
        self.leaving -= leaving
        staying = [u for u in self._ordered_members() if u not in leaving]
        if not staying:
            self.epoch, self.leaves, self.members = 0, [], set()
        if self.epoch == 0:
            creators = [u for u in joining if server.member(u) is not None]
            if len(creators) < 2:
                return  # one person alone needs no group yet
            creator = server.pick_committer(creators)
            committers = [creator]
            adds = [u for u in creators if u != creator]
            removes: list[int] = []
            proposal_epoch = 0
        else:
            committers = staying
            adds = [u for u in joining if u not in staying]
            removes = sorted(leaving)
            proposal_epoch = self.epoch
        messages = [
            server.external_sender.remove_proposal(
                server.channel_id, proposal_epoch, self.leaves.index(u)
            )
            for u in removes
        ]
        messages += [
            server.external_sender.add_proposal(
                server.channel_id, proposal_epoch, self.wanting_in[u]
            )
            for u in adds
        ]
        if not messages:
            return
        self.rounds += 1
        self._commits.clear()
        self._commit_arrived.clear()
        payload = mls.proposals_payload(messages)
        for user_id in committers:
            await server.deliver_proposals(user_id, payload)
        committer, commit, welcome = await self._pick_commit(committers)
        # Apply the commit to the server's view of the tree (RFC 9420 12.3: removes, then adds
        # fill the leftmost blank leaves).
        if self.epoch == 0:
            self.leaves = [committer]
        for user_id in removes:
            self.leaves[self.leaves.index(user_id)] = None
        for user_id in adds:
            if None in self.leaves:
                self.leaves[self.leaves.index(None)] = user_id
            else:
                self.leaves.append(user_id)
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()
        self.epoch = self.epoch + 1 if self.epoch else 1
        self.members = {u for u in self.leaves if u is not None}
        for user_id in [*adds, committer]:
            self.wanting_in.pop(user_id, None)
        self.transition_id = self.transition_id % 0xFFFF + 1
        self._ready = set()
        self._ready_changed.clear()
        for user_id in committers:
            await server.deliver_commit(user_id, self.transition_id, commit)
        if adds and welcome is None:
            raise RuntimeError("the commit adds members but came without a Welcome")
        for user_id in adds:
            assert welcome is not None
            await server.deliver_welcome(user_id, self.transition_id, welcome)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TRANSITION_READY_TIMEOUT_S):
                while not self.members <= self._ready:
                    self._ready_changed.clear()
                    await self._ready_changed.wait()
        for user_id in sorted(self.members):
            await server.deliver_execute(user_id, self.transition_id)
        if self.pending_work():
            self._schedule()

    def _ordered_members(self) -> list[int]:
        return [u for u in self.leaves if u is not None]

    async def _pick_commit(self, committers: list[int]) -> tuple[int, bytes, bytes | None]:
        preferred = self.server.pick_committer(committers)
        async with asyncio.timeout(COMMIT_WAIT_S):
            while True:
                if preferred in self._commits:
                    return preferred, *self._commits[preferred]
                if not self.server.is_bot(preferred):
                    for user_id in committers:
                        if user_id in self._commits:
                            return user_id, *self._commits[user_id]
                self._commit_arrived.clear()
                await self._commit_arrived.wait()


class FakeVoiceServer:
    """The voice half of the fake Discord: `async with FakeVoiceServer(discord) as voice`.

    `modes`: the transport modes READY offers, in order (discord.py picks the first it knows).
    `dave`: whether the call is end-to-end encrypted. `prefer_bot_commits`: take the bot's
    commit when it is one of the committers (else a fake human's, which is always first).
    """

    def __init__(
        self,
        discord: FakeDiscord,
        *,
        modes: tuple[str, ...] = (AES_GCM, XCHACHA),
        dave: bool = True,
        prefer_bot_commits: bool = False,
    ) -> None:
        self.discord = discord
        self.modes = modes
        self.dave = dave
        self.prefer_bot_commits = prefer_bot_commits
        self.channel_id = VOICE_CHANNEL_ID
        self.external_sender = mls.ExternalSender.generate()
        self.group = DaveGroup(self)
        self.humans: dict[int, FakeHuman] = {}
        self.connections: list[BotConnection] = []
        self.tokens: dict[int, tuple[str, str]] = {}  # bot user -> (voice token, session id)
        self.identifies = 0
        self.accept_resume = True  # False: answer RESUME with 4006, the client must join again
        self.port = 0
        self.udp_port = 0
        self.datagrams_in = 0
        self._runner: web.AppRunner | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._used_ssrcs: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeVoiceServer:
        app = web.Application()
        app.router.add_get("/", self._websocket)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", 0, ssl_context=installed_authority().server_context()
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=("127.0.0.1", 0)
        )
        self._udp = transport
        self.udp_port = transport.get_extra_info("sockname")[1]
        self.discord.gateway.on_voice_state = self._gateway_voice_state
        self.discord.extra_channels.append(self._channel_payload())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.discord.gateway.on_voice_state = None
        for task in list(self._tasks):
            task.cancel()
        for connection in self.connections:
            if connection.socket is not None and not connection.socket.closed:
                await connection.socket.close()
        if self._udp is not None:
            self._udp.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"

    # -- people ----------------------------------------------------------------------------

    async def join(self, user: FakeUser) -> FakeHuman:
        """`user` joins the voice channel (before or after the bot) with a DAVE session."""
        human = FakeHuman(self, user)
        self.humans[user.id] = human
        human.in_call = True
        state = self._voice_state(user, self.channel_id, f"fake-{user.id}")
        self.discord.voice_states.append(state)
        await self.discord.gateway.dispatch("VOICE_STATE_UPDATE", state)
        for connection in self._live_connections():
            await connection.send_json(OP_CLIENTS_CONNECT, {"user_ids": [str(user.id)]})
        if self.dave:
            self.group.key_package(user.id, human.new_dave_session())
        return human

    async def leave(self, human: FakeHuman) -> None:
        """`human` leaves the call: CLIENT_DISCONNECT, a voice state without channel, Remove."""
        if not human.in_call:
            return
        human.in_call = False
        self.humans.pop(human.user_id, None)
        self.discord.voice_states[:] = [
            s for s in self.discord.voice_states if s["user_id"] != str(human.user_id)
        ]
        for connection in self._live_connections():
            await connection.send_json(OP_CLIENT_DISCONNECT, {"user_id": str(human.user_id)})
        await self.discord.gateway.dispatch(
            "VOICE_STATE_UPDATE", self._voice_state(human.user, None, f"fake-{human.user_id}")
        )
        self.group.leave(human.user_id)

    async def announce(self, human: FakeHuman) -> None:
        """SPEAKING (op 5) for `human`'s SSRC to every bot session."""
        for connection in self._live_connections():
            connection.announced.add(human.ssrc)
            await connection.send_json(
                OP_SPEAKING, {"user_id": str(human.user_id), "ssrc": human.ssrc, "speaking": 1}
            )

    async def rekey(self, human: FakeHuman) -> None:
        """`human`'s client re-joins the DAVE group with a new key (Remove + Add: a new epoch)."""
        self.group.key_package(human.user_id, human.new_dave_session())

    async def prepare_downgrade(self) -> int:
        """Op 21: the call is about to leave E2EE (protocol 0): passthrough until op 22."""
        self.group.transition_id = self.group.transition_id % 0xFFFF + 1
        transition = self.group.transition_id
        for human in self.humans.values():
            if human.dave is not None:
                human.dave.set_passthrough_mode(True, 120)
            human.plain = True  # already sending plain: the receivers are in passthrough
        for connection in self._live_connections():
            await connection.send_json(
                OP_DAVE_PREPARE_TRANSITION,
                {"transition_id": transition, "protocol_version": 0},
            )
        return transition

    async def execute_transition(self, transition_id: int) -> None:
        """Op 22 for a transition prepared by `prepare_downgrade`."""
        for connection in self._live_connections():
            await connection.send_json(OP_DAVE_EXECUTE_TRANSITION, {"transition_id": transition_id})

    async def speech(self, text: str) -> Pcm:
        """`text` in Parley's offline piper voice (bot.speech), 48 kHz mono."""
        return await speech(text)

    # -- faults ----------------------------------------------------------------------------

    async def drop_websocket(self, connection: BotConnection | None = None) -> None:
        """Cut the bot's voice websocket without a close frame (a network failure)."""
        connection = connection or self.bot_connection()
        if connection.transport is not None:
            connection.transport.close()  # aiohttp sees a lost connection: no close frame
        connection.socket = None

    async def close_websocket(self, code: int, connection: BotConnection | None = None) -> None:
        """Close the bot's voice websocket with `code` (4015: the server crashed, resume)."""
        connection = connection or self.bot_connection()
        if connection.socket is not None:
            await connection.socket.close(code=code, message=b"fake voice server")

    def send_stranger_audio(self, ssrc: int, opus_frames: list[bytes]) -> None:
        """Packets of an SSRC no SPEAKING ever named (real Opus, transport-encrypted)."""
        sequence, timestamp = random.randrange(1 << 16), random.randrange(1 << 32)
        for index, opus in enumerate(opus_frames):
            rtp = Rtp(ssrc, sequence + index, timestamp + index * FRAME, opus)
            for connection in self._live_connections():
                self._send_rtp(connection, rtp)

    def send_raw(self, data: bytes) -> None:
        """A datagram as is (junk, RTCP...) to every bot session."""
        for connection in self._live_connections():
            if self._udp is not None and connection.udp_addr is not None:
                self._udp.sendto(data, connection.udp_addr)

    # -- queries for tests -----------------------------------------------------------------

    def bot_connection(self) -> BotConnection:
        """The bot's current voice session."""
        if not self.connections:
            raise LookupError("the bot has no voice session")
        return self.connections[-1]

    def is_bot(self, user_id: int) -> bool:
        return user_id not in self.humans

    def member(self, user_id: int) -> BotConnection | FakeHuman | None:
        if user_id in self.humans:
            return self.humans[user_id]
        for connection in reversed(self.connections):
            if connection.user_id == user_id and not connection.closed:
                return connection
        return None

    def pick_committer(self, candidates: list[int]) -> int:
        bots = [u for u in candidates if self.is_bot(u)]
        if self.prefer_bot_commits and bots:
            return bots[0]
        humans = [u for u in candidates if not self.is_bot(u)]
        return humans[0] if humans else candidates[0]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT_S
    ) -> None:
        """Poll `predicate` until true (a hang guard, not a speed expectation)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)

    async def dave_settled(self, timeout: float = WAIT_TIMEOUT_S) -> None:
        """Every member is in the group and no round is under way."""
        await self.wait_for(lambda: self.group.idle.is_set(), timeout)

    def new_ssrc(self) -> int:
        while True:
            ssrc = random.randrange(1, 1 << 32)
            if ssrc not in self._used_ssrcs:
                self._used_ssrcs.add(ssrc)
                return ssrc

    # -- DAVE delivery -----------------------------------------------------------------------

    async def deliver_proposals(self, user_id: int, payload: bytes) -> None:
        member = self.member(user_id)
        if isinstance(member, BotConnection):
            await member.deliver_proposals(payload)
        elif isinstance(member, FakeHuman) and member.dave is not None:
            result = member.dave.process_proposals(davey.ProposalsOperationType.append, payload)
            if result is not None:
                self.group.commit_received(user_id, result.commit + (result.welcome or b""))

    async def deliver_commit(self, user_id: int, transition_id: int, commit: bytes) -> None:
        member = self.member(user_id)
        if isinstance(member, BotConnection):
            await member.deliver_commit(transition_id, commit)
        elif isinstance(member, FakeHuman) and member.dave is not None:
            member.dave.process_commit(commit)
            self.group.transition_ready(user_id, transition_id)

    async def deliver_welcome(self, user_id: int, transition_id: int, welcome: bytes) -> None:
        member = self.member(user_id)
        if isinstance(member, BotConnection):
            await member.deliver_welcome(transition_id, welcome)
        elif isinstance(member, FakeHuman) and member.dave is not None:
            member.dave.process_welcome(welcome)
            self.group.transition_ready(user_id, transition_id)

    async def deliver_execute(self, user_id: int, transition_id: int) -> None:
        member = self.member(user_id)
        if isinstance(member, BotConnection):
            await member.deliver_execute(transition_id)

    # -- main gateway ------------------------------------------------------------------------

    async def _gateway_voice_state(self, session: GatewaySession, data: dict[str, Any]) -> None:
        """The client's op 4: join (or leave) a voice channel."""
        bot = self.discord.BOT
        channel = data.get("channel_id")
        ready: dict[str, Any] = next((f.data for f in session.frames if f.event == "READY"), {})
        session_id = str(ready.get("session_id") or f"session-{bot.id}")
        if channel is None:
            await session.dispatch("VOICE_STATE_UPDATE", self._voice_state(bot, None, session_id))
            for connection in self.connections:
                if connection.user_id == bot.id and not connection.closed:
                    connection.closed = True
            self.group.leave(bot.id)
            return
        if int(channel) != self.channel_id:
            return
        token = secrets.token_hex(8)
        self.tokens[bot.id] = (token, session_id)
        state = self._voice_state(bot, self.channel_id, session_id, data)
        await session.dispatch("VOICE_STATE_UPDATE", state)
        await session.dispatch(
            "VOICE_SERVER_UPDATE",
            {"token": token, "guild_id": str(self.discord.GUILD_ID), "endpoint": self.endpoint},
        )

    def _voice_state(
        self,
        user: FakeUser,
        channel_id: int | None,
        session_id: str,
        asked: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        asked = asked or {}
        return {
            "guild_id": str(self.discord.GUILD_ID),
            "channel_id": str(channel_id) if channel_id else None,
            "user_id": str(user.id),
            "member": {
                "user": user.payload(),
                "roles": [str(r) for r in user.role_ids],
                "joined_at": "2024-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
                "nick": None,
            },
            "session_id": session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": bool(asked.get("self_deaf", False)),
            "self_mute": bool(asked.get("self_mute", False)),
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }

    def _channel_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.channel_id),
            "type": 2,  # GUILD_VOICE
            "guild_id": str(self.discord.GUILD_ID),
            "name": "Voice",
            "position": 1,
            "permission_overwrites": [],
            "bitrate": 64_000,
            "user_limit": 0,
            "parent_id": None,
            "rtc_region": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    # -- voice websocket ---------------------------------------------------------------------

    def _live_connections(self) -> list[BotConnection]:
        return [c for c in self.connections if not c.closed and c.secret_key]

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        if request.query.get("v") != str(VOICE_GATEWAY_VERSION):
            await socket.close(code=4012, message=b"Unknown protocol")
            return socket
        # HELLO opens every voice websocket; its seq-less form is what Discord sends.
        await socket.send_str(
            json.dumps({"op": OP_HELLO, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS,
                                              "v": VOICE_GATEWAY_VERSION}})
        )  # fmt: skip
        connection: BotConnection | None = None
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                frame = json.loads(message.data)
                op, data = frame.get("op"), frame.get("d")
                if connection is not None:
                    connection.frames.append(VoiceFrame("in", op, data))
                if op == OP_IDENTIFY:
                    connection = await self._identify(socket, request, data)
                elif op == OP_RESUME:
                    connection = await self._resume(socket, request, data)
                elif connection is None:
                    await socket.close(code=4003, message=b"Not authenticated")
                else:
                    await self._json(connection, op, data)
            elif message.type is WSMsgType.BINARY and connection is not None:
                op, payload = message.data[0], message.data[1:]
                connection.frames.append(VoiceFrame("in", op, payload))
                self._binary(connection, op, payload)
        return socket

    async def _identify(
        self, socket: web.WebSocketResponse, request: web.Request, data: dict[str, Any]
    ) -> BotConnection | None:
        self.identifies += 1
        user_id = int(data["user_id"])
        token, session_id = self.tokens.get(user_id, ("", ""))
        if data.get("token") != token or data.get("session_id") != session_id:
            await socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed")
            return None
        if data.get("server_id") != str(self.discord.GUILD_ID):
            await socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Unknown server")
            return None
        for old in self.connections:
            if old.user_id == user_id and not old.closed:
                old.closed = True  # a new session replaces it
        connection = BotConnection(self, user_id, session_id, token)
        connection.socket, connection.transport = socket, request.transport
        connection.frames.append(VoiceFrame("in", OP_IDENTIFY, data))
        self.connections.append(connection)
        await connection.send_json(
            OP_READY,
            {
                "ssrc": connection.ssrc,
                "ip": "127.0.0.1",
                "port": self.udp_port,
                "modes": list(self.modes),
                "experiments": [],
            },
        )
        return connection

    async def _resume(
        self, socket: web.WebSocketResponse, request: web.Request, data: dict[str, Any]
    ) -> BotConnection | None:
        for connection in reversed(self.connections):
            if (
                self.accept_resume
                and not connection.closed
                and connection.session_id == data.get("session_id")
                and connection.token == data.get("token")
            ):
                connection.socket, connection.transport = socket, request.transport
                connection.resumes += 1
                connection.frames.append(VoiceFrame("in", OP_RESUME, data))
                seq_ack = int(data.get("seq_ack", -1))
                missed = [m for seq, m in connection.outbox if seq > seq_ack]
                await connection.send_json(OP_RESUMED, None)
                for message in missed:
                    if isinstance(message, str):
                        await socket.send_str(message)
                    else:
                        await socket.send_bytes(message)
                return connection
        await socket.close(
            code=CLOSE_SESSION_NO_LONGER_VALID, message=b"Session is no longer valid"
        )
        return None

    async def _json(self, connection: BotConnection, op: int, data: Any) -> None:
        if op == OP_HEARTBEAT:
            await connection.send_json(OP_HEARTBEAT_ACK, {"t": (data or {}).get("t")})
        elif op == OP_SELECT_PROTOCOL:
            mode = data["data"]["mode"]
            if mode not in self.modes:
                await connection.socket.close(code=4016, message=b"Unknown encryption mode")  # type: ignore[union-attr]
                return
            connection.mode = mode
            connection.secret_key = secrets.token_bytes(32)
            await connection.send_json(
                OP_SESSION_DESCRIPTION,
                {
                    "mode": mode,
                    "secret_key": list(connection.secret_key),
                    "dave_protocol_version": DAVE_VERSION if self.dave else 0,
                    "audio_codec": "opus",
                    "video_codec": "H264",
                    "media_session_id": secrets.token_hex(16),
                },
            )
            others = [str(u) for u in self.humans]
            if others:
                await connection.send_json(OP_CLIENTS_CONNECT, {"user_ids": others})
            for human in self.humans.values():
                if human.speaking or human.frames_sent:
                    connection.announced.add(human.ssrc)
                    await connection.send_json(
                        OP_SPEAKING,
                        {"user_id": str(human.user_id), "ssrc": human.ssrc, "speaking": 1},
                    )
            if self.dave:
                await connection.send_binary(OP_MLS_EXTERNAL_SENDER, self.external_sender.package())
        elif op == OP_SPEAKING:
            connection.speaking_states.append(int(data.get("speaking", 0)))
        elif op == OP_DAVE_TRANSITION_READY:
            self.group.transition_ready(connection.user_id, int(data["transition_id"]))
        elif op == OP_MLS_INVALID_COMMIT_WELCOME:
            log.info("fake voice: the bot could not use transition %s", data)

    def _binary(self, connection: BotConnection, op: int, payload: bytes) -> None:
        if op == OP_MLS_KEY_PACKAGE:
            connection.key_package = payload
            self.group.key_package(connection.user_id, payload)
        elif op == OP_MLS_COMMIT_WELCOME:
            self.group.commit_received(connection.user_id, payload)

    # -- UDP -------------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams_in += 1
        if len(data) == IP_DISCOVERY_BYTES and struct.unpack_from(">H", data)[0] == (
            IP_DISCOVERY_REQUEST
        ):
            ssrc = struct.unpack_from(">I", data, 4)[0]
            for connection in self.connections:
                if connection.ssrc == ssrc:
                    connection.udp_addr = addr
                    if self._udp is not None:
                        self._udp.sendto(ip_discovery_response(ssrc, addr[0], addr[1]), addr)
            return
        sender = next(
            (c for c in reversed(self.connections) if c.udp_addr == addr and c.secret_key), None
        )
        if sender is None or len(data) < 12:
            return
        try:
            packet = parse_sent(sender.mode, sender.secret_key, data)
        except Exception:  # noqa: BLE001 - a packet that does not authenticate is dropped
            log.warning("fake voice: a packet from the bot did not decrypt")
            return
        sender.packets_sent += 1
        arrival = time.monotonic()
        for human in list(self.humans.values()):
            human.hear(sender.user_id, packet, arrival)

    def relay(self, human: FakeHuman, rtp: Rtp) -> None:
        """A human's packet, forwarded to every bot session with that session's key."""
        for connection in self._live_connections():
            self._send_rtp(connection, rtp)

    def _send_rtp(self, connection: BotConnection, rtp: Rtp) -> None:
        if self._udp is None or connection.udp_addr is None:
            return
        clear, plain = rtp.clear_and_plain()
        connection.counter = (connection.counter + 1) & 0xFFFF_FFFF
        packet = seal(connection.mode, connection.secret_key, clear, plain, connection.counter)
        self._udp.sendto(packet, connection.udp_addr)


_speech_cache: dict[str, Pcm] = {}
_synthesizer: list[Any] = []


async def speech(text: str) -> Pcm:
    """`text` in Parley's offline piper voice (bot.speech), 48 kHz mono; cached per process.

    One synthesizer serves every test (loading piper takes seconds); it holds no event-loop
    state (a worker thread only), so tests with different loops can share it.
    """
    if text not in _speech_cache:
        if not _synthesizer:
            from bot.config import TTSSettings
            from bot.speech.tts import SpeechSynthesizer

            _synthesizer.append(SpeechSynthesizer(TTSSettings(backends=["piper"])))
        _speech_cache[text] = await _synthesizer[0].synthesize_pcm(text)
    return _speech_cache[text]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: FakeVoiceServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server.datagram(data, addr)
