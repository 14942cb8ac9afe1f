"""The `[cache]` section: the answer cache (bot/answer_cache.py)."""

from __future__ import annotations

from pydantic import Field

from bot.section import Section


class CacheSettings(Section):
    """Answers kept in the store: a request identical to an earlier one is answered at once,
    with no LLM request, on every platform."""

    enabled: bool = False
    """Keep complete replies and answer an identical request (the same servers or model, the
    same whole prompt, the same sampling parameters) from them."""
    ttl_s: float = Field(3600.0, gt=0)
    """How long a kept answer is used, in seconds."""
    max_entries: int = Field(1000, ge=1)
    """The most answers kept; beyond it the oldest are dropped."""
