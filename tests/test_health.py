"""/healthz: the real app's database and LLM checks over HTTP, the platform checks, the probe."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot import cli
from bot.app import ParleyApp
from bot.config import HTTPSettings
from bot.health import (
    HealthChecks,
    database_check,
    platform_check,
    probe,
    probe_url,
)
from bot.http_server import OpsServer, serve_http
from bot.storage import SQLiteStore
from tests.conftest import free_port, make_settings
from tests.fakes.mcp_servers import command
from tests.fakes.waits import HANG_GUARD_S


class RestartableBackend:
    """An LLM server's /health on a fixed loopback port, that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@dataclass
class Link:
    """Stands in for an adapter's connection state (the `Connectable` protocol)."""

    connected: bool = True


@pytest.fixture
async def backend() -> AsyncIterator[RestartableBackend]:
    server = RestartableBackend()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def parley(tmp_path: Path, backend: RestartableBackend) -> AsyncIterator[ParleyApp]:
    settings = make_settings(tmp_path, llm={"base_url": backend.url})
    async with ParleyApp(settings, speech=False) as app:
        yield app


async def ops_server(checks: HealthChecks) -> OpsServer:
    server = OpsServer(HTTPSettings(enabled=True, port=0), checks)
    await server.start()
    return server


async def get_health(url: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/healthz") as resp,
    ):
        return resp.status, await resp.json()


async def test_healthz_names_the_llm_while_its_backend_is_down_and_recovers(
    parley: ParleyApp, backend: RestartableBackend
) -> None:
    server = await ops_server(parley.health_checks())
    try:
        status, body = await get_health(server.url)
        assert (status, body["status"]) == (200, "ok")
        assert body["checks"] == {"database": "ok", "llm": "ok"}
        assert (body["llm"]["slots_in_use"], body["llm"]["queued"]) == (0, 0)

        await backend.stop()
        status, body = await get_health(server.url)
        assert status == 503
        assert body["status"] == "fail"
        assert body["failing"] == ["llm"]
        assert body["checks"]["database"] == "ok"
        assert backend.url in body["checks"]["llm"]

        await backend.start()
        status, body = await get_health(server.url)
        assert (status, body["status"], body.get("failing")) == (200, "ok", None)
    finally:
        await server.stop()


async def test_healthz_shows_each_tool_server_without_failing_for_it(
    tmp_path: Path, backend: RestartableBackend
) -> None:
    servers = {
        "fake": {"command": command("stdio"), "tools": ["echo"]},
        "missing": {"command": [str(tmp_path / "no-such-server")]},
    }
    settings = make_settings(tmp_path, llm={"base_url": backend.url}, tools={"servers": servers})
    async with ParleyApp(settings, speech=False) as app:
        assert app.tools is not None
        await app.tools.wait_settled(HANG_GUARD_S)
        server = await ops_server(app.health_checks())
        try:
            status, body = await get_health(server.url)
        finally:
            await server.stop()
    assert (status, body["checks"]) == (200, {"database": "ok", "llm": "ok"})
    assert body["tools"]["fake"] == {
        "state": "ready",
        "transport": "stdio",
        "tools": 1,
        "restarts": 0,
        "error": None,
    }
    assert body["tools"]["missing"]["state"] == "failed"


async def test_healthz_names_a_disconnected_platform(parley: ParleyApp) -> None:
    checks = parley.health_checks()
    telegram, discord = Link(), Link()
    checks.add("telegram", platform_check(telegram))
    checks.add("discord", platform_check(discord))
    server = await ops_server(checks)
    try:
        assert (await get_health(server.url))[0] == 200
        discord.connected = False
        status, body = await get_health(server.url)
        assert status == 503
        assert body["failing"] == ["discord"]
        assert body["checks"]["discord"] == "not connected"
        assert body["checks"]["telegram"] == "ok"
    finally:
        await server.stop()


async def test_a_check_that_hangs_fails_with_its_name() -> None:
    never = asyncio.Event()

    async def hangs() -> str | None:
        await never.wait()
        return None

    async def fine() -> str | None:
        return None

    checks = HealthChecks(timeout_s=0.05)
    checks.add("llm", hangs)
    checks.add("database", fine)
    results = await checks.run()
    assert [(r.name, r.ok) for r in results] == [("llm", False), ("database", True)]
    assert results[0].problem == "no answer within 0.05 s"


async def test_database_check_fails_once_the_database_is_closed(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "parley.db"))
    check = database_check(store)
    assert await check() is None
    await store.close()
    assert await check() is not None


async def test_check_names_are_unique() -> None:
    checks = HealthChecks()
    checks.add("llm", platform_check(Link()))
    with pytest.raises(ValueError, match="llm"):
        checks.add("llm", platform_check(Link()))


async def test_serve_http_listens_only_when_enabled(parley: ParleyApp) -> None:
    port = free_port()
    async with serve_http(HTTPSettings(enabled=False, port=port), parley.health_checks()):
        with pytest.raises(aiohttp.ClientConnectorError):
            await get_health(f"http://127.0.0.1:{port}")
    async with serve_http(HTTPSettings(enabled=True, port=port), parley.health_checks()):
        assert (await get_health(f"http://127.0.0.1:{port}"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        await get_health(f"http://127.0.0.1:{port}")


# -- the Docker HEALTHCHECK probe -------------------------------------------------------------


async def test_probe_exit_code_follows_healthz(
    parley: ParleyApp, backend: RestartableBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await ops_server(parley.health_checks())
    url = server.url + "/healthz"
    try:
        assert await asyncio.to_thread(probe, url) == 0
        await backend.stop()
        assert await asyncio.to_thread(probe, url) == 1
        assert "HTTP 503: llm: no backend answers" in capsys.readouterr().err
    finally:
        await server.stop()
    assert await asyncio.to_thread(probe, url) == 1  # nothing listens any more


async def test_parley_healthcheck_reads_the_http_settings(
    parley: ParleyApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config.toml here: settings come from the environment
    monkeypatch.setenv("PARLEY_HTTP__PORT", str(port))
    monkeypatch.setenv("PARLEY_HTTP__HOST", "0.0.0.0")  # the probe asks loopback
    # A platform's section must not trip the probe up (it reads the settings as `parley` does).
    monkeypatch.setenv("PARLEY_TELEGRAM__WEBHOOK_PORT", "8443")
    healthcheck = functools.partial(cli.main, ["healthcheck"])
    async with serve_http(HTTPSettings(enabled=True, port=port), parley.health_checks()):
        assert await asyncio.to_thread(healthcheck) == 1  # [http] is off in the settings it reads
        monkeypatch.setenv("PARLEY_HTTP__ENABLED", "true")
        assert await asyncio.to_thread(healthcheck) == 0


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/healthz"),
        ("0.0.0.0", "http://127.0.0.1:8080/healthz"),
        ("::", "http://127.0.0.1:8080/healthz"),
        ("::1", "http://[::1]:8080/healthz"),
        ("bot.internal", "http://bot.internal:8080/healthz"),
    ],
)
def test_probe_url(host: str, url: str) -> None:
    assert probe_url(HTTPSettings(enabled=True, host=host, port=8080)) == url
