"""Replies a killed process left half-shown, finished on their platform after the restart.

A process killed outright (SIGKILL, power loss) while it streams leaves the reply's last message
ending in the streaming marker. The reply streamer records each message's id as the platform
returns it (bot/storage/reply_parts.py). When a platform's adapter starts, it hands
`InterruptedReplies` the way to rewrite one of its messages; the open parts of every interrupted
reply are then rewritten with the text saved and a note, under the platform's budgets, and given
up (with a log line) when the platform refuses or does not answer in time. On PostgreSQL every
process looks again every `REPAIR_SWEEP_S`, for replies of a peer that died; the store gives
each reply to one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bot.channel_config import chat_language
from bot.config import Settings
from bot.errors import DeliveryError, StorageError
from bot.messages import Msg, say
from bot.splitter import split_markdown
from bot.storage import HistoryStore
from bot.storage.reply_parts import OpenPart

log = logging.getLogger(__name__)

REPAIR_SWEEP_S = 60.0  # PostgreSQL: how often a process looks for replies of peers that died
_BATCH = 100  # replies claimed at a time
_AT_ONCE = 8  # messages rewritten at once (the budgets pace them anyway)

# Writes `text` into the platform message of `part` (an edit, or a new message where the part was
# a draft that no longer exists); raises DeliveryError or OSError when it cannot.
RewritePart = Callable[[OpenPart, str], Awaitable[None]]


def finished_text(part: OpenPart, max_chars: int, note: str) -> str:
    """What an interrupted part shows once finished: its share of the saved text, cut as the
    streamer cut it, and on the reply's last open part the note, within `max_chars`."""
    chunks = split_markdown(part.content.rstrip(), max_chars)
    text = chunks[part.part] if part.part < len(chunks) else ""
    if not part.last:
        return text or "…"
    room = max_chars - len(note) - 2
    text = text[: max(0, room)].rstrip()
    return f"{text}\n\n{note}" if text else note


class InterruptedReplies:
    """Finishes one platform's interrupted replies: at start, then on PostgreSQL every
    `sweep_s`; `start()` when the adapter can write to its platform, `stop()` before it closes."""

    def __init__(
        self,
        store: HistoryStore,
        platform: str,
        rewrite: RewritePart,
        *,
        max_chars: int,
        settings: Settings,
        sweep_s: float = REPAIR_SWEEP_S,
    ) -> None:
        self._store = store
        self._settings = settings
        self._platform = platform
        self._rewrite = rewrite
        self._max_chars = max_chars
        self._sweep_s = sweep_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Look for interrupted replies now (in a task of its own), and then again and again."""
        self._task = asyncio.create_task(self._run(), name=f"repair:{self._platform}")

    async def stop(self) -> None:
        """Stop looking (a rewrite in progress is abandoned: the next start takes it on)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except StorageError as exc:
                log.warning("%s: interrupted replies not looked for: %s", self._platform, exc)
            if not self._store.shared:
                return  # one process owns the file: only the last run left replies behind
            await asyncio.sleep(self._sweep_s)

    async def sweep(self) -> int:
        """Finish every interrupted reply of the platform that no live process owns; returns
        how many of their messages were finished."""
        if self._store.shared:
            await self._store.mark_interrupted()  # the replies of peers that died meanwhile
        started = time.monotonic()
        finished = replies = 0
        limit = asyncio.Semaphore(_AT_ONCE)
        while parts := await self._store.claim_interrupted(self._platform, _BATCH):
            replies += len({part.reply_row for part in parts})
            done = await asyncio.gather(*(self._finish(part, limit) for part in parts))
            finished += sum(done)
        if replies:
            log.warning(
                "%s: finished %d messages of %d interrupted replies in %.1f s",
                self._platform,
                finished,
                replies,
                time.monotonic() - started,
            )
        return finished

    async def _finish(self, part: OpenPart, limit: asyncio.Semaphore) -> bool:
        # Nobody is talking now: the chat's language setting, else the configured one.
        lang = await chat_language(
            self._store, self._settings, self._platform, part.channel_key, ""
        )
        text = finished_text(part, self._max_chars, say(Msg.REPLY_INTERRUPTED, lang=lang))
        ok = False
        async with limit:
            try:
                await self._rewrite(part, text)
                ok = True
            except (DeliveryError, OSError) as exc:  # refused, or past the budgets' deadline
                log.warning(
                    "%s: message %s of interrupted reply %d not finished, given up: %s",
                    self._platform,
                    part.message_id,
                    part.reply_row,
                    exc,
                )
            # One message's error boundary: the others are still finished.
            except Exception:
                log.exception(
                    "%s: finishing message %s of reply %d failed",
                    self._platform,
                    part.message_id,
                    part.reply_row,
                )
        # Finished or given up: either way it is not tried again at every start.
        await self._store.part_done(part.reply_row, part.part, part.message_id)
        return ok
