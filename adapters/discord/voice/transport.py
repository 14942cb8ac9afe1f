"""Transport encryption of Discord voice packets: the two AEAD `rtpsize` modes Discord offers.

Both modes (https://discord.com/developers/docs/topics/voice-connections#transport-encryption-modes)
lay a packet out as `clear RTP header | ciphertext + 16-byte tag | 4-byte big-endian counter`,
with the clear header as additional data and the counter, zero-padded at the end, as the nonce:
24 bytes for XChaCha20-Poly1305 (libsodium, through PyNaCl), 12 bytes for AES-256-GCM
(OpenSSL, through `cryptography`; PyNaCl has no AES-GCM binding).
"""

from __future__ import annotations

import struct
from typing import Protocol

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.discord.voice.rtp import RTPSIZE_NONCE_BYTES

MODE_XCHACHA20 = "aead_xchacha20_poly1305_rtpsize"  # every client must support it
MODE_AES256_GCM = "aead_aes256_gcm_rtpsize"  # Discord's preferred mode
SUPPORTED_MODES = (MODE_AES256_GCM, MODE_XCHACHA20)
XCHACHA20_NONCE_BYTES = 24
AES_GCM_NONCE_BYTES = 12
SECRET_KEY_BYTES = 32  # SESSION_DESCRIPTION's secret_key: 32 integers 0-255


class DecryptionFailed(ValueError):
    """The packet does not authenticate under the session's key (or is truncated)."""


class UnsupportedMode(ValueError):
    """The voice server selected a mode Parley does not implement."""


class TransportCipher(Protocol):
    """One session key in one mode."""

    mode: str

    def decrypt(self, packet: bytes, clear_bytes: int) -> bytes:
        """The plaintext of an rtpsize `packet` whose first `clear_bytes` are the clear header."""
        ...

    def encrypt(self, header: bytes, payload: bytes, counter: int) -> bytes:
        """A whole packet: `header`, the sealed `payload`, the counter suffix."""
        ...


def _nonce(suffix: bytes, size: int) -> bytes:
    return suffix + bytes(size - RTPSIZE_NONCE_BYTES)


class XChaCha20Rtpsize:
    """`aead_xchacha20_poly1305_rtpsize`."""

    mode = MODE_XCHACHA20

    def __init__(self, key: bytes) -> None:
        self._key = key

    def decrypt(self, packet: bytes, clear_bytes: int) -> bytes:
        suffix = packet[-RTPSIZE_NONCE_BYTES:]
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                packet[clear_bytes:-RTPSIZE_NONCE_BYTES],
                packet[:clear_bytes],
                _nonce(suffix, XCHACHA20_NONCE_BYTES),
                self._key,
            )
        except nacl.exceptions.CryptoError as exc:
            raise DecryptionFailed(str(exc)) from None

    def encrypt(self, header: bytes, payload: bytes, counter: int) -> bytes:
        suffix = struct.pack(">I", counter)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            payload, header, _nonce(suffix, XCHACHA20_NONCE_BYTES), self._key
        )
        return header + sealed + suffix


class Aes256GcmRtpsize:
    """`aead_aes256_gcm_rtpsize`."""

    mode = MODE_AES256_GCM

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def decrypt(self, packet: bytes, clear_bytes: int) -> bytes:
        suffix = packet[-RTPSIZE_NONCE_BYTES:]
        try:
            return self._aead.decrypt(
                _nonce(suffix, AES_GCM_NONCE_BYTES),
                packet[clear_bytes:-RTPSIZE_NONCE_BYTES],
                packet[:clear_bytes],
            )
        except InvalidTag:
            raise DecryptionFailed("AES-GCM tag mismatch") from None

    def encrypt(self, header: bytes, payload: bytes, counter: int) -> bytes:
        suffix = struct.pack(">I", counter)
        sealed = self._aead.encrypt(_nonce(suffix, AES_GCM_NONCE_BYTES), payload, header)
        return header + sealed + suffix


def make_cipher(mode: str, key: bytes) -> TransportCipher:
    """The cipher of `mode` with the session's secret key."""
    if len(key) != SECRET_KEY_BYTES:
        raise ValueError(f"a voice secret key has {SECRET_KEY_BYTES} bytes, not {len(key)}")
    if mode == MODE_XCHACHA20:
        return XChaCha20Rtpsize(key)
    if mode == MODE_AES256_GCM:
        return Aes256GcmRtpsize(key)
    raise UnsupportedMode(mode)
