"""The admin console: /admin on the [http] endpoint, server-rendered pages behind a password.

Secure by default: the endpoint binds loopback; there is no default password (until one is set,
/admin only says how to set one); a session cookie (HttpOnly, SameSite=Strict, Secure over TLS)
follows a sign-in; every POST carries the session's CSRF token; sign-in attempts are throttled per
address, counted before the password is checked (bot.admin.signin). Sessions and the throttle
live in the store, so processes sharing a database share them. Pages never contain a token, an
API key or the password hash: secrets are masked, URLs shown without credentials, and log lines
redacted before they are kept.

Each page lives in its own module (overview, conversations, audit_logs, try_it); this one mounts
them and runs what they share for the endpoint's lifetime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from bot.admin.audit_logs import AuditAndLogs
from bot.admin.conversations import Conversations
from bot.admin.exposure import exposure_warning, set_password_hint
from bot.admin.logtail import LogRing
from bot.admin.overview import Overview
from bot.admin.pages import PREFIX, STATIC_DIR, Pages, security_headers
from bot.admin.passwords import PasswordStore
from bot.admin.signin import SignIn
from bot.admin.stats import SAMPLE_EVERY_S, MetricsHistory
from bot.admin.try_it import TryIt
from bot.config import Settings

if TYPE_CHECKING:
    from bot.app import ParleyApp
    from bot.commands import Commands
    from bot.engine import ConversationEngine
    from bot.http_server import OpsServer
    from bot.llm import LLMClient
    from bot.storage import Store

log = logging.getLogger(__name__)


class AdminConsole:
    """The /admin sub-application; `install()` mounts it on the endpoint's application."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        engine: ConversationEngine,
        commands: Commands,
        llm: LLMClient,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        sample_every_s: float = SAMPLE_EVERY_S,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.llm = llm
        self.sample_every_s = sample_every_s
        self.passwords = PasswordStore(settings)
        self.log_ring = LogRing(settings.secrets())
        self.history: MetricsHistory | None = None
        self.overview: Overview | None = None  # once mounted (it shows the endpoint's checks)
        self.web_app: web.Application | None = None  # the /admin sub-application, once mounted
        pages = Pages(settings.engine.bot_name)
        self.pages = pages
        self.signin = SignIn(settings.http, self.passwords, pages, store=store)
        self.conversations = Conversations(
            settings,
            store=store,
            commands=commands,
            pages=pages,
            config_path=config_path,
            environ=dict(os.environ if environ is None else environ),
        )
        self.audit_logs = AuditAndLogs(store=store, log_ring=self.log_ring, pages=pages)
        self.try_it = TryIt(store=store, engine=engine, commands=commands, pages=pages)

    @classmethod
    def for_app(
        cls,
        app: ParleyApp,
        *,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        sample_every_s: float = SAMPLE_EVERY_S,
    ) -> AdminConsole:
        """The console of a running `ParleyApp`."""
        return cls(
            app.settings,
            store=app.store,
            engine=app.engine,
            commands=app.commands,
            llm=app.llm,
            config_path=config_path,
            environ=environ,
            sample_every_s=sample_every_s,
        )

    def install(self, app: web.Application, server: OpsServer) -> None:
        """Mount /admin on the endpoint's application (`bot.http_server.HttpExtension`)."""
        self.history = MetricsHistory(server.registry, every_s=self.sample_every_s)
        self.overview = Overview(
            llm=self.llm,
            engine=self.engine,
            checks=server.checks,
            history=self.history,
            pages=self.pages,
            sample_every_s=self.sample_every_s,
        )
        self.web_app = self._application(self.overview)
        app.add_subapp(PREFIX, self.web_app)

    def _application(self, overview: Overview) -> web.Application:
        sub = web.Application(middlewares=[self.signin.guard])
        for part in (overview, self.signin, self.conversations, self.audit_logs, self.try_it):
            part.add_routes(sub.router)
        sub.router.add_static("/static", STATIC_DIR, name="static")
        sub.on_response_prepare.append(security_headers)
        sub.cleanup_ctx.append(self._lifetime)
        sub.on_shutdown.append(self._on_shutdown)
        return sub

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        assert self.history is not None
        self.log_ring.attach()
        await self.passwords.start()
        await self.conversations.read_config_file()
        self.history.start()
        credential = await self.passwords.current()
        if credential is None:
            log.info("admin console: locked, no password set (%s)", set_password_hint())
        else:
            log.info("admin console on %s (password from the %s)", PREFIX, credential.origin)
        warning = exposure_warning(self.settings.http, password_set=credential is not None)
        if warning:
            log.warning("%s", warning)
        try:
            yield
        finally:
            await self.history.stop()
            await self.try_it.close()
            self.log_ring.detach()

    async def _on_shutdown(self, app: web.Application) -> None:
        # Open event streams would hold up the shutdown: end them. A Try-it turn in progress is
        # cancelled (the engine keeps what was said as 'partial') and its stream ends with it.
        self.audit_logs.end_streams()
        self.try_it.cancel_turns()
