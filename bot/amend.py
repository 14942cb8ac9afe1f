"""Amendable turns: a voice utterance answered at the speaker's first short pause, whose words
may still grow. The engine stores it once and amends that turn in place when more is said."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

from bot.reply import store_reply

if TYPE_CHECKING:
    from bot.reply import TurnState
    from bot.storage import HistoryStore, Turn
    from bot.types import AmendableTurn, IncomingMessage

T = TypeVar("T")


async def store_amendable(
    store: HistoryStore,
    msg: IncomingMessage,
    channel_id: int,
    content: str,
    tokens: int,
    amend: AmendableTurn,
) -> Turn:
    """Store the turn `amend` stands for: anew the first time, else amended in place. Runs to
    its end even if the answer is withdrawn meanwhile: the amendment needs the turn whole."""

    async def write() -> Turn:
        if amend.rows is None or amend.rows.channel_id != channel_id:
            amend.rows = await store.start_turn(
                channel_id,
                author_id=msg.user_id,
                author_name=msg.user_name,
                content=content,
                token_count=tokens,
            )
        else:
            await store.amend_turn(amend.rows, content=content, token_count=tokens)
        return amend.rows

    return await _even_if_cancelled(write())


@contextlib.asynccontextmanager
async def withdrawn_answer(store: HistoryStore, turn: TurnState) -> AsyncIterator[None]:
    """Around an answer: cancelled because its speaker went on, its reply row is marked 'failed'
    (never shown as an answer); the amendment reserves the row again."""
    try:
        yield
    except asyncio.CancelledError:
        if turn.withdrawn and turn.rows is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(store_reply(store, turn.rows, "", "failed"))
        raise


async def _even_if_cancelled(work: Awaitable[T]) -> T:
    """`work`'s result; if the caller is cancelled meanwhile, `work` still runs to its end before
    the cancellation goes on."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # its own failure is the amendment's to meet
            await task
        raise
