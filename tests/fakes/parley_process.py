"""Run `python -m bot ...` as a real process, the way users start Parley."""

from __future__ import annotations

import asyncio
import os
import sys
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
