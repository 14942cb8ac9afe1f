"""Connecting to PostgreSQL: timeouts, advisory-lock namespaces, and errors that name
host:port/database and why, never the password in storage.url."""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from bot.errors import StorageError, StorageProblem

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_PORT = 5432
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0  # one statement; a turn's writes take milliseconds

# Advisory lock keys are (namespace, key) pairs of int4: these namespaces keep Parley's locks
# apart from each other and from other applications' locks in the same database.
_NAMESPACE = 0x50524C59  # "PRLY"
NS_MIGRATE = _NAMESPACE  # key 0: one process migrates at a time
NS_INSTANCE = _NAMESPACE + 1  # key: a store's instance number, held while the store lives
NS_CHANNEL = _NAMESPACE + 2  # key: the channel's turn lock (session level, on the coordinator)
NS_RECORD = _NAMESPACE + 3  # key: held while a turn's rows are inserted (transaction level)

# InternalClientError: asyncpg's state of a connection broken mid-statement (a server going
# down under a commit), a lost connection like the others.
_CLIENT_ERRORS = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
DB_ERRORS = (asyncpg.PostgresError, *_CLIENT_ERRORS, OSError, TimeoutError)

APPLICATION_NAME = "parley"  # how Parley's sessions show in pg_stat_activity
# Set on every session Parley opens. A host that dies without closing its connections (power
# loss, a network cut) leaves them open on the server, locks included, until TCP notices: by
# default after two hours. With these keepalives the server ends such a session within
# idle + interval * count = 60 s, and with it the turn locks it held; a transaction left open
# by a process that hangs is ended after a minute. (Settings of the server's side of each
# connection, which any user may set: https://www.postgresql.org/docs/15/runtime-config-connection.html)
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
IDLE_IN_TRANSACTION_S = 60
SESSION_SETTINGS = {
    "application_name": APPLICATION_NAME,
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_S * 1000),
}


def location(url: str) -> str:
    """`host:port/database` of a PostgreSQL URL: what messages name, never the password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    if ":" in host and not host.startswith("/"):
        host = f"[{host}]"  # an IPv6 literal
    try:
        port: int | str = parts.port or int(query.get("port", [DEFAULT_PORT])[0])
    except ValueError:
        port = "?"
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "")
    return f"{host}:{port}/{database}"


def url_secrets(url: str) -> list[str]:
    """The URL and its password (as written and decoded), for log redaction."""
    if not url:
        return []
    secrets = [url]
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            secrets += [password, unquote(password)]
    return secrets


def _reason(exc: BaseException) -> str:
    """Why a connection or a query failed, in words that never include the URL."""
    if isinstance(exc, socket.gaierror):
        return "the host name cannot be resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"{exc} (check the user and password in storage.url)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, (asyncpg.PostgresError, *_CLIENT_ERRORS)):
        return str(exc)
    # Anything else (e.g. a ValueError from parsing the URL) may quote the URL: say less.
    return f"{type(exc).__name__}: storage.url is not a valid PostgreSQL URL"


def storage_error(url: str, doing: str, exc: BaseException) -> StorageError:
    """A StorageError naming host:port/database and what failed, with the password scrubbed."""
    text = f"PostgreSQL at {location(url)}: {doing}: {_reason(exc)}"
    for secret in url_secrets(url):
        if len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return StorageError(text, problem=_problem(exc))


# SQLSTATE codes and classes (https://www.postgresql.org/docs/15/errcodes-appendix.html).
_SQLSTATE_PROBLEMS: dict[str, StorageProblem] = {
    "53100": "full",  # disk_full
    "25006": "read_only",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "58030": "io",  # io_error
    "53300": "busy",  # too_many_connections
    "40001": "busy",  # serialization_failure
    "40P01": "busy",  # deadlock_detected
}
_SQLSTATE_CLASS_PROBLEMS: dict[str, StorageProblem] = {
    "08": "unavailable",  # connection exception
    "57": "unavailable",  # operator intervention: shutdown, crash recovery
    "53": "full",  # insufficient resources
}


def _problem(exc: BaseException) -> StorageProblem:
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str):
        return _SQLSTATE_PROBLEMS.get(code) or _SQLSTATE_CLASS_PROBLEMS.get(code[:2], "error")
    if isinstance(exc, (OSError, TimeoutError, *_CLIENT_ERRORS)):
        return "unavailable"
    return "error"


async def connect(url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> asyncpg.Connection:
    """One connection, errors as StorageError (never chained: a parse error may quote the URL)."""
    try:
        return await asyncpg.connect(
            url,
            timeout=connect_timeout,
            command_timeout=COMMAND_TIMEOUT_S,
            server_settings=SESSION_SETTINGS,
        )
    except (*DB_ERRORS, ValueError) as exc:
        raise storage_error(url, "cannot connect", exc) from None
