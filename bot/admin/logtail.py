"""The live log tail: a bounded ring of recent log records, fed by a handler on the root logger.

Every record is redacted with the same `RedactSecrets` the log output uses before it is kept, so
the ring never holds a secret. Records may come from any thread (aiosqlite's, the speech
workers'): subscribers (the page's event streams) are fed on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from bot.logs import RedactSecrets

RING_SIZE = 1000  # records kept
SUBSCRIBER_BACKLOG = 500  # records a slow page may fall behind before it misses some


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One redacted log record, ready to show."""

    seq: int
    time: float
    level: str
    logger: str
    message: str

    @property
    def clock(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.time))

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "clock": self.clock}


class LogRing(logging.Handler):
    """Keeps the last RING_SIZE records and streams new ones to subscribers."""

    def __init__(self, secrets: list[str], *, size: int = RING_SIZE) -> None:
        super().__init__()
        self._redact = RedactSecrets(secrets).redact
        self._entries: deque[LogEntry] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[LogEntry | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._guard = threading.Lock()

    def attach(self) -> None:
        """Start receiving the process's log records (call on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        logging.getLogger().addHandler(self)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)
        self._loop = None

    def entries(self, limit: int | None = None) -> list[LogEntry]:
        """The newest `limit` entries (all kept ones when None), oldest first."""
        with self._guard:
            kept = list(self._entries)
        return kept if limit is None else kept[-limit:]

    def subscribe(self) -> asyncio.Queue[LogEntry | None]:
        """A queue of new entries; None in it is a wake-up (the server is closing)."""
        queue: asyncio.Queue[LogEntry | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LogEntry | None]) -> None:
        self._subscribers.discard(queue)

    def wake_all(self) -> None:
        """Wake every subscriber (with None), e.g. so event streams notice a shutdown."""
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a full queue wakes its reader anyway
                queue.put_nowait(None)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:
                message += "\n" + record.exc_text
            message = self._redact(message)
            with self._guard:
                entry = LogEntry(
                    next(self._seq), record.created, record.levelname, record.name, message
                )
                self._entries.append(entry)
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            if threading.get_ident() == self._loop_thread:
                self._publish(entry)
            else:
                loop.call_soon_threadsafe(self._publish, entry)
        except Exception:  # noqa: BLE001 - a log handler must never raise into the code that logged
            self.handleError(record)

    def _publish(self, entry: LogEntry) -> None:
        for queue in list(self._subscribers):
            if not queue.full():  # a page that fell behind misses records, the bot never waits
                queue.put_nowait(entry)
