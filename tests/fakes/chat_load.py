"""Many chats at once through a platform fake: every message needs its reply, in its chat's order.

A round sends `per_chat` messages into each chat, all at once, and waits until every reply
shows its final text, which `expect(question)` gives (the fake LLM echoes the question: see
`platform_bots.echo_reply`). The
round's `LoadResult` counts what was lost, duplicated or answered out of order, and the errors
the fake answered meanwhile. Rounds can repeat on the same bot (bench/bench_soak.py measures
memory across them). The bot itself is started by the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, snowflake
from tests.fakes.platform_bots import QUEUE_NOTICE_PREFIX, echoed
from tests.fakes.telegram_api import FakeTelegramAPI

CHECK_EVERY_S = 0.05  # how often a round looks at the fake's messages while it waits
SHOWN_PROBLEMS = 5  # problems quoted in a result, for assertion messages


@dataclass
class LoadResult:
    """What one round delivered."""

    chats: int
    messages: int
    answered: int = 0  # replies whose final text showed, in any order
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0  # chats whose replies came in another order than their questions
    rate_limited: int = 0  # 429s the fake answered during the round
    server_errors: int = 0  # 5xx the fake answered during the round
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def check(self, chat: str, expected: list[str], got: list[str]) -> None:
        """Count one chat's replies against the questions it asked."""
        present = [text for text in got if text in expected]
        self.answered += len(set(present))
        self.lost += len(set(expected) - set(present))
        self.duplicated += len(present) - len(set(present))
        in_order = [text for text in expected if text in present]
        if present != in_order and len(present) == len(set(present)):
            self.out_of_order += 1
        if present != expected and len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(f"chat {chat}: expected {expected}, got {got}")


class ChatLoad(Protocol):
    """Rounds of messages into many chats of one platform fake."""

    def forget(self) -> None:
        """Drop the fake's records of earlier rounds."""
        ...

    async def round(self, per_chat: int, *, deadline_s: float) -> LoadResult:
        """Send `per_chat` messages into every chat at once and wait for all the replies."""
        ...


def _questions(round_no: int, per_chat: int) -> list[str]:
    return [f"r{round_no} m{i}" for i in range(per_chat)]


async def _wait(done: Callable[[], bool], deadline_s: float) -> None:
    """Poll `done()` until it holds or the deadline passes (the result shows what is missing)."""
    limit = time.monotonic() + deadline_s
    while not done() and time.monotonic() < limit:
        await asyncio.sleep(CHECK_EVERY_S)


class TelegramLoad:
    """Drives `chats` private chats on the Telegram fake."""

    def __init__(
        self,
        api: FakeTelegramAPI,
        *,
        chats: int,
        expect: Callable[[str], str] = echoed,
        first_user_id: int = 30_000,
    ) -> None:
        self.api = api
        self.expect = expect
        self.users = [api.user(first_user_id + n, f"User{n}") for n in range(chats)]
        self._rounds = 0

    def forget(self) -> None:
        """Drop the fake's records of earlier rounds, so memory figures show the bot's own."""
        self.api.calls.clear()
        self.api.messages.clear()
        self.api.files.clear()
        self.api.file_sizes.clear()
        # FakeTelegramAPI raises the same ApiError for every call an injection fails, and each
        # raise adds to that exception's traceback: its frames (and requests) would pile up.
        for injection in self.api._injections:
            injection.error.__traceback__ = None

    def _replies(self) -> dict[int, list[str]]:
        """Every chat's bot messages (queue notices left out), oldest first, in one pass."""
        by_chat: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for (chat_id, message_id), message in self.api.messages.items():
            shown = message.from_bot and not message.deleted and message.kind == "text"
            if shown and not message.text.startswith(QUEUE_NOTICE_PREFIX):
                by_chat[chat_id].append((message_id, message.text))
        return {chat: [text for _, text in sorted(rows)] for chat, rows in by_chat.items()}

    async def round(self, per_chat: int, *, deadline_s: float) -> LoadResult:
        """Send `per_chat` messages into every chat at once and wait for all the replies."""
        self._rounds += 1
        questions = _questions(self._rounds, per_chat)
        expected = [self.expect(q) for q in questions]
        wanted = set(expected)
        before = self._replies()
        first_call = len(self.api.calls)
        started = time.monotonic()
        for question in questions:
            for user in self.users:
                self.api.send_text(self.api.private_chat(user), user, question)

        def new_replies() -> dict[int, list[str]]:
            now = self._replies()
            return {
                u["id"]: now.get(u["id"], [])[len(before.get(u["id"], [])) :] for u in self.users
            }

        def done() -> bool:
            return all(wanted <= set(got) for got in new_replies().values())

        await _wait(done, deadline_s)
        result = LoadResult(chats=len(self.users), messages=len(questions) * len(self.users))
        result.seconds = time.monotonic() - started
        for chat_id, got in new_replies().items():
            result.check(str(chat_id), expected, got)
        statuses = [c.error.status for c in self.api.calls[first_call:] if c.error is not None]
        _count_errors(result, statuses)
        return result


