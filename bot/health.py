"""Health checks behind /healthz, and the probe `parley healthcheck` (Docker's HEALTHCHECK) runs.

A check is an async callable returning None when its part is healthy, else the reason it is not.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.config import HTTPSettings
from bot.errors import StorageError

if TYPE_CHECKING:
    from bot.llm import LLMClient
    from bot.queue import TurnQueue
    from bot.storage import HistoryStore

HealthCheck = Callable[[], Awaitable[str | None]]
Detail = Callable[[], object]  # more state /healthz shows under its name (not a check)

# One check may take this long before it counts as failing (an LLM probe itself gives up after
# llm.connect_timeout_s, 5 s by default).
CHECK_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 20.0  # the Docker probe: all checks run concurrently, so one timeout and a margin
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_RESERVED_KEYS = ("status", "checks", "failing")  # /healthz's own keys


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one named check: `problem` is None when the part is healthy."""

    name: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class HealthChecks:
    """Named checks, run concurrently; a check that hangs fails after `timeout_s`."""

    def __init__(self, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, HealthCheck] = {}
        self._details: dict[str, Detail] = {}

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def add(self, name: str, check: HealthCheck) -> None:
        """Register `check` under `name` (the name /healthz reports when it fails)."""
        if name in self._checks:
            raise ValueError(f"a health check named {name!r} is already registered")
        self._checks[name] = check

    def add_detail(self, name: str, detail: Detail) -> None:
        """Show `detail()` (JSON-ready, no secrets) under `name` in every /healthz answer."""
        if name in _RESERVED_KEYS or name in self._details:
            raise ValueError(f"/healthz already has a {name!r} entry")
        self._details[name] = detail

    def details(self) -> dict[str, object]:
        """Every detail, taken now."""
        return {name: detail() for name, detail in self._details.items()}

    async def run(self) -> list[CheckResult]:
        """Run every check at once; results in registration order."""
        return list(await asyncio.gather(*(self._run_one(n, c) for n, c in self._checks.items())))

    async def _run_one(self, name: str, check: HealthCheck) -> CheckResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                problem = await check()
        except TimeoutError:
            problem = f"no answer within {self.timeout_s:g} s"
        return CheckResult(name, problem)


class Connectable(Protocol):
    """A platform adapter that knows whether it is connected to its platform."""

    @property
    def connected(self) -> bool: ...


def database_check(store: HistoryStore) -> HealthCheck:
    """Healthy while reads answer and writes work (after a failed write, a probe write decides)."""

    async def check() -> str | None:
        try:
            await store.get_message(0)
            if store.health.problem is not None:
                # Writes failed lately (a full disk): try one that leaves nothing, so /healthz
                # turns green as soon as they work again, even with nobody writing.
                await store.probe_write()
        except StorageError as exc:  # PostgreSQL: the message names host:port, no password
            return f"writes fail ({exc.problem}): {exc}" if store.health.problem else str(exc)
        except sqlite3.Error as exc:
            return f"query failed: {exc}"
        except ValueError as exc:  # aiosqlite: "no active connection" once closed
            return str(exc)
        return None

    return check


def llm_check(llm: LLMClient) -> HealthCheck:
    """Healthy while at least one LLM backend answers (fallbacks included)."""

    async def check() -> str | None:
        backends = llm.pool.backends
        answers = await asyncio.gather(*(llm.http.healthy(b.url) for b in backends))
        if any(answers):
            return None
        # Named without credentials: /healthz answers anyone who asks.
        return "no backend answers: " + ", ".join(b.name for b in backends)

    return check


def llm_status(llm: LLMClient, queue: TurnQueue) -> Detail:
    """LLM slots in use and in total, the turns waiting, and each backend's health and slots."""

    def detail() -> dict[str, object]:
        return {
            "slots_in_use": queue.in_use,
            "slots": queue.slots,
            "queued": queue.depth,
            **llm.status(),
        }

    return detail


def platform_check(adapter: Connectable) -> HealthCheck:
    """Healthy while the adapter is connected to its platform."""

    async def check() -> str | None:
        return None if adapter.connected else "not connected"

    return check


# -- the probe ------------------------------------------------------------------------------


def probe_url(settings: HTTPSettings) -> str:
    """Where this machine reaches /healthz: a wildcard bind address is reached on loopback."""
    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{settings.port}/healthz"


def probe(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """GET `url`: 0 when it answers 200, else 1; prints what failed. Blocking (a CLI)."""
    # Never through a proxy from the environment: the probe always asks a local process.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            print(resp.read().decode("utf-8", errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}: {_failing(exc.read())}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"{url}: {reason}", file=sys.stderr)
    return 1


def _failing(body: bytes) -> str:
    """The failing checks of a /healthz answer, or the raw body."""
    try:
        checks = json.loads(body)["checks"]
        return "; ".join(f"{name}: {state}" for name, state in checks.items() if state != "ok")
    except (ValueError, KeyError, TypeError, AttributeError):
        return body.decode("utf-8", errors="replace")[:300]
