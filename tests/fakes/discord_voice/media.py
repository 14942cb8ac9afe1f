"""The fake's own media code: RTP packets, transport encryption, Opus, written independently of
Parley's receiver (adapters/discord/voice) so a shared misunderstanding cannot hide a bug.

Layout of the `*_rtpsize` modes (Discord's voice docs, "Transport Encryption Modes"): the RTP
fixed header, CSRCs and the 4-byte header-extension preamble are sent in the clear and
authenticated; extension elements, Opus payload and padding are encrypted; the 32-bit nonce
counter is appended. Packets from Discord clients carry a one-byte header extension
(RFC 8285, profile 0xBEDE), so the fake's do too.
"""

from __future__ import annotations

import ctypes.util
import struct
from dataclasses import dataclass
from pathlib import Path

import discord.opus
import nacl.bindings
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Pcm = npt.NDArray[np.float32]

RATE = 48_000
FRAME = 960  # samples per 20 ms at 48 kHz
OPUS_PT = 0x78
OPUS_SILENCE = b"\xf8\xff\xfe"
ONE_BYTE_PROFILE = 0xBEDE
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES_GCM = "aead_aes256_gcm_rtpsize"
IP_DISCOVERY_REQUEST = 0x0001
IP_DISCOVERY_RESPONSE = 0x0002
IP_DISCOVERY_BYTES = 74  # u16 type, u16 length (70), u32 ssrc, 64-byte address, u16 port


def load_opus() -> None:
    """libopus from PyAV's wheel (or the system) for discord.opus, if nothing loaded it yet."""
    if discord.opus.is_loaded():
        return
    import av

    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    found = sorted(libs.glob("libopus*.so*")) if libs.is_dir() else []
    path = str(found[0]) if found else ctypes.util.find_library("opus")
    if not path:
        raise RuntimeError("no libopus for the fake voice participant")
    discord.opus.load_opus(path)


def _nonce(counter: int, size: int) -> bytes:
    return struct.pack(">I", counter) + bytes(size - 4)


def seal(mode: str, key: bytes, clear: bytes, plaintext: bytes, counter: int) -> bytes:
    """A whole rtpsize packet: clear header, ciphertext with tag, counter."""
    if mode == XCHACHA:
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, clear, _nonce(counter, 24), key
        )
    elif mode == AES_GCM:
        sealed = AESGCM(key).encrypt(_nonce(counter, 12), plaintext, clear)
    else:
        raise ValueError(f"the fake does not speak {mode}")
    return clear + sealed + struct.pack(">I", counter)


def open_sealed(mode: str, key: bytes, packet: bytes, clear_len: int) -> bytes:
    """Decrypt an rtpsize packet; raises on a bad tag."""
    counter = struct.unpack(">I", packet[-4:])[0]
    body, clear = packet[clear_len:-4], packet[:clear_len]
    if mode == XCHACHA:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            body, clear, _nonce(counter, 24), key
        )
    if mode == AES_GCM:
        return AESGCM(key).decrypt(_nonce(counter, 12), body, clear)
    raise ValueError(f"the fake does not speak {mode}")


@dataclass(frozen=True)
class Rtp:
    """One RTP packet before encryption."""

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    audio_level: int | None = 0x7F  # RFC 6464 element (id 1), as Discord clients send
    padding: int = 0  # RTP padding octets to add (RFC 3550 5.1), 0 for none

    def clear_and_plain(self) -> tuple[bytes, bytes]:
        """(clear header incl. extension preamble, plaintext incl. extension body + padding)."""
        flags = 0x80 | len(self.csrcs)
        if self.padding:
            flags |= 0x20
        body = b""
        if self.audio_level is not None:
            flags |= 0x10
            element = bytes([(1 << 4) | 0, self.audio_level])  # id 1, length 1 (L = len - 1)
            body = element + bytes((-len(element)) % 4)
        header = struct.pack(
            ">BBHII",
            flags,
            (0x80 if self.marker else 0) | OPUS_PT,
            self.sequence & 0xFFFF,
            self.timestamp & 0xFFFF_FFFF,
            self.ssrc,
        )
        header += b"".join(struct.pack(">I", c) for c in self.csrcs)
        if body:
            header += struct.pack(">HH", ONE_BYTE_PROFILE, len(body) // 4)
        pad = b""
        if self.padding:
            pad = bytes(self.padding - 1) + bytes([self.padding])
        return header, body + self.payload + pad


@dataclass(frozen=True)
class Received:
    """An RTP packet the bot sent, decrypted at the transport layer."""

    ssrc: int
    sequence: int
    timestamp: int
    payload: bytes


def parse_sent(mode: str, key: bytes, packet: bytes) -> Received:
    """Transport-decrypt a packet discord.py sent (12-byte header, no extension, no padding)."""
    flags = packet[0]
    clear_len = 12 + 4 * (flags & 0x0F)
    extension_words = 0
    if flags & 0x10:
        extension_words = struct.unpack_from(">H", packet, clear_len + 2)[0]
        clear_len += 4
    plain = open_sealed(mode, key, packet, clear_len)
    if flags & 0x20:
        plain = plain[: -plain[-1]]
    plain = plain[extension_words * 4 :]
    _, _, sequence, timestamp, ssrc = struct.unpack_from(">BBHII", packet)
    return Received(ssrc, sequence, timestamp, plain)


def ip_discovery_response(ssrc: int, address: str, port: int) -> bytes:
    """The 74-byte answer to discord.py's IP discovery request."""
    packet = bytearray(IP_DISCOVERY_BYTES)
    struct.pack_into(">HHI", packet, 0, IP_DISCOVERY_RESPONSE, 70, ssrc)
    encoded = address.encode()
    packet[8 : 8 + len(encoded)] = encoded
    struct.pack_into(">H", packet, IP_DISCOVERY_BYTES - 2, port)
    return bytes(packet)


def stereo_frames(pcm: Pcm) -> list[bytes]:
    """Mono float PCM at 48 kHz as 20 ms stereo int16 frames for libopus (last one padded)."""
    ints = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2")
    ints = np.concatenate((ints, np.zeros((-ints.size) % FRAME, dtype="<i2")))
    stereo = np.repeat(ints, 2).tobytes()
    step = FRAME * 4
    return [stereo[i : i + step] for i in range(0, len(stereo), step)]


class OpusEncoder:
    """A Discord client's encoder: 48 kHz stereo, speech-tuned."""

    def __init__(self) -> None:
        load_opus()
        self._encoder = discord.opus.Encoder(application="voip", bitrate=48, signal_type="voice")

    def encode(self, frame: bytes) -> bytes:
        return self._encoder.encode(frame, FRAME)


class OpusDecoder:
    """Decodes one sender's packets to mono float PCM."""

    def __init__(self) -> None:
        load_opus()
        self._decoder = discord.opus.Decoder()

    def decode(self, packet: bytes) -> Pcm:
        stereo = np.frombuffer(self._decoder.decode(packet, fec=False), dtype="<i2")
        return (stereo.reshape(-1, 2).mean(axis=1) / 32768.0).astype(np.float32)
