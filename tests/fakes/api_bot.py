"""Parley serving the HTTP API on a loopback port, as `parley run` does: the real app, the real
`api` adapter and the real [http] endpoint, against the fake LLM. Shared by the API tests and
bench/bench_api.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.api.adapter import ApiAdapter
from bot.app import ParleyApp
from bot.config import Settings
from bot.http_server import OpsServer
from tests.conftest import make_settings

ALICE = "pk-alice-0123456789abcdef"
BOB = "pk-bob-0123456789abcdefgh"


def api_settings(tmp_path: Path, llm_url: str, **sections: dict[str, Any]) -> Settings:
    """The fake LLM, no voice replies, [http] on a free port, keys for alice and bob."""
    given: dict[str, dict[str, Any]] = {
        "llm": {"base_url": llm_url, "retries": 0},
        "engine": {"voice_mode": "off"},
        "http": {"enabled": True, "port": 0, "admin": False},
        "api": {"keys": {"alice": ALICE, "bob": BOB}},
    }
    for name, values in sections.items():
        given[name] = {**given.get(name, {}), **values}
    return make_settings(tmp_path, **given)


@dataclass
class RunningApi:
    """A started bot: the app, its API adapter, and the API's base URL (…/v1)."""

    app: ParleyApp
    adapter: ApiAdapter
    url: str


@contextlib.asynccontextmanager
async def api_bot(settings: Settings, **adapter: Any) -> AsyncIterator[RunningApi]:
    """ParleyApp + ApiAdapter on the [http] endpoint, serving for the block."""
    async with ParleyApp(settings, speech=False) as app:
        api = ApiAdapter(app.services, **adapter)
        server = OpsServer(settings.http, app.health_checks(), extensions=[app.routes])
        await server.start()
        try:
            await api.start()
            yield RunningApi(app, api, server.url + "/v1")
        finally:
            await api.stop()
            await server.stop()
