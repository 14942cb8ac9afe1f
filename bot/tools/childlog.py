"""A tool server process's stderr: logged line by line (redacted), its last lines kept for errors.

The pipe's end of file also tells that the process is gone, sooner than the next call would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable
from typing import IO, TextIO

logger = logging.getLogger(__name__)

LINE_CHARS = 500  # a longer line is cut: a server dumping a blob must not flood the log
TAIL_LINES = 3


class ChildStderr:
    """A pipe for a child's stderr: `writer` goes to the child, `start()` reads the other end."""

    def __init__(self, server: str, redact: Callable[[str], str], on_eof: Callable[[], None]):
        self._server = server
        self._redact = redact
        self._on_eof = on_eof
        read_fd, write_fd = os.pipe()
        self._reader: IO[bytes] = os.fdopen(read_fd, "rb", buffering=0)
        self.writer: TextIO = os.fdopen(write_fd, "w")
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.BaseTransport | None = None

    @property
    def tail(self) -> str:
        """The child's last stderr lines (redacted), joined; empty when it wrote none."""
        return " | ".join(self._tail)

    async def start(self) -> None:
        """Read the pipe in the background."""
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), self._reader
        )
        self._task = asyncio.create_task(self._pump(stream), name=f"tool-stderr-{self._server}")

    def release_writer(self) -> None:
        """Close Parley's copy of the child's end, once the child holds its own (so the child's
        exit reaches this end as end of file)."""
        with contextlib.suppress(OSError):
            self.writer.close()

    async def aclose(self) -> None:
        """Stop reading and close both ends."""
        self.release_writer()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()
        else:
            self._reader.close()

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(4096):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[: LINE_CHARS * 4]
            for line in lines:
                self._keep(line)
        if pending:
            self._keep(pending)
        self._on_eof()

    def _keep(self, raw: bytes) -> None:
        line = self._redact(raw.decode("utf-8", "replace").rstrip()[:LINE_CHARS])
        if line:
            self._tail.append(line)
            logger.debug("tool server %s: %s", self._server, line)
