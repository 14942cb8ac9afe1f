"""The admin console running on a real [http] endpoint, and an HTTP client that signs in to it.

`running_console` starts the real ParleyApp (no speech) and the real OpsServer with the console
mounted, on a free loopback port; `AdminClient` is a cookie-keeping aiohttp client that reads the
CSRF tokens from the pages, as a browser would.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.admin.console import AdminConsole
from bot.app import ParleyApp
from bot.config import Settings
from bot.health import HealthChecks
from bot.http_server import OpsServer

PASSWORD = "correct horse battery staple"
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
_PAGE_CSRF = re.compile(r'data-csrf="([^"]*)"')


@dataclass
class RunningConsole:
    """A started bot with its endpoint: the app, the console and the server's base URL."""

    app: ParleyApp
    console: AdminConsole
    server: OpsServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def web_app(self) -> web.Application:
        assert self.console.web_app is not None
        return self.console.web_app


@contextlib.asynccontextmanager
async def running_console(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    checks: HealthChecks | None = None,
    sample_every_s: float = 0.2,
) -> AsyncIterator[RunningConsole]:
    """ParleyApp + the endpoint with the console, for the block."""
    async with ParleyApp(settings, speech=False) as app:
        console = AdminConsole.for_app(
            app, config_path=config_path, environ=environ or {}, sample_every_s=sample_every_s
        )
        server = OpsServer(settings.http, checks or app.health_checks(), extensions=[console])
        await server.start()
        try:
            yield RunningConsole(app, console, server)
        finally:
            await server.stop()


class AdminClient:
    """A browser-like client: keeps cookies, follows no redirects unless asked."""

    def __init__(self, base_url: str, *, local_addr: str | None = None) -> None:
        self.base_url = base_url
        connector = aiohttp.TCPConnector(
            ssl=False, local_addr=(local_addr, 0) if local_addr else None
        )
        # unsafe=True: keep cookies of an IP-address host such as 127.0.0.1.
        self.http = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        self.csrf = ""

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        kwargs.setdefault("allow_redirects", False)
        async with self.http.get(self.base_url + path, **kwargs) as resp:
            text = await resp.text()
        match = _PAGE_CSRF.search(text)
        if match and match.group(1):
            self.csrf = match.group(1)
        return resp.status, text, resp

    async def post(
        self, path: str, data: dict[str, str], **kwargs: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        kwargs.setdefault("allow_redirects", False)
        async with self.http.post(self.base_url + path, data=data, **kwargs) as resp:
            text = await resp.text()
        return resp.status, text, resp

    async def login_token(self) -> str:
        """The sign-in form's CSRF token (and its cookie, kept in the jar)."""
        status, html, _ = await self.get("/admin/login")
        assert status == 200, html
        match = _CSRF_FIELD.search(html)
        assert match, html
        return match.group(1)

    async def login(
        self, password: str = PASSWORD, *, next_path: str = "/admin"
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        """Submit the sign-in form; on success the session cookie is in the jar."""
        token = await self.login_token()
        result = await self.post(
            "/admin/login", {"csrf_token": token, "password": password, "next": next_path}
        )
        if result[0] == 303:
            await self.get("/admin")  # a page: picks up the session's CSRF token
        return result

    def cookie(self, name: str) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None


def admin_sections(llm_url: str, **http: Any) -> dict[str, Any]:
    """Settings sections for make_settings: the endpoint on a free port with a password."""
    return {
        "llm": {"base_url": llm_url},
        "http": {"enabled": True, "port": 0, "admin_password": PASSWORD, **http},
    }


async def read_events(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of a response, until it ends."""
    events = []
    name = "message"
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            name = "message"
    return events
