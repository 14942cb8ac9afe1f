"""API keys: those of `api.keys` and those made with `parley api-key create NAME`, of which the
store keeps only the SHA-256 (a key is 256 random bits: a fast hash is enough to hide it).

A presented key is hashed and compared, in constant time, with every known hash; which one it
matched, if any, is decided only after all were compared. Stored keys are read again every few
seconds, and at once (at most every second) when a key matches none, so a new one works at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import sys
import time
from collections.abc import Callable, Mapping

from pydantic import SecretStr

from adapters.api.config import ApiSettings, check_key_name
from bot.config import Settings
from bot.errors import StorageError
from bot.storage import HistoryStore, open_store

log = logging.getLogger(__name__)

KEY_PREFIX = "pk-"  # says what a key is when one turns up in a file or a paste
STORED_KEYS_FRESH_S = 5.0  # stored keys are read again this often...
REREAD_ON_MISS_S = 1.0  # ... and on a key that matched none, at most this often

EXIT_OK = 0
EXIT_REFUSED = 1


def key_hash(key: str) -> str:
    """The SHA-256 of a key, hex: what the store keeps."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    """A new random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """Which key's name a presented key is, if any."""

    def __init__(
        self,
        configured: Mapping[str, SecretStr],
        store: HistoryStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._configured = [
            (name, bytes.fromhex(key_hash(key.get_secret_value())))
            for name, key in configured.items()
        ]
        self._store = store
        self._clock = clock
        self._stored: list[tuple[str, bytes]] = []
        self._read_at = -math.inf

    async def owner(self, presented: str) -> str | None:
        """The name of the key `presented` is, or None."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        if self._clock() - self._read_at > STORED_KEYS_FRESH_S:
            await self._read()
        name = self._match(digest)
        if name is None and self._clock() - self._read_at > REREAD_ON_MISS_S:
            await self._read()
            name = self._match(digest)
        return name

    def _match(self, digest: bytes) -> str | None:
        found = None
        for name, known in (*self._configured, *self._stored):
            # Every hash is compared, whatever matched before: the time says nothing.
            if hmac.compare_digest(known, digest) and found is None:
                found = name
        return found

    async def _read(self) -> None:
        self._read_at = self._clock()
        try:
            rows = await self._store.api_key_hashes()
        except StorageError as exc:  # the store logged it; the keys read before still work
            log.info("API keys not read again: %s", exc)
            return
        configured = {name for name, _ in self._configured}
        # A configured name wins over a stored one of the same name (made before it was set).
        self._stored = [
            (name, bytes.fromhex(digest)) for name, digest in rows if name not in configured
        ]


async def create_key(settings: Settings, name: str) -> int:
    """`parley api-key create NAME`: print a new key once (standard output, alone on its line)
    and store only its hash. Refused for a bad name or one already used."""
    problem = check_key_name(name)
    if problem:
        print(f"Not created: {problem}.", file=sys.stderr)
        return EXIT_REFUSED
    if name in ApiSettings.of(settings).keys:
        print(f"Not created: api.keys already has a key called {name!r}.", file=sys.stderr)
        return EXIT_REFUSED
    key = new_key()
    store = await open_store(settings.storage)
    try:
        added = await store.add_api_key(name, key_hash(key))
    finally:
        await store.close()
    if not added:
        print(f"Not created: there is a key called {name!r} already.", file=sys.stderr)
        return EXIT_REFUSED
    print(key)
    print(
        f"The API key for {name!r} is above: it is shown this once (only its hash is kept).",
        file=sys.stderr,
    )
    if not settings.http.enabled:
        print("The API is served when [http] enabled = true (see docs/api.md).", file=sys.stderr)
    return EXIT_OK