class DiscordLoad:
    """Drives `chats` DM channels on the Discord fake."""

    def __init__(
        self, fake: FakeDiscord, *, chats: int, expect: Callable[[str], str] = echoed
    ) -> None:
        self.fake = fake
        self.expect = expect
        self.users = [FakeUser(snowflake(), f"User{n}") for n in range(chats)]
        self.channels = [fake.dm_channel(user) for user in self.users]
        self._rounds = 0

    def forget(self) -> None:
        """Drop the fake's records of earlier rounds, so memory figures show the bot's own."""
        fake = self.fake
        for records in (fake.calls, fake.rate_limited, fake.unhandled, fake.downloads):
            records.clear()
        fake.messages.clear()
        for session in fake.gateway.sessions:  # READY stays: it marks a live session
            session.frames[:] = [f for f in session.frames if f.event == "READY"]

    def _replies(self) -> dict[int, list[str]]:
        """Every DM channel's bot messages (queue notices left out), oldest first, in one pass."""
        by_channel: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for message in list(self.fake.messages.values()):
            shown = message.author.bot and not message.deleted
            if shown and not message.content.startswith(QUEUE_NOTICE_PREFIX):
                by_channel[message.channel_id].append((message.id, message.content))
        return {channel: [text for _, text in sorted(rows)] for channel, rows in by_channel.items()}

    async def round(self, per_chat: int, *, deadline_s: float) -> LoadResult:
        """Send `per_chat` messages into every DM at once and wait for all the replies."""
        self._rounds += 1
        questions = _questions(self._rounds, per_chat)
        expected = [self.expect(q) for q in questions]
        wanted = set(expected)
        before = self._replies()
        first_call = len(self.fake.calls)
        started = time.monotonic()
        for question in questions:
            for user in self.users:
                await self.fake.post_message(user, question, dm=True)

        def new_replies() -> dict[int, list[str]]:
            now = self._replies()
            return {c: now.get(c, [])[len(before.get(c, [])) :] for c in self.channels}

        def done() -> bool:
            return all(wanted <= set(got) for got in new_replies().values())

        await _wait(done, deadline_s)
        result = LoadResult(chats=len(self.users), messages=len(questions) * len(self.users))
        result.seconds = time.monotonic() - started
        for channel, got in new_replies().items():
            result.check(str(channel), expected, got)
        _count_errors(result, [c.status for c in self.fake.calls[first_call:]])
        return result


def _count_errors(result: LoadResult, statuses: Iterable[int]) -> None:
    for status in statuses:
        if status == 429:
            result.rate_limited += 1
        elif status >= 500:
            result.server_errors += 1


# Each platform's load is a ChatLoad: mypy fails here if one drifts from the other.
_ARE_CHAT_LOADS: tuple[type[ChatLoad], ...] = (TelegramLoad, DiscordLoad)
