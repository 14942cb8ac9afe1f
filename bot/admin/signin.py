"""Who may use the console: the guard in front of every route, signing in and out.

Every route but the sign-in needs a session cookie (HttpOnly, SameSite=Strict, Secure over TLS);
every POST comes from this site and carries the session's CSRF token; sign-in attempts are
throttled per address, each counted before its password is checked. Until a password is set,
/admin only says how to set one.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from aiohttp import web

from bot.admin.pages import (
    ACCESS,
    LOGIN_PATH,
    NOBODY,
    PREFIX,
    SAFE_METHODS,
    Access,
    Handler,
    Pages,
    current_credential,
    form_field,
    quote_path,
    redirect,
)
from bot.admin.passwords import PasswordStore
from bot.admin.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SIGN_IN_SCOPE,
    SIGN_IN_THROTTLE,
    SessionStore,
    new_token,
    same_token,
)
from bot.config import HTTPSettings

if TYPE_CHECKING:
    from bot.storage import Store

log = logging.getLogger(__name__)

LOGIN_COOKIE_AGE_S = 3600
# Served without a session: the sign-in itself. Everything else needs one (static files aside).
_PUBLIC_ROUTES = frozenset({"login", "login_submit"})


class SignIn:
    """The guard (a middleware), the sign-in form and signing out."""

    def __init__(
        self, http: HTTPSettings, passwords: PasswordStore, pages: Pages, *, store: Store
    ) -> None:
        self.http = http
        self.passwords = passwords
        self.pages = pages
        self.store = store
        self.sessions = SessionStore(store)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/login", self._login_page, name="login")
        router.add_post("/login", self._login_submit, name="login_submit")
        router.add_post("/logout", self._logout, name="logout")

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every /admin route but the sign-in needs a session; every POST its CSRF token."""
        route = request.match_info.route
        if isinstance(route.resource, web.StaticResource) or route.resource is None:
            return await handler(request)  # style, script, and 404s: nothing to protect
        ACCESS.set(NOBODY)
        credential = await self.passwords.current()
        if credential is None:
            return self._locked(request)
        ACCESS.set(Access(credential, None))
        if route.name in _PUBLIC_ROUTES:
            return await handler(request)
        session = await self.sessions.get(
            request.cookies.get(SESSION_COOKIE), credential.fingerprint
        )
        if session is None:
            if request.method in SAFE_METHODS and route.name not in ("logs_stream",):
                return redirect(f"{LOGIN_PATH}?next={quote_path(request.path_qs)}")
            return web.json_response({"error": "sign in first"}, status=401)
        ACCESS.set(Access(credential, session))
        if request.method not in SAFE_METHODS:
            if not _same_origin(request):
                return self.refused(request, "This form came from another site.")
            presented = request.headers.get(CSRF_HEADER) or form_field(
                await request.post(), CSRF_FIELD
            )
            if not same_token(presented, session.csrf_token):
                return self.refused(request, "The form expired: reload the page and try again.")
        return await handler(request)

    def _locked(self, request: web.Request) -> web.StreamResponse:
        """No password yet: /admin explains how to set one; nothing else is served."""
        if request.method not in SAFE_METHODS:
            return self.pages.render(request, "locked.html", status=403)
        if request.path.rstrip("/") not in (PREFIX, LOGIN_PATH):
            return redirect(PREFIX)
        return self.pages.render(request, "locked.html")

    def refused(self, request: web.Request, why: str) -> web.Response:
        """A 403 page saying `why` (logged too)."""
        log.warning("admin console: refused %s %s: %s", request.method, request.path, why)
        return self.pages.render(request, "error.html", status=403, title="Refused", message=why)

    def _secure(self, request: web.Request) -> bool:
        return request.secure or self.http.behind_tls_proxy

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        credential = current_credential()
        if await self.sessions.get(request.cookies.get(SESSION_COOKIE), credential.fingerprint):
            return redirect(_next_path(request.query.get("next")))
        return self._login_form(request)

    def _login_form(
        self, request: web.Request, *, status: int = 200, error: str = "", next_path: str = ""
    ) -> web.Response:
        # The form's CSRF token is a cookie and the same value in a field (double submit).
        token = request.cookies.get(LOGIN_COOKIE) or new_token()
        response = self.pages.render(
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
        credential = current_credential()
        address = request.remote or "unknown"
        form = await request.post()
        next_path = _next_path(form_field(form, "next"))
        if not same_token(form_field(form, CSRF_FIELD), request.cookies.get(LOGIN_COOKIE, "")):
            return self.refused(request, "The sign-in form expired: reload it and try again.")
        # Counted before the password is checked, in the store: attempts sent at once, to this
        # process or another, are counted one after another and only counted ones are checked.
        wait = math.ceil(
            await self.store.throttle_attempt(SIGN_IN_SCOPE, address, SIGN_IN_THROTTLE)
        )
        if wait:
            response = self._login_form(
                request,
                status=429,
                error=f"Too many failed sign-ins. Try again in {wait} seconds.",
                next_path=next_path,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        password = form_field(form, "password")
        if not password or not await self.passwords.verify(credential, password):
            log.warning("admin console: failed sign-in from %s", address)
            return self._login_form(
                request, status=401, error="Wrong password.", next_path=next_path
            )
        await self.store.throttle_clear(SIGN_IN_SCOPE, address)
        token, _ = await self.sessions.create(credential.fingerprint, address)
        log.info("admin console: signed in from %s", address)
        response = redirect(next_path)
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
        await self.sessions.end(request.cookies.get(SESSION_COOKIE))
        log.info("admin console: signed out from %s", request.remote)
        response = redirect(LOGIN_PATH)
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response


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
