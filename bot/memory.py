"""What a prompt recalls beyond its history: a user's remembered facts, older turns of the chat,
and a group's background chatter, each inside a token budget of its own.

Relevance comes from the store's full-text search (SQLite FTS5 ranked by BM25; PostgreSQL's
tsvector/tsquery ranked by ts_rank): no embedding model, so it works offline on the bundled setup.
The message being answered is the query: its words, minus the most common English words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.llm import estimate_tokens

if TYPE_CHECKING:
    from bot.storage import Memory, Store, StoredMessage

# A fact is one short statement; a user keeps a bounded number of them (abuse, prompt size).
MAX_MEMORY_CHARS = 500
MAX_MEMORIES_PER_USER = 200
# Rows looked at per prompt: the best-ranked matches, and the newest background messages.
FACT_CANDIDATES = 50
TURN_CANDIDATES = 30
BACKGROUND_ROWS = 100
MAX_TERMS = 24  # query words; a long message's first distinct ones are plenty
MIN_TERM_CHARS = 2

_WORD = re.compile(r"\w+")
# Words too common to say anything about relevance (English; other languages' words all count).
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves im ive id dont doesnt
    didnt cant wont isnt arent wasnt let lets tell say said know please thanks thank ok okay yes
    hi hello hey also get got like one two s t re ll ve d m
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def search_terms(text: str) -> list[str]:
    """The words of `text` worth searching for: distinct, lowercased, no common words."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        word = word.strip("_")
        if len(word) < MIN_TERM_CHARS or word in STOPWORDS or word in terms:
            continue
        terms.append(word)
        if len(terms) == MAX_TERMS:
            break
    return terms


@dataclass(frozen=True, slots=True)
class Recalled:
    """What one prompt recalls; each list in the order the prompt shows it."""

    facts: list[str] = field(default_factory=list)  # most relevant first
    earlier: list[StoredMessage] = field(default_factory=list)  # oldest first
    background: list[StoredMessage] = field(default_factory=list)  # oldest first

    def __bool__(self) -> bool:
        return bool(self.facts or self.earlier or self.background)


def _cost(row: StoredMessage) -> int:
    return row.token_count if row.token_count is not None else estimate_tokens(row.content)


def fit(costs: Iterable[int], budget: int) -> list[int]:
    """Indexes of the costs kept, in order, within `budget`; one too big is skipped, not a stop."""
    kept, used = [], 0
    for index, cost in enumerate(costs):
        if used + cost <= budget:
            kept.append(index)
            used += cost
    return kept


async def recall_facts(
    store: Store,
    platform: str,
    user_id: str,
    terms: Sequence[str],
    *,
    private: bool,
    budget: int,
) -> tuple[list[str], int]:
    """The user's facts for a prompt and the tokens they take.

    Facts matching the message come first, best ranked first; the budget left goes to the
    newest other facts, since a handful of facts a user chose to keep are worth showing anyway.
    Outside private chats only facts the user shared are used.
    """
    if budget <= 0:
        return [], 0
    matched = await store.search_memories(
        platform, user_id, terms, shared_only=not private, limit=FACT_CANDIDATES
    )
    seen = {memory.id for memory in matched}
    others: list[Memory] = [
        memory
        for memory in reversed(await store.memories(platform, user_id))
        if memory.id not in seen and (private or memory.shared)
    ]
    candidates = [*matched, *others]
    kept = fit((m.token_count for m in candidates), budget)
    return [candidates[i].content for i in kept], sum(candidates[i].token_count for i in kept)


async def recall_turns(
    store: Store,
    channel_id: int,
    turn_row: int,
    before_row: int,
    terms: Sequence[str],
    *,
    budget: int,
) -> list[StoredMessage]:
    """Older messages of the conversation (before `before_row`) matching the message, best
    ranked first while they fit; returned oldest first."""
    if budget <= 0 or not terms:
        return []
    found = await store.search_history(channel_id, turn_row, before_row, terms, TURN_CANDIDATES)
    kept = fit((_cost(row) for row in found), budget)
    return sorted((found[i] for i in kept), key=lambda row: row.id)


async def recall_background(
    store: Store, channel_id: int, turn_row: int, after_row: int, *, budget: int
) -> list[StoredMessage]:
    """The newest background messages between `after_row` and the turn that fit; oldest first."""
    if budget <= 0:
        return []
    newest_first = await store.background(channel_id, turn_row, after_row, BACKGROUND_ROWS)
    kept: list[StoredMessage] = []
    used = 0
    for row in newest_first:
        cost = _cost(row)
        if used + cost > budget:
            break  # a gap would hide what came in between: stop at the first that does not fit
        used += cost
        kept.append(row)
    kept.reverse()
    return kept
