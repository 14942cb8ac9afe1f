"""/remember and /memory: the facts a user asked the bot to keep about them."""

from __future__ import annotations

import re

from bot.llm import estimate_tokens
from bot.memory import MAX_MEMORIES_PER_USER, MAX_MEMORY_CHARS
from bot.messages import Msg, Phrase, phrase, say
from bot.storage import HistoryStore, Memory
from bot.storage.base import MAX_ROW_ID
from bot.types import IncomingMessage

# An id as typed: ASCII digits (str.isdigit() takes "²", which int() refuses), few enough that
# the answer can repeat them.
_DIGITS = re.compile(r"[0-9]{1,40}")


class MemoryCommands:
    """The handlers of /remember and /memory show|forget|share|private."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    async def remember(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/remember TEXT: keep a fact, private until shared."""
        fact = " ".join(args.split())
        if not fact:
            return say(Msg.REMEMBER_USAGE, lang=msg.language)
        if len(fact) > MAX_MEMORY_CHARS:
            return say(
                Msg.REMEMBER_TOO_LONG, lang=msg.language, length=len(fact), limit=MAX_MEMORY_CHARS
            )
        if len(await self.store.memories(msg.platform, msg.user_id)) >= MAX_MEMORIES_PER_USER:
            return say(Msg.REMEMBER_FULL, lang=msg.language, limit=MAX_MEMORIES_PER_USER)
        fact_id = await self.store.remember(
            msg.platform,
            msg.user_id,
            fact,
            token_count=estimate_tokens(fact),
            actor_name=msg.user_name,
        )
        return say(Msg.REMEMBERED, lang=msg.language, id=fact_id)

    async def show(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/memory show: the user's facts, where nobody else reads them."""
        if not (msg.is_private or msg.private_reply):
            return say(Msg.MEMORY_NOT_HERE, lang=msg.language)
        memories = await self.store.memories(msg.platform, msg.user_id)
        if not memories:
            return say(Msg.MEMORY_EMPTY, lang=msg.language)
        lines = [say(Msg.MEMORY_SHOWN, lang=msg.language, count=len(memories))]
        lines += [_memory_line(memory, msg.language) for memory in memories]
        lines.append(say(Msg.MEMORY_HINT, lang=msg.language))
        return "\n".join(lines)

    async def forget(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/memory forget ID|all."""
        try:
            which = _memory_id(args)
        except ValueError:
            return say(Msg.MEMORY_USAGE, lang=msg.language, verb="forget")
        if _no_such(which):
            return say(Msg.NO_SUCH_FACT, lang=msg.language, id=which)
        deleted = await self.store.forget_memories(
            msg.platform, msg.user_id, which, actor_name=msg.user_name
        )
        if which is None:
            if not deleted:
                return say(Msg.NOTHING_TO_FORGET, lang=msg.language)
            return say(Msg.FORGOT_FACTS, lang=msg.language, facts=_facts(deleted))
        return say(Msg.FORGOT_FACT if deleted else Msg.NO_SUCH_FACT, lang=msg.language, id=which)

    async def share(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/memory share ID|all: use it in groups too."""
        return await self._set_shared(msg, args, shared=True)

    async def private(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/memory private ID|all: use it in private chats only."""
        return await self._set_shared(msg, args, shared=False)

    async def _set_shared(self, msg: IncomingMessage, args: str, *, shared: bool) -> str:
        try:
            which = _memory_id(args)
        except ValueError:
            return say(Msg.MEMORY_USAGE, lang=msg.language, verb="share" if shared else "private")
        if _no_such(which):
            return say(Msg.NO_SUCH_FACT, lang=msg.language, id=which)
        changed = await self.store.share_memories(msg.platform, msg.user_id, which, shared=shared)
        if which is None:
            if not changed:
                return say(Msg.NO_FACTS, lang=msg.language)
            return say(
                Msg.SHARED_FACTS if shared else Msg.PRIVATE_FACTS,
                lang=msg.language,
                facts=_facts(changed),
            )
        if not changed:
            return say(Msg.NO_SUCH_FACT, lang=msg.language, id=which)
        return say(Msg.SHARED_FACT if shared else Msg.PRIVATE_FACT, lang=msg.language, id=which)


def _facts(count: int) -> Phrase:
    return phrase(Msg.FACTS, count=count)


def _memory_id(args: str) -> int | None:
    """A fact's id, or None for "all"; ValueError when `args` is neither (ASCII digits only)."""
    word = args.strip().lower().lstrip("#")
    if word == "all":
        return None
    if not _DIGITS.fullmatch(word):
        raise ValueError(args)
    return int(word)


def _no_such(which: int | None) -> bool:
    """Whether `which` is an id no fact can have: past what the database holds it would overflow
    the driver, so the store is never asked about it."""
    return which is not None and not 0 < which <= MAX_ROW_ID


def _memory_line(memory: Memory, lang: str) -> str:
    line = Msg.MEMORY_LINE_SHARED if memory.shared else Msg.MEMORY_LINE
    return say(line, lang=lang, id=memory.id, content=memory.content)
