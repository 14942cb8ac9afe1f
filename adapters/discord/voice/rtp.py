"""RTP as Discord's voice servers send it: header parsing and the `*_rtpsize` transport layout.

Sources: RFC 3550 section 5.1 (fixed header, CSRC list, padding) and 5.3.1 (header extension),
RFC 8285 (the one-byte extension profile 0xBEDE Discord uses), and Discord's voice connection
docs (https://discord.com/developers/docs/topics/voice-connections#transport-encryption-modes):
in the `rtpsize` modes the fixed header, the CSRCs and the 4-byte extension preamble travel in
the clear as additional authenticated data; the extension *body*, the payload and any padding
are encrypted; a 4-byte nonce counter follows the ciphertext.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2  # RFC 3550 section 5.1
RTP_FIXED_HEADER_BYTES = 12  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
RTP_CSRC_BYTES = 4  # each contributing source identifier
RTP_EXTENSION_PREAMBLE_BYTES = 4  # u16 profile + u16 length in 32-bit words (RFC 3550 5.3.1)
RTP_EXTENSION_WORD_BYTES = 4
RTP_SEQUENCE_MODULO = 1 << 16
RTP_TIMESTAMP_MODULO = 1 << 32
OPUS_PAYLOAD_TYPE = 0x78  # 120: what Discord uses for Opus (discord.py sends 0x78 too)
# RTCP packet types 200-204 (RFC 3550 section 12.1) share the port; their second byte is the
# packet type, which read as marker + payload type gives 72-76.
RTCP_PACKET_TYPES = range(200, 205)
RTPSIZE_NONCE_BYTES = 4  # the counter appended to every rtpsize packet
AEAD_TAG_BYTES = 16  # Poly1305 and GCM tags

_FLAGS_PADDING = 0x20
_FLAGS_EXTENSION = 0x10
_FLAGS_CSRC_COUNT = 0x0F
_MARKER = 0x80
_PAYLOAD_TYPE = 0x7F
_HEADER = struct.Struct(">BBHII")
_EXTENSION = struct.Struct(">HH")


class MalformedPacket(ValueError):
    """Bytes that are not an RTP packet Discord would send."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The parts of an RTP header the receiver needs."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    padding: bool
    clear_bytes: int  # fixed header + CSRCs + extension preamble: the AAD of rtpsize modes
    extension_body_bytes: int  # encrypted extension elements to skip after decryption


def is_rtcp(packet: bytes) -> bool:
    """RTCP shares the socket; it is recognised by its packet type (RFC 5761 section 4)."""
    return len(packet) >= 2 and packet[1] in RTCP_PACKET_TYPES


def parse_header(packet: bytes) -> RtpHeader:
    """The header of `packet`; raises MalformedPacket when it is too short or not RTP v2."""
    if len(packet) < RTP_FIXED_HEADER_BYTES:
        raise MalformedPacket("shorter than an RTP header")
    flags, marker_type, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    if flags >> 6 != RTP_VERSION:
        raise MalformedPacket("not RTP version 2")
    clear = RTP_FIXED_HEADER_BYTES + (flags & _FLAGS_CSRC_COUNT) * RTP_CSRC_BYTES
    extension_body = 0
    if flags & _FLAGS_EXTENSION:
        if len(packet) < clear + RTP_EXTENSION_PREAMBLE_BYTES:
            raise MalformedPacket("truncated header extension")
        _, words = _EXTENSION.unpack_from(packet, clear)
        clear += RTP_EXTENSION_PREAMBLE_BYTES
        extension_body = words * RTP_EXTENSION_WORD_BYTES
    if len(packet) < clear + AEAD_TAG_BYTES + RTPSIZE_NONCE_BYTES:
        raise MalformedPacket("no room for an encrypted payload")
    return RtpHeader(
        payload_type=marker_type & _PAYLOAD_TYPE,
        marker=bool(marker_type & _MARKER),
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        padding=bool(flags & _FLAGS_PADDING),
        clear_bytes=clear,
        extension_body_bytes=extension_body,
    )


def media_payload(header: RtpHeader, plaintext: bytes) -> bytes:
    """The media payload of a decrypted rtpsize packet: extension body and padding removed."""
    end = len(plaintext)
    if header.padding:
        # RFC 3550 5.1: the last octet counts the padding octets, itself included.
        if end == 0 or plaintext[-1] == 0 or plaintext[-1] > end - header.extension_body_bytes:
            raise MalformedPacket("bad RTP padding")
        end -= plaintext[-1]
    if header.extension_body_bytes > end:
        raise MalformedPacket("header extension longer than the packet")
    return plaintext[header.extension_body_bytes : end]


def sequence_delta(newer: int, older: int) -> int:
    """Signed distance between two 16-bit sequence numbers, wrap-around aware."""
    delta = (newer - older) % RTP_SEQUENCE_MODULO
    return delta - RTP_SEQUENCE_MODULO if delta >= RTP_SEQUENCE_MODULO // 2 else delta


def timestamp_delta(newer: int, older: int) -> int:
    """Signed distance between two 32-bit RTP timestamps, wrap-around aware."""
    delta = (newer - older) % RTP_TIMESTAMP_MODULO
    return delta - RTP_TIMESTAMP_MODULO if delta >= RTP_TIMESTAMP_MODULO // 2 else delta
