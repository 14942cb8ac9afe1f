"""The admin password: an argon2 hash in a file, or `http.admin_password` from the environment.

There is no default password. `parley admin set-password` writes only the argon2 hash, to a file
beside the database (mode 0600, replaced atomically), so it survives restarts and lives on the same
volume as the data in a container. The file is read again at every sign-in and on every request,
so a new password takes effect, and sessions signed in with the old one end, without a restart.
Hashing and verifying run in a worker thread: argon2 takes tens of milliseconds and 64 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bot.config import MIN_ADMIN_PASSWORD_CHARS, Settings

PASSWORD_FILE_NAME = "admin-password"
HASH_PREFIX = "$argon2"
# Verifications at once: each takes argon2's memory cost, so a flood of sign-ins cannot pile up.
MAX_CONCURRENT_VERIFICATIONS = 2

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 defaults

Origin = Literal["environment", "file"]


@dataclass(frozen=True, slots=True)
class Credential:
    """The password hash in force, where it came from, and a fingerprint naming it in sessions.

    Sessions are bound to the fingerprint (never stored as it is: bot.admin.sessions), so a
    changed password ends the sessions of the old one. It is the same in every process with
    the same password: from the file's hash, or, for the environment's password (which each
    process hashes with a salt of its own), from the password.
    """

    hash: str
    origin: Origin
    fingerprint: str


def _fingerprint(text: str) -> str:
    return hashlib.sha256(b"parley admin credential\0" + text.encode()).hexdigest()[:32]


def password_file(settings: Settings) -> Path:
    """`http.admin_password_file`, else "admin-password" in the database's folder."""
    if settings.http.admin_password_file:
        return Path(settings.http.admin_password_file).expanduser()
    return Path(settings.storage.path).expanduser().absolute().parent / PASSWORD_FILE_NAME


def check_new_password(password: str) -> str | None:
    """Why `password` cannot be the admin password, or None when it can."""
    if len(password) < MIN_ADMIN_PASSWORD_CHARS:
        return f"the password must be at least {MIN_ADMIN_PASSWORD_CHARS} characters"
    if password != password.strip():
        return "the password must not start or end with spaces"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash of `password` (blocking: call it in a thread)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches (blocking: call it in a thread)."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def write_hash_file(path: Path, password_hash: str) -> None:
    """Replace the hash file atomically, readable by its owner only (blocking)."""
    if not password_hash.startswith(HASH_PREFIX):
        raise ValueError("only an argon2 hash is ever written")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(password_hash + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_hash_file(path: Path) -> str | None:
    """The stored hash, or None when there is none (blocking)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text if text.startswith(HASH_PREFIX) else None


class PasswordStore:
    """Answers "which password is in force?" and checks a sign-in against it."""

    def __init__(self, settings: Settings) -> None:
        self.path = password_file(settings)
        self._env_password = settings.http.admin_password.get_secret_value()
        self._env_hash: str | None = None
        self._verifying = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)
        self.checks = 0  # passwords checked against the hash since start (what a guesser got)

    async def start(self) -> None:
        """Hash a password from the environment once, so only its hash is compared."""
        if self._env_password and self._env_hash is None:
            self._env_hash = await asyncio.to_thread(hash_password, self._env_password)

    async def current(self) -> Credential | None:
        """The credential in force: the environment's wins over the file; None when neither."""
        if self._env_password:
            await self.start()
            assert self._env_hash is not None
            return Credential(self._env_hash, "environment", _fingerprint(self._env_password))
        stored = await asyncio.to_thread(read_hash_file, self.path)
        return Credential(stored, "file", _fingerprint(stored)) if stored else None

    async def verify(self, credential: Credential, password: str) -> bool:
        """Check a sign-in in a worker thread, at most a few at a time."""
        self.checks += 1
        async with self._verifying:
            return await asyncio.to_thread(verify_password, credential.hash, password)
