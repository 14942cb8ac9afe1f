"""Discord shards across processes: which shards this process runs, and its share of the budget.

Discord sends each guild's events to one gateway session, shard (guild_id >> 22) % shard_count,
and DMs to shard 0; a bot must shard past 2,500 guilds per session. discord.py's
`AutoShardedClient` runs several shards in one process and identifies each with
[shard_id, shard_count]; given `shard_ids` it runs only those, so N processes with disjoint
`discord.shard_ids` split the gateway between them. REST calls are not per shard: the global
limit (50 requests/s) is per bot token, which is why `bot.storage.shared_budget` shares it through
PostgreSQL between the processes.

With a `shard_count`, discord.py connects to `discord.gateway_url` directly and never asks
GET /gateway/bot (its recommended `shards` and `session_start_limit`); an IDENTIFY per shard
within a process is spaced by its own `before_identify_hook` (5 s, the max_concurrency = 1
bucket). Across processes `identify_key` names the bucket a shard's IDENTIFY counts in, so the
processes space their IDENTIFYs through the shared budget too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from adapters.discord.compat import gate_requests
from adapters.discord.limits import GLOBAL_HEADROOM
from bot.delivery.budgets import GLOBAL_WINDOW_S
from bot.storage.shared_budget import LocalBudget, SharedBudget

if TYPE_CHECKING:
    import discord
    from discord.http import HTTPClient

    from adapters.discord.config import DiscordSettings
    from bot.config import Settings

log = logging.getLogger(__name__)

# https://discord.com/developers/docs/events/gateway#session-start-limit-object: max_concurrency
# IDENTIFYs per 5 seconds, bucketed by shard_id % max_concurrency.
IDENTIFY_INTERVAL_S = 5.0
GLOBAL_BUDGET = "discord:global"  # one bot per database, as for its history
# https://discord.com/developers/docs/interactions/receiving-and-responding#endpoints:
# interaction endpoints (callbacks, and webhooks by interaction token) are not bound to the
# bot's global rate limit.
EXEMPT_PREFIXES = ("/interactions/", "/webhooks/")


def is_sharded(settings: DiscordSettings) -> bool:
    """Whether the bot runs as shards (`discord.shard_count` set)."""
    return settings.shard_count > 0


def shard_ids(settings: DiscordSettings) -> list[int]:
    """The shards this process runs: `discord.shard_ids`, or all of them."""
    if not is_sharded(settings):
        return []
    return list(settings.shard_ids) or list(range(settings.shard_count))


def client_options(settings: DiscordSettings) -> dict[str, Any]:
    """Keyword arguments of `AutoShardedClient` for this process's shards (none unsharded)."""
    if not is_sharded(settings):
        return {}
    return {"shard_count": settings.shard_count, "shard_ids": shard_ids(settings)}


def runs_every_shard(settings: DiscordSettings) -> bool:
    """Whether this process holds the whole gateway (then its budget is its own)."""
    return not is_sharded(settings) or len(shard_ids(settings)) == settings.shard_count


def budget_share(settings: DiscordSettings) -> float:
    """The share of the bot's global budget this process may use on its own: its shards' part.

    What a process falls back to when the shared budget (PostgreSQL) cannot be reached, so that
    the processes together still stay within the limit while it is down.
    """
    if runs_every_shard(settings):
        return 1.0
    return len(shard_ids(settings)) / settings.shard_count


def shared_rate(settings: DiscordSettings) -> float:
    """Grants a second of the shared budget: `global_rate` less the same headroom each process's
    own bucket keeps (adapters/discord/limits.py: requests arrive closer than they left)."""
    return max(settings.global_rate - GLOBAL_HEADROOM / GLOBAL_WINDOW_S, settings.global_rate / 2)


def identify_key(shard_id: int, max_concurrency: int = 1) -> str:
    """The shared-budget key of a shard's IDENTIFY bucket (shard_id % max_concurrency)."""
    return f"discord:identify:{shard_id % max(max_concurrency, 1)}"


def describe(settings: DiscordSettings) -> str:
    """For the start-up log line: "shards [1] of 2", or "" when unsharded."""
    if not is_sharded(settings):
        return ""
    return f"shards {shard_ids(settings)} of {settings.shard_count}"


def shares_budget(settings: Settings, discord_settings: DiscordSettings) -> bool:
    """Whether this process shares the global budget: sharded across processes, on PostgreSQL."""
    return bool(settings.storage.url.get_secret_value()) and not runs_every_shard(discord_settings)


class SharedGateway:
    """What the processes of a sharded bot share through PostgreSQL: the global REST budget
    (every REST call but interaction endpoints takes a grant first) and IDENTIFY spacing.

    Without PostgreSQL (`url` None: SQLite, nothing to share through) the process keeps to its
    shards' share of the budget on its own, and to discord.py's IDENTIFY spacing.
    """

    def __init__(self, url: str | None, settings: DiscordSettings) -> None:
        self._url = url
        rate, share = shared_rate(settings), budget_share(settings)
        self.rest: SharedBudget | LocalBudget = (
            SharedBudget(url, GLOBAL_BUDGET, rate, share=share)
            if url
            else LocalBudget(rate * share)
        )
        self._max_concurrency = 1
        self._identify: dict[str, SharedBudget] = {}

    async def open(self) -> None:
        """Connect the global budget."""
        if isinstance(self.rest, SharedBudget):
            await self.rest.open()

    async def close(self) -> None:
        """Close every budget's connections."""
        for budget in (self.rest, *self._identify.values()):
            if isinstance(budget, SharedBudget):
                await budget.close()

    def gate_library(self, http: HTTPClient) -> None:
        """Make discord.py's own REST calls (login, command sync, notices) take a grant too."""

        async def before(path: str) -> None:
            if not path.startswith(EXEMPT_PREFIXES):
                await self.rest.acquire()

        gate_requests(http, before)

    async def learn_limits(self, client: discord.Client) -> None:
        """Ask GET /gateway/bot how many IDENTIFYs may run at once (max_concurrency)."""
        if self._url is None:
            return  # nothing to coordinate IDENTIFYs through
        try:
            limits = await client.fetch_session_start_limits()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the safe default (1) applies
            log.warning("Discord: GET /gateway/bot failed (%s); one IDENTIFY per 5 s", exc)
            return
        self._max_concurrency = max(int(limits.max_concurrency), 1)

    async def before_identify(self, shard_id: int, *, initial: bool) -> None:
        """Wait for the shard's IDENTIFY bucket, shared with the other processes."""
        if self._url is None:  # discord.py's own spacing within the process
            if not initial:
                await asyncio.sleep(IDENTIFY_INTERVAL_S)
            return
        key = identify_key(shard_id, self._max_concurrency)
        budget = self._identify.get(key)
        if budget is None:
            budget = SharedBudget(self._url, key, 1.0 / IDENTIFY_INTERVAL_S)
            await budget.open()
            self._identify[key] = budget
        await budget.acquire()


async def open_shared(
    settings: Settings, discord_settings: DiscordSettings
) -> SharedGateway | None:
    """The budgets of a process running some of the shards (None when it runs all of them)."""
    if runs_every_shard(discord_settings):
        return None
    url = settings.storage.url.get_secret_value()
    if not url:
        log.warning(
            "Discord: %s without PostgreSQL (storage.url): this process keeps to its share of "
            "the global budget, %.1f requests/s; on PostgreSQL the processes share all of it",
            describe(discord_settings),
            shared_rate(discord_settings) * budget_share(discord_settings),
        )
    shared = SharedGateway(url or None, discord_settings)
    await shared.open()
    return shared
