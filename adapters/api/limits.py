"""What the HTTP API keeps under. HTTP sets no rate, so these are Parley's choices.

A streamed answer goes to one client over its own connection: the events of one answer are
coalesced under a per-answer budget (a few dozen a second read smoothly and cost little), and
there is no budget shared by all answers, as there is for a chat platform's bot.
"""

from __future__ import annotations

from bot.types import RateBudget, TargetLimits

PLATFORM_KEY = "api"
# One answer's SSE events: up to 50 a second, after a burst of 10 (the first text at once).
ANSWER_EVENTS_PER_SECOND = 50.0
ANSWER_BURST = 10.0
# Every answer has its own connection: nothing to share between them.
UNLIMITED = RateBudget(rate=1_000_000.0, burst=1_000_000.0)
# An answer is one stream of deltas, never split into parts: the engine caps a reply far below
# this (engine.max_reply_chars, 20,000 by default).
MAX_REPLY_CHARS = 1_000_000
# A request body larger than this is refused unread (413): a conversation of a few hundred long
# messages fits; the engine's own input limit (engine.max_input_chars) applies to the question.
MAX_BODY_BYTES = 1024 * 1024
MAX_MESSAGES = 1000  # messages in one chat completion request
MAX_SESSION_CHARS = 64  # a session id: part of the chat's key in the store
MAX_KEY_NAME_CHARS = 64  # a key's name: the owner of its sessions, the user of its turns
MIN_KEY_CHARS = 16  # a configured key shorter than this is refused: it could be guessed
DEFAULT_HISTORY = 100  # messages a session's GET returns without ?limit=
MAX_HISTORY = 1000  # ... and at most

LIMITS = TargetLimits(
    max_chars=MAX_REPLY_CHARS,
    chat=RateBudget(rate=ANSWER_EVENTS_PER_SECOND, burst=ANSWER_BURST),
    platform=UNLIMITED,
    platform_key=PLATFORM_KEY,
)
