"""What both dialects share: the row types, migrations on disk, write health, local locks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal

from bot.errors import StorageError, StorageProblem

log = logging.getLogger(__name__)

Role = Literal["user", "assistant"]
Status = Literal[
    "complete", "queued", "streaming", "partial", "failed", "interrupted", "background"
]
Dialect = Literal["sqlite", "postgresql"]
# Rows a prompt may include: what the user saw, even if the stream broke.
VISIBLE: tuple[Status, ...] = ("complete", "partial", "interrupted")
# A reply row still owned by a running turn; a crash leaves it so until marked 'interrupted'.
PENDING: tuple[Status, ...] = ("queued", "streaming")
# A group message the bot saw but was not addressed to: context for later prompts, never a turn.
BACKGROUND: Status = "background"
# Background messages kept per chat: older ones are deleted as new ones arrive.
BACKGROUND_KEPT = 200
MAIN_SESSION = "main"  # the name of a chat's first conversation (session id 0, no row)
# The largest row id either database holds (PostgreSQL's bigint, SQLite's INTEGER): an id typed
# by a user is checked against it before a query sees it (larger ones overflow the drivers).
MAX_ROW_ID = 2**63 - 1

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One NNNN_name.sql file: its version, its name (without .sql) and its SQL."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of a channel's history."""

    id: int
    role: Role
    author_id: str
    author_name: str
    content: str
    status: Status
    token_count: int | None
    created_at: float
    # A reply's tool calls and results (JSON, bot/tools/history.py); None: it called no tool.
    tool_exchange: str | None = None


@dataclass(frozen=True, slots=True)
class Memory:
    """A fact a user asked the bot to remember."""

    id: int
    content: str
    shared: bool  # also used when its owner talks to the bot in a group
    token_count: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Session:
    """One conversation of a chat: "main" (id 0) or one started with /session new."""

    id: int
    name: str
    created_at: float
    messages: int  # visible turns in it
    last_at: float | None  # its newest message, if any
    current: bool  # where the chat's new messages go


@dataclass(frozen=True, slots=True)
class Turn:
    """The rows reserved for one incoming message: the user's row and its reply's row."""

    channel_id: int
    user_row: int
    reply_row: int


def load_migrations(
    directory: Traversable | None = None, *, dialect: Dialect = "sqlite"
) -> list[Migration]:
    """Read NNNN_name.sql in version order; versions must be 1..N without gaps, and N >= 1.

    The migrations ship inside the package as `bot.migrations` (the repository's top-level
    migrations/ folder), one subfolder per SQL dialect, so an installed wheel finds them
    wherever it runs from.
    """
    folder = resources.files("bot.migrations") / dialect if directory is None else directory
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    files = sorted(
        (entry for entry in entries if entry.name.endswith(".sql")), key=lambda e: e.name
    )
    migrations = []
    for entry in files:
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            raise StorageError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        name = entry.name.removesuffix(".sql")
        migrations.append(Migration(int(match.group(1)), name, entry.read_text("utf-8")))
    if not migrations:
        # An empty schema would fail later with "no such table"; say what is wrong instead.
        raise StorageError(f"no migrations found in {folder}: the installation is incomplete")
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise StorageError(f"migration {migration.name} should be version {expected:04d}")
    return migrations


def migration_set(dialect: Dialect, migrations: list[Migration] | None) -> list[Migration]:
    """`migrations`, else the dialect's own; an empty set is refused."""
    migrations = load_migrations(dialect=dialect) if migrations is None else migrations
    if not migrations:
        raise StorageError("no migrations to apply: the installation is incomplete")
    return migrations


def pending_migrations(
    migrations: list[Migration], before: int, where: str, instead: str
) -> Iterator[Migration]:
    """The migrations a database at schema version `before` lacks, each logged as it is
    applied. A database newer than this code is refused: upgrade Parley, or `instead`."""
    latest = migrations[-1].version
    if before > latest:
        raise StorageError(
            f"the database {where} has schema version {before}, newer than this Parley knows "
            f"({latest}): upgrade Parley, or {instead}"
        )
    for migration in migrations[before:]:
        log.info("applying migration %s", migration.name)
        yield migration


class WriteHealth:
    """Whether the store's writes work: logged once per kind of failure, and once on recovery.

    A full disk fails every write: one ERROR line says so (not one per message), /healthz turns
    red with the reason, and the first write that works again is logged and clears it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.problem: StorageProblem | None = None
        self.detail = ""

    def failed(self, error: StorageError) -> None:
        """A write failed with `error`."""
        if error.problem != self.problem:
            log.error("%s: writes fail (%s): %s", self.name, error.problem, error)
        self.problem, self.detail = error.problem, str(error)

    def succeeded(self) -> None:
        """A write worked."""
        if self.problem is not None:
            log.warning("%s: writes work again (after: %s)", self.name, self.problem)
        self.problem, self.detail = None, ""


class LocalLocks:
    """FIFO asyncio locks by key, dropped once nobody holds or awaits them.

    `hold(key)` joins the key's line before its first suspension point, so callers that call it
    in some order without awaiting in between are served in that order.
    """

    def __init__(self) -> None:
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: object) -> AsyncIterator[None]:
        """Hold the lock of `key` for the duration of the block."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
