"""Sign-in sessions, CSRF tokens and the sign-in throttle of the admin console (all in memory).

Sessions live in this process only: a restart signs everyone out, which is the safe direction.
The cookie holds a random token; the server keeps only its SHA-256, so the session table itself
holds nothing a browser could present.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "parley_admin"
LOGIN_COOKIE = "parley_login"  # the sign-in form's CSRF token (double submit: cookie + field)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"  # the same token, for requests made by the page's script
IDLE_TIMEOUT_S = 8 * 3600.0  # a session unused this long ends
MAX_AGE_S = 24 * 3600.0  # and every session ends a day after sign-in
MAX_SESSIONS = 64  # beyond this, the least recently used session ends

# Sign-in throttle, per client address: a few free tries, then each failure doubles the wait.
FREE_FAILURES = 5
FIRST_LOCK_S = 30.0
MAX_LOCK_S = 15 * 60.0
FAILURE_MEMORY_S = 15 * 60.0  # failures older than this are forgotten
_MAX_TRACKED_ADDRESSES = 10_000

Clock = Callable[[], float]


def new_token() -> str:
    """A random token for cookies and forms (256 bits)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    """One signed-in browser."""

    csrf_token: str
    credential: str  # fingerprint of the password it signed in with
    remote: str
    created: float
    seen: float


class SessionStore:
    """Sessions by token; a session ends when idle, old, signed out, or its password changed."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, credential: str, remote: str) -> tuple[str, Session]:
        """A new session (never a reused token: no fixation); returns (cookie token, session)."""
        now = self._clock()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].seen)
            del self._sessions[oldest]
        token = new_token()
        session = Session(new_token(), credential, remote, created=now, seen=now)
        self._sessions[_key(token)] = session
        return token, session

    def get(self, token: str | None, credential: str) -> Session | None:
        """The live session of a cookie token, or None."""
        if not token:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        expired = now - session.seen > IDLE_TIMEOUT_S or now - session.created > MAX_AGE_S
        if expired or not hmac.compare_digest(session.credential, credential):
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(_key(token), None)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    locked_until: float


class LoginThrottle:
    """Slows password guessing: after FREE_FAILURES failures an address waits, longer each time.

    Keyed by the connecting address. Behind a reverse proxy every browser shares the proxy's
    address, so one guesser slows everyone down: the safe direction for a single-owner console.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def retry_after(self, address: str) -> int:
        """Whole seconds this address must wait before its next try; 0 when it may try now."""
        entry = self._failures.get(address)
        if entry is None:
            return 0
        wait = entry.locked_until - self._clock()
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, address: str) -> None:
        now = self._clock()
        entry = self._failures.get(address)
        if entry is None or now - entry.last > FAILURE_MEMORY_S:
            entry = _Failures(0, now, 0.0)
        entry.count += 1
        entry.last = now
        if entry.count >= FREE_FAILURES:
            lock = FIRST_LOCK_S * 2 ** (entry.count - FREE_FAILURES)
            entry.locked_until = now + min(MAX_LOCK_S, lock)
        self._failures[address] = entry
        if len(self._failures) > _MAX_TRACKED_ADDRESSES:
            self._forget_old(now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _forget_old(self, now: float) -> None:
        for address, entry in list(self._failures.items()):
            if now - entry.last > FAILURE_MEMORY_S and entry.locked_until <= now:
                del self._failures[address]
