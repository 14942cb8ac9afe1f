"""The tasks a platform adapter runs, one per update, so a slow reply never holds up the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class UpdateTasks:
    """Each update's work as a task of its own: a failure is logged (by `name`), and `drain()`
    at stop lets the work in progress finish for `grace_s`, then cancels it (the engine keeps
    what was streamed and marks it cut off)."""

    def __init__(self, name: str, grace_s: float) -> None:
        self._name = name
        self._grace_s = grace_s
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task of its own."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def drain(self) -> None:
        """Wait for the work in progress (at most `grace_s`), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: answering failed", self._name, exc_info=task.exception())
