"""The operations endpoint: /healthz and /metrics on [http] host:port (off by default).

Extensions (the admin console) add their routes to the same application before it starts; so do
platforms served over HTTP (the HTTP API under /v1/), through `HttpRoutes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from bot.config import HTTPSettings
from bot.errors import ConfigError
from bot.health import HealthChecks

log = logging.getLogger(__name__)

HEALTHY = 200
UNHEALTHY = 503  # what load balancers and orchestrators read as "take me out of rotation"
# How the start-up log names what extensions mount, by path ([http] admin serves /admin).
_MOUNTED_NAMES = {"/admin": "admin console"}


class HttpExtension(Protocol):
    """Adds routes (and start-up/clean-up hooks) to the endpoint's application."""

    def install(self, app: web.Application, server: OpsServer) -> None: ...


class HttpRoutes:
    """The sub-applications platforms serve on the endpoint, mounted when it starts.

    A platform mounts its routes when its adapter is made, before the endpoint starts (an
    aiohttp application cannot gain routes once it serves).
    """

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings
        self._mounts: list[tuple[str, web.Application]] = []

    def mount(self, prefix: str, app: web.Application) -> None:
        """Serve `app` under `prefix` (e.g. "/v1"); ConfigError while [http] is off."""
        if not self.settings.enabled:
            raise ConfigError([f"config: {prefix}/ is served on [http]: set http.enabled = true"])
        self._mounts.append((prefix, app))

    def install(self, app: web.Application, server: OpsServer) -> None:
        """Mount what the platforms asked for (`HttpExtension`)."""
        for prefix, sub in self._mounts:
            app.add_subapp(prefix, sub)


def _tls_context(settings: HTTPSettings) -> ssl.SSLContext:
    """The server's TLS context from http.tls_cert and http.tls_key (blocking: reads files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"config: http.tls_cert / http.tls_key: cannot load them: {exc}"]
        ) from None
    return context


class OpsServer:
    """Serves /healthz (200 or 503 naming the failing parts) and /metrics (Prometheus)."""

    def __init__(
        self,
        settings: HTTPSettings,
        checks: HealthChecks,
        *,
        registry: CollectorRegistry = REGISTRY,
        extensions: Sequence[HttpExtension] = (),
    ) -> None:
        self.settings = settings
        self.checks = checks
        self.registry = registry
        self.extensions = list(extensions)
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self._failing: list[str] = []  # as of the last /healthz, to log changes only

    @property
    def url(self) -> str:
        """Base URL once started (with the real port when [http] port is 0)."""
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        for extension in self.extensions:
            extension.install(app, self)
        # Reading the certificate and key touches the disk: off the event loop.
        tls = (
            await asyncio.to_thread(_tls_context, self.settings) if self.settings.tls_cert else None
        )
        # No access log: a scraper every few seconds would drown the bot's own lines.
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, ssl_context=tls)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("health and metrics on %s/healthz and %s/metrics", self.url, self.url)
        # What extensions mounted (the admin console at /admin, when it is on): its URL too.
        for resource in app.router.resources():
            if isinstance(resource, web.PrefixedSubAppResource):
                name = _MOUNTED_NAMES.get(resource.canonical, "more pages")
                log.info("%s on %s%s", name, self.url, resource.canonical)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        results = await self.checks.run()
        failing = [r.name for r in results if not r.ok]
        if failing != self._failing:
            for result in results:
                if not result.ok:
                    log.warning("health: %s is failing: %s", result.name, result.problem)
            if not failing:
                log.info("health: every check passes again")
            self._failing = failing
        body: dict[str, object] = {
            "status": "fail" if failing else "ok",
            "checks": {r.name: r.problem or "ok" for r in results},
        }
        if failing:
            body["failing"] = failing
        body.update(self.checks.details())  # e.g. "llm": slots in use, total, queue
        return web.json_response(body, status=UNHEALTHY if failing else HEALTHY)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Prometheus asks for OpenMetrics in its Accept header; others get the text format.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})


@contextlib.asynccontextmanager
async def serve_http(
    settings: HTTPSettings, checks: HealthChecks, *, extensions: Sequence[HttpExtension] = ()
) -> AsyncIterator[HealthChecks]:
    """Serve /healthz and /metrics (and the extensions' routes) while the block runs, when
    [http] is enabled.

    Yields `checks`, so the caller can register the platforms' checks once they exist.
    """
    if not settings.enabled:
        yield checks
        return
    server = OpsServer(settings, checks, extensions=extensions)
    await server.start()
    try:
        yield checks
    finally:
        await server.stop()
