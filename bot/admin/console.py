"""The admin console: /admin on the [http] endpoint, server-rendered pages behind a password.

Secure by default: the endpoint binds loopback; there is no default password (until one is set,
/admin only says how to set one); a session cookie (HttpOnly, SameSite=Strict, Secure over TLS)
follows a sign-in; every POST carries the session's CSRF token; failed sign-ins are throttled per
address. Pages never contain a token, an API key or the password hash: secrets are masked and log
lines redacted before they are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import jinja2
from aiohttp import web

from bot.admin import queries
from bot.admin.chat_settings import chat_settings, set_chat_setting
from bot.admin.config_view import describe_settings, mask_url, read_config_file
from bot.admin.exposure import SET_PASSWORD_HINT, exposure_warning
from bot.admin.logtail import LogRing
from bot.admin.passwords import Credential, PasswordStore
from bot.admin.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    SessionStore,
    new_token,
    same_token,
)
from bot.admin.stats import SAMPLE_EVERY_S, MetricsHistory, Series
from bot.admin.web_target import WEB_CHANNEL, WEB_PLATFORM, WebReplyTarget, web_message
from bot.config import Settings
from bot.health import HealthChecks

if TYPE_CHECKING:
    from bot.app import ParleyApp
    from bot.commands import Commands
    from bot.engine import ConversationEngine
    from bot.http_server import OpsServer
    from bot.llm import LLMClient
    from bot.storage import Store

log = logging.getLogger(__name__)

PREFIX = "/admin"
LOGIN_PATH = f"{PREFIX}/login"
CHATS_PER_PAGE = 50
MESSAGES_PER_PAGE = 100
SEARCH_HITS = 100
AUDIT_PER_PAGE = 50
LOG_LINES_SHOWN = 200
OVERVIEW_CACHE_S = 2.0  # several open overview pages probe the backends once
SLOTS_TIMEOUT_S = 2.0
KEEPALIVE_S = 15.0  # a comment line on idle event streams, so proxies keep them open
LOGIN_COOKIE_AGE_S = 3600
NAV = (
    ("overview", PREFIX, "Overview"),
    ("chats", f"{PREFIX}/chats", "Conversations"),
    ("settings", f"{PREFIX}/settings", "Settings"),
    ("audit", f"{PREFIX}/audit", "Audit log"),
    ("logs", f"{PREFIX}/logs", "Logs"),
    ("try", f"{PREFIX}/try", "Try it"),
)
# Served without a session: the sign-in itself. Everything else needs one (static files aside).
_PUBLIC_ROUTES = frozenset({"login", "login_submit"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# A strict policy: only this console's own files, no inline script, never inside a frame.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HERE = Path(__file__).resolve().parent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Access:
    """What the guard found out about the request being handled."""

    credential: Credential | None
    session: Session | None


# Set by the guard for the request its task is handling (typed request keys need aiohttp 3.14).
_NOBODY = _Access(None, None)
_ACCESS: ContextVar[_Access] = ContextVar("admin_access", default=_NOBODY)


def _credential() -> Credential:
    credential = _ACCESS.get().credential
    assert credential is not None  # the guard serves the sign-in only once a password is set
    return credential


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
        self.store = store
        self.engine = engine
        self.commands = commands
        self.llm = llm
        self.config_path = config_path
        self.environ = dict(os.environ if environ is None else environ)
        self.passwords = PasswordStore(settings)
        self.sessions = SessionStore()
        self.throttle = LoginThrottle()
        self.log_ring = LogRing(settings.secrets())
        self.sample_every_s = sample_every_s
        self.checks = HealthChecks()
        self.history: MetricsHistory | None = None
        self.web_app: web.Application | None = None  # the /admin sub-application, once mounted
        self._templates = _templates()
        self._file_data: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._turns: set[asyncio.Task[None]] = set()
        self._overview: tuple[float, dict[str, Any]] | None = None

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

    # -- mounting ----------------------------------------------------------------------------

    def install(self, app: web.Application, server: OpsServer) -> None:
        """Mount /admin on the endpoint's application (`bot.http_server.HttpExtension`)."""
        self.checks = server.checks
        self.history = MetricsHistory(server.registry, every_s=self.sample_every_s)
        self.web_app = self._application()
        app.add_subapp(PREFIX, self.web_app)

    def _application(self) -> web.Application:
        sub = web.Application(middlewares=[self._guard])
        r = sub.router
        r.add_get("", self._overview_page, name="overview")
        r.add_get("/", self._overview_page, name="overview_slash")
        r.add_get("/login", self._login_page, name="login")
        r.add_post("/login", self._login_submit, name="login_submit")
        r.add_post("/logout", self._logout, name="logout")
        r.add_get("/api/overview", self._overview_json, name="overview_json")
        r.add_get("/chats", self._chats_page, name="chats")
        r.add_get(r"/chats/{chat:\d+}", self._chat_page, name="chat")
        r.add_get(r"/chats/{chat:\d+}/settings", self._chat_settings_page, name="chat_settings")
        r.add_post(r"/chats/{chat:\d+}/settings", self._chat_settings_submit, name="chat_set")
        r.add_get("/settings", self._settings_page, name="settings")
        r.add_get("/audit", self._audit_page, name="audit")
        r.add_get("/logs", self._logs_page, name="logs")
        r.add_get("/logs/stream", self._logs_stream, name="logs_stream")
        r.add_get("/try", self._try_page, name="try_it")
        r.add_post("/try/send", self._try_send, name="try_send")
        r.add_static("/static", _HERE / "static", name="static")
        sub.on_response_prepare.append(_security_headers)
        sub.cleanup_ctx.append(self._lifetime)
        sub.on_shutdown.append(self._on_shutdown)
        return sub

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        self.log_ring.attach()
        await self.passwords.start()
        self._file_data = await asyncio.to_thread(read_config_file, self.config_path)
        self._http = aiohttp.ClientSession(headers=_llm_headers(self.settings))
        assert self.history is not None
        self.history.start()
        credential = await self.passwords.current()
        if credential is None:
            log.info("admin console: locked, no password set (%s)", SET_PASSWORD_HINT)
        else:
            log.info("admin console on %s (password from the %s)", PREFIX, credential.origin)
        warning = exposure_warning(self.settings.http, password_set=credential is not None)
        if warning:
            log.warning("%s", warning)
        try:
            yield
        finally:
            await self.history.stop()
            for task in list(self._turns):
                task.cancel()
            await asyncio.gather(*self._turns, return_exceptions=True)
            await self._http.close()
            self.log_ring.detach()

    async def _on_shutdown(self, app: web.Application) -> None:
        # Open event streams would hold up the shutdown: end them. A Try-it turn in progress is
        # cancelled (the engine keeps what was said as 'partial') and its stream ends with it.
        self._closing.set()
        self.log_ring.wake_all()
        for task in list(self._turns):
            task.cancel()

    # -- access --------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every /admin route but the sign-in needs a session; every POST its CSRF token."""
        route = request.match_info.route
        if isinstance(route.resource, web.StaticResource) or route.resource is None:
            return await handler(request)  # style, script, and 404s: nothing to protect
        _ACCESS.set(_NOBODY)
        credential = await self.passwords.current()
        if credential is None:
            return self._locked(request)
        _ACCESS.set(_Access(credential, None))
        if route.name in _PUBLIC_ROUTES:
            return await handler(request)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), credential.fingerprint)
        if session is None:
            if request.method in _SAFE_METHODS and route.name not in ("logs_stream",):
                return _redirect(f"{LOGIN_PATH}?next={_quote(request.path_qs)}")
            return web.json_response({"error": "sign in first"}, status=401)
        _ACCESS.set(_Access(credential, session))
        if request.method not in _SAFE_METHODS:
            if not _same_origin(request):
                return self._refused(request, "This form came from another site.")
            presented = request.headers.get(CSRF_HEADER) or _field(await request.post(), CSRF_FIELD)
            if not same_token(presented, session.csrf_token):
                return self._refused(request, "The form expired: reload the page and try again.")
        return await handler(request)

    def _locked(self, request: web.Request) -> web.StreamResponse:
        """No password yet: /admin explains how to set one; nothing else is served."""
        if request.method not in _SAFE_METHODS:
            return self._render(request, "locked.html", status=403)
        if request.path.rstrip("/") not in (PREFIX, LOGIN_PATH):
            return _redirect(PREFIX)
        return self._render(request, "locked.html")

    def _refused(self, request: web.Request, why: str) -> web.Response:
        log.warning("admin console: refused %s %s: %s", request.method, request.path, why)
        return self._render(request, "error.html", status=403, title="Refused", message=why)

    def _actor(self, request: web.Request) -> str:
        """How the audit log names a change made here."""
        return f"admin console ({request.remote or 'unknown address'})"

    def _secure(self, request: web.Request) -> bool:
        return request.secure or self.settings.http.behind_tls_proxy

    # -- rendering -----------------------------------------------------------------------------

    def _render(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        session = _ACCESS.get().session
        html = self._templates.get_template(template).render(
            csrf_token=session.csrf_token if session else "",
            signed_in=session is not None,
            nav=NAV,
            bot_name=self.settings.engine.bot_name,
            set_password_hint=SET_PASSWORD_HINT,
            **context,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    # -- sign-in -------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        credential = _credential()
        if self.sessions.get(request.cookies.get(SESSION_COOKIE), credential.fingerprint):
            return _redirect(_next_path(request.query.get("next")))
        return self._login_form(request)

    def _login_form(
        self, request: web.Request, *, status: int = 200, error: str = "", next_path: str = ""
    ) -> web.Response:
        # The form's CSRF token is a cookie and the same value in a field (double submit).
        token = request.cookies.get(LOGIN_COOKIE) or new_token()
        response = self._render(
            request,
            "login.html",
            status=status,
            login_token=token,
            error=error,
            next_path=next_path or _next_path(request.query.get("next")),
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=LOGIN_COOKIE_AGE_S,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        return response

    async def _login_submit(self, request: web.Request) -> web.StreamResponse:
        credential = _credential()
        address = request.remote or "unknown"
        form = await request.post()
        next_path = _next_path(_field(form, "next"))
        wait = self.throttle.retry_after(address)
        if wait:
            response = self._login_form(
                request,
                status=429,
                error=f"Too many failed sign-ins. Try again in {wait} seconds.",
                next_path=next_path,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        if not same_token(_field(form, CSRF_FIELD), request.cookies.get(LOGIN_COOKIE, "")):
            return self._refused(request, "The sign-in form expired: reload it and try again.")
        password = _field(form, "password")
        if not password or not await self.passwords.verify(credential, password):
            self.throttle.failed(address)
            log.warning("admin console: failed sign-in from %s", address)
            return self._login_form(
                request, status=401, error="Wrong password.", next_path=next_path
            )
        self.throttle.succeeded(address)
        token, _ = self.sessions.create(credential.fingerprint, address)
        log.info("admin console: signed in from %s", address)
        response = _redirect(next_path)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        log.info("admin console: signed out from %s", request.remote)
        response = _redirect(LOGIN_PATH)
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- overview ------------------------------------------------------------------------------

    async def _overview_page(self, request: web.Request) -> web.StreamResponse:
        data = await self._overview_data()
        return self._render(request, "overview.html", current="overview", data=data)

    async def _overview_json(self, request: web.Request) -> web.StreamResponse:
        data = await self._overview_data()
        assert self.history is not None
        data = {**data, "series": [_series_json(s) for s in self.history.series()]}
        return web.json_response(data)

    async def _overview_data(self) -> dict[str, Any]:
        """Health, backends, slots, queue and totals; probed at most every OVERVIEW_CACHE_S."""
        now = time.monotonic()
        if self._overview is not None and now - self._overview[0] < OVERVIEW_CACHE_S:
            return self._overview[1]
        results, backends = await asyncio.gather(
            self.checks.run(), asyncio.gather(*(self._backend(url) for url in self.llm.urls))
        )
        assert self.history is not None
        totals = self.history.latest()
        queue = self.engine.queue
        data = {
            "health": [{"name": r.name, "ok": r.ok, "problem": r.problem or ""} for r in results],
            "backends": list(backends),
            "engine": {"slots": queue.slots, "busy": queue.in_use, "queue": queue.depth},
            "totals": {
                "messages_in": int(totals.get("parley_messages_in_total")),
                "replies": int(totals.get("parley_replies_total")),
                "tokens_out": int(totals.get("parley_tokens_out_total")),
                "rate_limited": int(totals.get("parley_rate_limited_total")),
                "replies_by_status": {k: int(v) for k, v in totals.replies_by_status.items()},
            },
            "sampled_every_s": self.sample_every_s,
        }
        self._overview = (now, data)
        return data

    async def _backend(self, url: str) -> dict[str, Any]:
        """One LLM backend: does it answer, and how many of its slots are busy (llama.cpp)."""
        healthy, slots = await asyncio.gather(self.llm.healthy(url), self._slots(url))
        busy, total = slots if slots else (None, None)
        return {"url": mask_url(url), "healthy": healthy, "busy": busy, "slots": total}

    async def _slots(self, url: str) -> tuple[int, int] | None:
        """llama-server's /slots: (processing, total); None when the server has no such page."""
        assert self._http is not None
        try:
            async with self._http.get(
                f"{url}/slots", timeout=aiohttp.ClientTimeout(total=SLOTS_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if not isinstance(data, list):
            return None
        busy = sum(1 for slot in data if isinstance(slot, dict) and slot.get("is_processing"))
        return busy, len(data)

    # -- conversations -------------------------------------------------------------------------

    async def _chats_page(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("q", "").strip()
        page = _int(request.query.get("page"), 1, minimum=1)
        hits: list[queries.SearchHit] = []
        chats: list[queries.ChatSummary] = []
        total = 0
        if search:
            hits = await queries.search_messages(self.store, search, limit=SEARCH_HITS)
        else:
            total = await queries.count_chats(self.store)
            chats = await queries.list_chats(
                self.store, limit=CHATS_PER_PAGE, offset=(page - 1) * CHATS_PER_PAGE
            )
        return self._render(
            request,
            "chats.html",
            current="chats",
            search=search,
            hits=hits,
            chats=chats,
            page=page,
            more=page * CHATS_PER_PAGE < total,
            total=total,
        )

    async def _chat(self, request: web.Request) -> queries.ChatSummary:
        chat = await queries.get_chat(self.store, int(request.match_info["chat"]))
        if chat is None:
            raise web.HTTPNotFound(text="No such conversation.")
        return chat

    async def _chat_page(self, request: web.Request) -> web.StreamResponse:
        chat = await self._chat(request)
        before = _int(request.query.get("before"), None, minimum=1)
        rows = await queries.chat_messages(
            self.store, chat.id, limit=MESSAGES_PER_PAGE, before=before
        )
        older = rows[0].id if len(rows) == MESSAGES_PER_PAGE else None
        return self._render(
            request, "chat.html", current="chats", chat=chat, rows=rows, older=older
        )

    # -- settings ------------------------------------------------------------------------------

    async def _chat_settings_page(self, request: web.Request) -> web.StreamResponse:
        chat = await self._chat(request)
        saved = request.query.get("saved", "")
        return await self._chat_settings_view(request, chat, saved=saved)

    async def _chat_settings_view(
        self,
        request: web.Request,
        chat: queries.ChatSummary,
        *,
        saved: str = "",
        error: str = "",
        error_key: str = "",
        status: int = 200,
    ) -> web.Response:
        rows = await chat_settings(self.store, self.settings.engine, chat.id)
        return self._render(
            request,
            "chat_settings.html",
            status=status,
            current="settings",
            chat=chat,
            rows=rows,
            saved=saved if any(row.key == saved for row in rows) else "",
            error=error,
            error_key=error_key,
        )

    async def _chat_settings_submit(self, request: web.Request) -> web.StreamResponse:
        chat = await self._chat(request)
        form = await request.post()
        key = _field(form, "key")
        result = await set_chat_setting(
            self.commands,
            chat.platform,
            chat.channel_key,
            chat.id,
            key,
            _field(form, "value"),
            actor_name=self._actor(request),
        )
        if not result.ok:
            return await self._chat_settings_view(
                request, chat, error=result.answer, error_key=key, status=400
            )
        log.info("admin console: chat %d: %s changed", chat.id, key)
        return _redirect(f"{PREFIX}/chats/{chat.id}/settings?saved={_quote(key)}#{key}")

    async def _settings_page(self, request: web.Request) -> web.StreamResponse:
        rows = describe_settings(self.settings, self._file_data, self.environ)
        sections: dict[str, list[Any]] = {}
        for row in rows:
            sections.setdefault(row.key.split(".", 1)[0], []).append(row)
        chats = await queries.list_chats(self.store, limit=CHATS_PER_PAGE)
        return self._render(
            request,
            "settings.html",
            current="settings",
            sections=sections,
            chats=chats,
            config_path=str(self.config_path) if self.config_path else "",
        )

    # -- audit and logs ------------------------------------------------------------------------

    async def _audit_page(self, request: web.Request) -> web.StreamResponse:
        before = _int(request.query.get("before"), None, minimum=1)
        chat_id = _int(request.query.get("chat"), None, minimum=1)
        rows = await queries.audit_page(
            self.store, limit=AUDIT_PER_PAGE, before=before, channel_id=chat_id
        )
        older = rows[-1].id if len(rows) == AUDIT_PER_PAGE else None
        chat = await queries.get_chat(self.store, chat_id) if chat_id else None
        return self._render(
            request, "audit.html", current="audit", rows=rows, older=older, chat=chat
        )

    async def _logs_page(self, request: web.Request) -> web.StreamResponse:
        entries = self.log_ring.entries(LOG_LINES_SHOWN)
        last = entries[-1].seq if entries else 0
        return self._render(request, "logs.html", current="logs", entries=entries, last=last)

    async def _logs_stream(self, request: web.Request) -> web.StreamResponse:
        """New log records as server-sent events, from the one after `?after=SEQ`."""
        after = _int(request.query.get("after"), 0, minimum=0)
        queue = self.log_ring.subscribe()
        response = await _event_stream(request)
        try:
            for entry in self.log_ring.entries():
                if entry.seq > after:
                    await _send_event(response, "log", entry.as_json())
                    after = entry.seq
            while True:
                entry = await _next_or_none(queue)
                if self._closing.is_set():
                    break
                if entry is None:
                    await response.write(b": keep-alive\n\n")
                elif entry.seq > after:
                    await _send_event(response, "log", entry.as_json())
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the page was closed
        finally:
            self.log_ring.unsubscribe(queue)
        return response

    # -- try it --------------------------------------------------------------------------------

    async def _try_page(self, request: web.Request) -> web.StreamResponse:
        channel_id = await self.store.channel_id(WEB_PLATFORM, WEB_CHANNEL)
        rows = await queries.chat_messages(self.store, channel_id, limit=40)
        return self._render(request, "try.html", current="try", rows=rows, chat_id=channel_id)

    async def _try_send(self, request: web.Request) -> web.StreamResponse:
        """Answer one message typed on the page, streamed back as server-sent events."""
        text = _field(await request.post(), "message").strip()
        if not text:
            return web.json_response({"error": "type a message first"}, status=400)
        target = WebReplyTarget()
        turn = asyncio.create_task(self._web_turn(text, target, self._actor(request)))
        self._turns.add(turn)
        turn.add_done_callback(self._turns.discard)
        response = await _event_stream(request)
        try:
            while True:
                event = await _next_or_none(target.events)
                if event is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(event.encode())
                if event.name == "done":
                    break
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the page was closed: the reply is still finished and stored
        return response

    async def _web_turn(self, text: str, target: WebReplyTarget, actor: str) -> None:
        """One turn of the "web" platform: a command, or a message through engine.handle()."""
        message = web_message(text, actor_name=actor)
        try:
            if text.startswith("/"):
                name, _, args = text[1:].partition(" ")
                await target.notice(await self.commands.run(message, name, args))
            else:
                await self.engine.handle(message, target)
        except Exception:
            log.exception("admin console: the Try-it turn failed")
            await target.notice("⚠️ Something went wrong; the logs say what.")
        finally:
            target.close()


# -- helpers ---------------------------------------------------------------------------------


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bot.admin", "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    return env


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _llm_headers(settings: Settings) -> dict[str, str]:
    key = settings.llm.api_key.get_secret_value()
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: browsers then send this site's real Origin with its forms.
    response.headers["Referrer-Policy"] = "same-origin"
    static = isinstance(request.match_info.route.resource, web.StaticResource)
    # Pages hold conversations: never kept in a cache; style and script may be revalidated.
    response.headers["Cache-Control"] = "no-cache" if static else "no-store"


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _quote(text: str) -> str:
    return quote(text, safe="/")


def _next_path(raw: str | None) -> str:
    """Where to go after signing in: a path inside /admin, never another site."""
    inside = raw is not None and raw.startswith(PREFIX) and "\\" not in raw
    if inside and raw is not None and not raw.startswith(LOGIN_PATH):
        return raw
    return PREFIX


def _same_origin(request: web.Request) -> bool:
    """A POST whose Origin names another site is refused (the CSRF token aside).

    Browsers send "null" in some privacy contexts: then the token alone decides.
    """
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return origin.split("://", 1)[-1].rstrip("/") == request.host


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _int(raw: str | None, default: Any, *, minimum: int) -> Any:
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        return default
    return value if value is None or value >= minimum else default


def _series_json(series: Series) -> dict[str, Any]:
    return {
        "key": series.key,
        "title": series.title,
        "unit": series.unit,
        "points": [[round(t, 3), None if v is None else round(v, 4)] for t, v in series.points],
    }


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


async def _send_event(response: web.StreamResponse, name: str, data: dict[str, Any]) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


async def _next_or_none(queue: asyncio.Queue[Any]) -> Any:
    """The queue's next item, or None after KEEPALIVE_S of quiet (or a wake-up at shutdown)."""
    try:
        async with asyncio.timeout(KEEPALIVE_S):
            return await queue.get()  # a cancelled get() leaves the item in the queue
    except TimeoutError:
        return None
