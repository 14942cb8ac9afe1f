"""Sign-in sessions, CSRF tokens and the sign-in throttle of the admin console.

Sessions and the throttle live in the store (bot/storage/console_sessions.py, throttle.py), so
every process sharing a PostgreSQL database shares them: a cookie signed in on one works on the
others, and five sign-in attempts are all an address gets, whichever processes they reach.
The cookie holds a random token; the store keeps only its SHA-256, and the session's CSRF token
is derived from the cookie's token (an HMAC), so the database holds nothing a browser could
present.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.storage.throttle import ThrottlePolicy

if TYPE_CHECKING:
    from bot.storage import Store

SESSION_COOKIE = "parley_admin"
LOGIN_COOKIE = "parley_login"  # the sign-in form's CSRF token (double submit: cookie + field)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"  # the same token, for requests made by the page's script
IDLE_TIMEOUT_S = 8 * 3600.0  # a session unused this long ends
MAX_AGE_S = 24 * 3600.0  # and every session ends a day after sign-in
MAX_SESSIONS = 64  # beyond this, the least recently used session ends
TOUCH_EVERY_S = 60.0  # a session's last use is written at most this often

# Sign-in throttle, per client address: an attempt is counted before its password is checked;
# FREE_ATTEMPTS go ahead, then each attempt doubles the wait.
SIGN_IN_SCOPE = "admin.sign_in"
FREE_ATTEMPTS = 5
SIGN_IN_THROTTLE = ThrottlePolicy(
    free=FREE_ATTEMPTS, first_wait_s=30.0, max_wait_s=15 * 60.0, memory_s=15 * 60.0
)

Clock = Callable[[], float]


def new_token() -> str:
    """A random token for cookies and forms (256 bits)."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _csrf(token: str) -> str:
    # Keyed by the cookie's token: the stored hash of that token cannot give it.
    return hmac.new(token.encode(), b"parley admin csrf", hashlib.sha256).hexdigest()


def _bound(token: str, credential: str) -> str:
    """What the store keeps of the password's fingerprint: bound to the cookie's token, which
    it does not hold, so the row says nothing about the password."""
    return hmac.new(token.encode(), b"credential\0" + credential.encode(), "sha256").hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser."""

    csrf_token: str
    credential: str  # fingerprint of the password it signed in with
    remote: str
    created: float
    seen: float


class SessionStore:
    """Sessions by cookie token; a session ends when idle, old, signed out, or its password
    changed (on every process sharing the store)."""

    def __init__(self, store: Store, *, clock: Clock = time.time) -> None:
        self._store = store
        self._clock = clock

    async def create(self, credential: str, remote: str) -> tuple[str, Session]:
        """A new session (never a reused token: no fixation); returns (cookie token, session)."""
        now = self._clock()
        await self._store.end_stale_console_sessions(
            seen_before=now - IDLE_TIMEOUT_S, created_before=now - MAX_AGE_S
        )
        token = new_token()
        await self._store.add_console_session(
            _key(token), _bound(token, credential), remote, now=now, keep=MAX_SESSIONS
        )
        return token, Session(_csrf(token), credential, remote, created=now, seen=now)

    async def get(self, token: str | None, credential: str) -> Session | None:
        """The live session of a cookie token, or None."""
        if not token:
            return None
        key = _key(token)
        row = await self._store.console_session(key)
        if row is None:
            return None
        now = self._clock()
        expired = now - row.seen_at > IDLE_TIMEOUT_S or now - row.created_at > MAX_AGE_S
        if expired or not hmac.compare_digest(row.credential, _bound(token, credential)):
            await self._store.end_console_session(key)
            return None
        if now - row.seen_at >= TOUCH_EVERY_S:
            await self._store.touch_console_session(key, now)
        return Session(_csrf(token), credential, row.remote, created=row.created_at, seen=now)

    async def end(self, token: str | None) -> None:
        """Sign the token's session out."""
        if token:
            await self._store.end_console_session(_key(token))
