"""Run `python -m bot ...` as a real process, the way users start Parley."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def parley_env(**settings: str) -> dict[str, str]:
    """This process's environment without any PARLEY_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(settings)
    return env


async def start_parley(
    *args: str,
    env: dict[str, str],
    cwd: Path = ROOT,
    stdin: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """Start `python -m bot *args` with piped stdout (and stdin/stderr unless told)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
    )


LIMIT_S = 120.0  # hang guard for a step of a real process on a loaded 2-core machine


async def until(check: Callable[[], Awaitable[bool]], what: str, limit_s: float = LIMIT_S) -> None:
    """Poll `check` until it holds (a hang guard only, no timing expectation)."""
    try:
        async with asyncio.timeout(limit_s):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class BotProcess:
    """One `python -m bot run` process with its log in a file; `start()` again after a kill."""

    def __init__(self, env: dict[str, str], log_path: Path, *, ready: str) -> None:
        """`ready`: the log line that says it runs (e.g. "Parley is running on discord")."""
        self.env = env
        self.log_path = log_path
        self.ready = ready
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = await asyncio.to_thread(open, self.log_path, "ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=ROOT, env={**self.env, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip

    async def running(self) -> bool:
        """Whether its latest start is through (AssertionError if it exited)."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"the bot exited:\n{self.log()[-3000:]}")
        return self.log().count(self.ready) >= self.starts

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: nothing of the process's own shutdown runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it; its exit code (None if it never ran)."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
