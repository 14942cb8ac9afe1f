"""A user's terminal for a real `python -m bot ...` process: a pseudo-terminal the test types into.

What the test reads is what a person would see: the program's stdout and stderr, and the typed
lines echoed by the terminal, in the order they appeared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.fakes.parley_process import ROOT

CTRL_D = b"\x04"  # end of input at the start of a line


class Terminal:
    """`async with Terminal(args, env=...) as term:`, then `term.type_line(...)` and
    `term.read_until(...)`."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.args = args
        self.env = {**env, "PYTHONPATH": str(ROOT)}
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self._master = -1
        self._seen = b""
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def screen(self) -> str:
        """Everything shown so far, with the terminal's \\r\\n line ends as \\n."""
        return self._seen.decode(errors="replace").replace("\r\n", "\n")

    async def __aenter__(self) -> Self:
        master, terminal = os.openpty()
        self._master = master
        try:
            # A session of its own: the test's own terminal (if any) is never touched.
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", *self.args,
                stdin=terminal, stdout=terminal, stderr=terminal,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(terminal)
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        return self

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._master, 4096)
        except OSError:  # the program ended and closed the terminal
            chunk = b""
        if chunk:
            self._seen += chunk
        else:
            self._closed = True
            asyncio.get_running_loop().remove_reader(self._master)
        self._changed.set()

    async def read_until(self, marker: str, *, count: int = 1, timeout: float = 120) -> str:
        """Wait until `marker` has been shown `count` times in all; returns the screen."""
        async with asyncio.timeout(timeout):
            while self.screen.count(marker) < count:
                if self._closed:
                    raise AssertionError(f"the program ended before {marker!r}:\n{self.screen}")
                self._changed.clear()
                await self._changed.wait()
        return self.screen

    def type_line(self, line: str) -> None:
        """Type a line and Enter."""
        os.write(self._master, line.encode() + b"\n")

    async def end_input(self, timeout: float = 60) -> int:
        """Ctrl-D at the prompt; waits for the program to exit and returns its exit code."""
        assert self.proc is not None
        os.write(self._master, CTRL_D)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            while not self._closed:  # what it wrote last is still in the terminal's buffer
                self._changed.clear()
                await self._changed.wait()
        return code

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if not self._closed:
            asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
