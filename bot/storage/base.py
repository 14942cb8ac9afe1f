"""What every store shares: the row types, the store contract, migrations on disk, local locks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, Protocol

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


class Store(Protocol):
    """The store contract: conversation history, channel settings and the audit log.

    Two implementations: `SQLiteStore` (one process, one file) and `PostgresStore` (several
    processes sharing one database). Channel settings are never cached by a store, so a change
    made by one process is what every process reads at its next message.
    """

    health: WriteHealth  # whether writes work, for /healthz

    async def close(self) -> None:
        """Release the connections (a PostgreSQL store also ends its turns' locks)."""

    async def probe_write(self) -> None:
        """Try a write that leaves nothing behind; raise StorageError if writes fail."""

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query in SQLite's dialect (`?` parameters), for reports."""

    async def channel_id(self, platform: str, channel_key: str) -> int:
        """The id of a channel, created on first use."""

    def channel_turn(
        self, channel_id: int, reply_row: int | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold the channel's turn lock: one answer at a time per channel, across processes.

        With `reply_row`, also wait (a bounded time) until every earlier reply of the channel
        that another live process still owns has finished, so answers follow row order.
        """

    async def start_turn(
        self,
        channel_id: int,
        *,
        author_id: str,
        author_name: str,
        content: str,
        token_count: int | None,
        bot_id: str = "bot",
    ) -> Turn:
        """Store the user's message and reserve its reply's row (status 'queued') in one go."""

    async def record_failed_input(
        self, channel_id: int, *, author_id: str, author_name: str, note: str
    ) -> int:
        """Record a turn that cannot be answered (e.g. an unreadable voice note) as 'failed'."""

    async def update_message(
        self,
        row_id: int,
        *,
        content: str | None = None,
        status: Status | None = None,
        token_count: int | None = None,
    ) -> None:
        """Update a message's content, status and token count (None leaves a field as it is)."""

    async def history(self, channel_id: int, before_row: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` visible messages of a channel older than `before_row`, newest first.

        Only `before_row`'s session (when there is no such row: the chat's current session).
        """

    async def get_message(self, row_id: int) -> StoredMessage | None:
        """One message by id, whatever its status."""

    async def clear_channel(self, channel_id: int, *, actor_id: str, actor_name: str) -> int:
        """Delete the chat's current conversation (its settings and other sessions stay);
        audited. Returns the rows deleted."""

    async def forget_author(self, platform: str, author_id: str, *, actor_name: str) -> int:
        """Delete every message a user wrote on a platform; audited. Returns rows deleted."""

    async def channel_settings(self, channel_id: int) -> dict[str, Any]:
        """A channel's overrides, read from the database every time (no cache)."""

    async def set_channel_setting(
        self, channel_id: int, key: str, value: Any, *, actor_id: str, actor_name: str, old: Any
    ) -> None:
        """Change one channel setting and write its audit row in the same transaction."""

    async def audit(
        self,
        channel_id: int | None,
        *,
        actor_id: str,
        actor_name: str,
        action: str,
        key: str | None = None,
        old_value: str | None = None,
        new_value: str | None = None,
    ) -> None:
        """Write one audit row (refusals, resets, forgets)."""

    async def audit_rows(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (all channels when channel_id is None)."""

    # -- memory (issue 14) ------------------------------------------------------------------

    async def remember(
        self, platform: str, user_id: str, content: str, *, token_count: int, actor_name: str
    ) -> int:
        """Store a fact for a user, private (`shared` false) to begin with. Returns its id."""

    async def memories(self, platform: str, user_id: str) -> list[Memory]:
        """A user's facts, oldest first."""

    async def forget_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, actor_name: str
    ) -> int:
        """Delete one of a user's facts (None: all of them); audited. Returns how many went."""

    async def share_memories(
        self, platform: str, user_id: str, memory_id: int | None, *, shared: bool
    ) -> int:
        """Let one fact (None: all) be used in groups too, or not; returns how many changed."""

    async def search_memories(
        self,
        platform: str,
        user_id: str,
        terms: Sequence[str],
        *,
        shared_only: bool,
        limit: int,
    ) -> list[Memory]:
        """A user's facts matching any of `terms` (full-text search), most relevant first."""

    async def search_history(
        self, channel_id: int, turn_row: int, before_row: int, terms: Sequence[str], limit: int
    ) -> list[StoredMessage]:
        """Visible messages of `turn_row`'s session older than `before_row` that match any of
        `terms` (full-text search), most relevant first."""

    # -- group background (issue 14) ---------------------------------------------------------

    async def record_background(
        self,
        channel_id: int,
        *,
        author_id: str,
        author_name: str,
        content: str,
        token_count: int,
    ) -> int:
        """Store a group message the bot was not addressed to (status 'background'); only the
        newest BACKGROUND_KEPT of a chat are kept. Returns its row id."""

    async def background(
        self, channel_id: int, turn_row: int, after_row: int, limit: int
    ) -> list[StoredMessage]:
        """Background messages of `turn_row`'s session between `after_row` and `turn_row`
        (both excluded), newest first."""

    # -- sessions (issue 14) -------------------------------------------------------------------

    async def sessions(self, channel_id: int) -> list[Session]:
        """A chat's conversations: "main" first, then by creation."""

    async def new_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Start a conversation called `name` and make it current; audited. None if the name is
        taken. The conversation before it is kept."""

    async def switch_session(
        self, channel_id: int, name: str, *, actor_id: str, actor_name: str
    ) -> Session | None:
        """Make the conversation called `name` current again; audited. None if there is none."""

    async def session_messages(
        self, channel_id: int, session_id: int, limit: int
    ) -> list[StoredMessage]:
        """The last `limit` visible messages of one of a chat's conversations, oldest first."""

    async def mark_interrupted(self) -> int:
        """Replies left 'queued' or 'streaming' by a process that is gone become 'interrupted'."""

    async def purge_older_than(self, days: int) -> int:
        """Delete messages older than `days` days (storage.retention_days)."""


def session_list(
    current: int,
    main_created: float,
    named: list[tuple[Any, ...]],
    counts: dict[int, tuple[int, Any]],
) -> list[Session]:
    """`sessions()` of both stores: "main" (id 0), then the named ones, with their counts."""
    out = []
    for session_id, name, created in [(0, MAIN_SESSION, main_created), *named]:
        count, last = counts.get(int(session_id), (0, None))
        out.append(
            Session(
                int(session_id),
                name,
                float(created),
                messages=count,
                last_at=float(last) if last is not None else None,
                current=int(session_id) == current,
            )
        )
    return out


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
