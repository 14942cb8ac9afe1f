"""The bot's one scheduler: the shared budgets, and the reply streams and queue notices on them."""

from __future__ import annotations

from bot.delivery.budgets import BudgetScheduler, Clock
from bot.delivery.notices import QueueNotices
from bot.delivery.stream import DEFAULT_MARKER, PartSink, ReplyStream
from bot.types import TextTarget


class EditScheduler(BudgetScheduler):
    """The budgets of every chat and platform; `open()` starts a reply, `queue_notices` waits.

    A separate class from `BudgetScheduler` because the streams and notices draw on the budgets:
    they import `BudgetScheduler`, this class imports them.
    """

    def __init__(self, clock: Clock | None = None, *, final_deadline_s: float = 60.0) -> None:
        super().__init__(clock, final_deadline_s=final_deadline_s)
        self.queue_notices = QueueNotices(self)

    def open(
        self,
        target: TextTarget,
        *,
        marker: str = DEFAULT_MARKER,
        on_part: PartSink | None = None,
    ) -> ReplyStream:
        """Start showing a reply in `target` (must be called from the event loop); `on_part` is
        told of each of its platform messages as soon as the platform returns the id."""
        return ReplyStream(self, target, self.lane(target), marker, on_part)
