"""The seam between the store and its database: reads, write transactions, and the dialect hooks.

The store's SQL is written once, with PostgreSQL's numbered placeholders (`$1`, which may
repeat); the SQLite driver translates each statement once into SQLite's `?1`. Where the two
dialects really differ, the driver says how: full-text search, the channel turn locks, how a
channel's rows keep id order across processes, which pending replies nobody will finish, index
hints, and LIKE without case. Every string a statement is given is made storable first, the
same way on both (`storable`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from bot.storage.base import Dialect, WriteHealth

T = TypeVar("T")
Row = tuple[Any, ...]
Searchable = Literal["messages", "memories"]  # the tables with a full-text index

_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as both databases store it: NUL and lone surrogates become U+FFFD.

    PostgreSQL refuses NUL in text, and a lone surrogate cannot be encoded in UTF-8 by either
    driver; a surrogate pair left by a lenient decoder becomes the character it stands for.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii() and _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def storable_value(value: Any) -> Any:
    """A JSON value with every string in it storable (PostgreSQL's jsonb refuses `\\u0000`)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list | tuple):
        return [storable_value(item) for item in value]
    if isinstance(value, dict):
        return {
            storable(key) if isinstance(key, str) else key: storable_value(item)
            for key, item in value.items()
        }
    return value


def storable_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """A statement's parameters with every string storable."""
    return tuple(storable(param) if isinstance(param, str) else param for param in params)


@dataclass(frozen=True, slots=True)
class FullText:
    """How a dialect searches a table's text: the FROM clause (the table's alias is `t`), the
    match condition and the ORDER BY term that puts the best matches first."""

    source: str
    match: str
    rank: str


class Tx(Protocol):
    """The statements of one write transaction (`$n` placeholders)."""

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it changed."""

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """Run one statement; its rows (a SELECT, or an INSERT ... RETURNING)."""

    async def fetchval(self, sql: str, *params: Any) -> Any:
        """Run one statement; the first column of its first row (None without a row)."""


class Database(ABC):
    """One database as the store uses it: SQLite (one process) or PostgreSQL (several)."""

    dialect: Dialect
    health: WriteHealth  # whether writes work, for /healthz
    like: str  # LIKE without case, for ASCII at least: SQLite's LIKE, PostgreSQL's ILIKE

    @property
    @abstractmethod
    def owner(self) -> int | None:
        """The number recorded as owner of the reply rows this process reserves, if any."""

    @property
    @abstractmethod
    def abandoned(self) -> str:
        """SQL condition on a pending reply row (table `messages`): nobody will finish it."""

    @abstractmethod
    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        """The rows of one read-only query."""

    async def fetchrow(self, sql: str, *params: Any) -> Row | None:
        """The first row of one read-only query, if any."""
        rows = await self.fetch(sql, *params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *params: Any) -> Any:
        """The first column of the first row of one read-only query (None without a row)."""
        row = await self.fetchrow(sql, *params)
        return row[0] if row else None

    async def search(
        self,
        table: Searchable,
        terms: Sequence[str],
        select: str,
        where: str,
        params: Sequence[Any],
        limit: int,
        *,
        channel_id: int | None = None,
    ) -> list[Row]:
        """Full-text search: `select` of the rows of `table` (alias `t`) that match any of
        `terms` and `where`, best first, at most `limit`. In `where` the text query is $1,
        `params` are $2 onwards."""
        query = self.text_query(terms, channel_id)
        if not query:
            return []
        text = self.full_text(table, "$1")
        return await self.fetch(
            f"SELECT {select} FROM {text.source} WHERE {text.match} AND {where}"
            f" ORDER BY {text.rank}, t.id DESC LIMIT ${len(params) + 2}",
            query,
            *params,
            limit,
        )

    @abstractmethod
    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one write transaction: all of it commits or none; failures are
        StorageError and are counted in `health`."""

    @abstractmethod
    def channel_turn(
        self, channel_id: int, reply_row: int | None
    ) -> AbstractAsyncContextManager[None]:
        """Hold the channel's turn lock (with `reply_row`: once earlier turns are done)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connections (and with them any locks held)."""

    @abstractmethod
    async def order_rows(self, tx: Tx, channel_id: int) -> None:
        """Make the rows `tx` inserts in a channel commit in id order, whoever else writes."""

    @abstractmethod
    def indexed_by(self, index: str) -> str:
        """A hint that a query reads its table through `index` ('' where none is needed)."""

    @abstractmethod
    def full_text(self, table: Searchable, query: str) -> FullText:
        """How to search `table` for the text query in parameter `query` (e.g. "$1")."""

    @abstractmethod
    def text_query(self, terms: Sequence[str], channel_id: int | None = None) -> str:
        """A text query matching any of `terms`, never query syntax ('' when nothing is left
        to search for); with `channel_id`, for the messages of that channel."""
