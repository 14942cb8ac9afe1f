"""The contract between the core and a platform: what an adapter package offers, what it gets.

Each package under adapters/ (telegram/, discord/) exposes `PLATFORM`, a `Platform`. The
composition root (bot/app.py, bot/cli.py) loops over them to compose the settings and the
command tables (the core's commands and each platform's own), start the connected platforms, add
their health checks and run their `parley doctor` checks; no other core module knows a platform
by name. A platform served over HTTP mounts its routes on the [http] endpoint (`Services.http`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.command_table import Command
from bot.config import PlatformSettings, Settings

# When a platform stops, replies in progress get this long to finish; then they are cancelled
# (what was streamed is kept, marked cut off). Short, so SIGTERM ends Parley within seconds.
STOP_GRACE_S = 2.0
# Then the queue notices those turns leave get this long for their deletion to go out.
NOTICE_GRACE_S = 1.0

if TYPE_CHECKING:
    from bot.commands import Commands
    from bot.doctor import Finding
    from bot.engine import ConversationEngine
    from bot.http_server import HttpRoutes
    from bot.storage import HistoryStore


@dataclass(frozen=True, slots=True)
class Services:
    """What the core gives a platform: the settings, the turn pipeline, the commands, and the
    [http] endpoint's routes."""

    settings: Settings
    engine: ConversationEngine
    commands: Commands
    http: HttpRoutes


class PlatformAdapter(Protocol):
    """A running connection to one platform."""

    @property
    def connected(self) -> bool:
        """True while updates arrive (for /healthz)."""
        ...

    async def start(self) -> None:
        """Log in and start receiving; returns once running. Raises ConfigError if refused."""
        ...

    async def stop(self) -> None:
        """Stop receiving, let replies in progress finish (bounded), log out."""
        ...


@dataclass(frozen=True, slots=True)
class Platform:
    """One platform as the core sees it; its adapter package builds one `PLATFORM`."""

    settings: type[PlatformSettings]  # the `[name]` section's model
    create: Callable[[Services], PlatformAdapter]
    check: Callable[[Settings], Awaitable[list[Finding]]]  # `parley doctor`: token, reachability
    commands: tuple[Command, ...] = ()  # the commands only this platform has (e.g. /start)
    # Whether it runs, when that takes more than its section: the HTTP API runs while [http] is
    # on and a key is configured or stored. None: `enabled` decides.
    runs: Callable[[Settings, HistoryStore], Awaitable[bool]] | None = None

    @property
    def name(self) -> str:
        """The platform's name: its settings section and its messages' `platform`."""
        return self.settings.NAME

    def enabled(self, settings: Settings) -> bool:
        """Whether `settings` turn this platform on (its token is set)."""
        return self.settings.of(settings).enabled

    async def running(self, settings: Settings, store: HistoryStore) -> bool:
        """Whether this platform runs, with what the store holds (`runs`)."""
        if self.runs is None:
            return self.enabled(settings)
        return await self.runs(settings, store)
