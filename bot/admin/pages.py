"""What every admin page shares: its paths, who is signed in for the request being handled, the
templates, and small HTTP helpers (redirects, form fields, server-sent events, headers)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from bot.admin.exposure import set_password_hint
from bot.admin.passwords import Credential
from bot.admin.sessions import Session
from bot.storage.base import MAX_ROW_ID

PREFIX = "/admin"
LOGIN_PATH = f"{PREFIX}/login"
KEEPALIVE_S = 15.0  # a comment line on idle event streams, so proxies keep them open
NAV = (
    ("overview", PREFIX, "Overview"),
    ("chats", f"{PREFIX}/chats", "Conversations"),
    ("settings", f"{PREFIX}/settings", "Settings"),
    ("audit", f"{PREFIX}/audit", "Audit log"),
    ("logs", f"{PREFIX}/logs", "Logs"),
    ("try", f"{PREFIX}/try", "Try it"),
)
SAFE_METHODS = frozenset({"GET", "HEAD"})
_MAX_INT_CHARS = 30  # a longer query parameter is no number the console uses
STATIC_DIR = Path(__file__).resolve().parent / "static"
# A strict policy: only this console's own files, no inline script, never inside a frame.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Access:
    """What the guard found out about the request being handled."""

    credential: Credential | None
    session: Session | None


# Set by the guard for the request its task is handling (typed request keys need aiohttp 3.14).
NOBODY = Access(None, None)
ACCESS: ContextVar[Access] = ContextVar("admin_access", default=NOBODY)


def current_credential() -> Credential:
    """The password's credential, for a route the guard let through."""
    credential = ACCESS.get().credential
    assert credential is not None  # the guard serves the sign-in only once a password is set
    return credential


def process_name() -> str:
    """This process as the log tail and charts name it (host:pid): several processes sharing a
    database each serve their own."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Pages:
    """Renders the console's templates with what every page shows (CSRF token, menu, name)."""

    def __init__(self, bot_name: str) -> None:
        self.bot_name = bot_name
        self.process = process_name()
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("bot.admin", "templates"),
            autoescape=jinja2.select_autoescape(("html",)),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["when"] = _when
        self._env.filters["seconds"] = _seconds

    def render(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        """`template` as an HTML response, for the session the guard found (if any)."""
        session = ACCESS.get().session
        html = self._env.get_template(template).render(
            csrf_token=session.csrf_token if session else "",
            signed_in=session is not None,
            nav=NAV,
            bot_name=self.bot_name,
            process=self.process,
            set_password_hint=set_password_hint(),
            **context,
        )
        return web.Response(text=html, content_type="text/html", status=status)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def actor(request: web.Request) -> str:
    """How the audit log names a change made in the console."""
    return f"admin console ({request.remote or 'unknown address'})"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """A strict content policy on every response; pages are never cached."""
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: browsers then send this site's real Origin with its forms.
    response.headers["Referrer-Policy"] = "same-origin"
    static = isinstance(request.match_info.route.resource, web.StaticResource)
    # Pages hold conversations: never kept in a cache; style and script may be revalidated.
    response.headers["Cache-Control"] = "no-cache" if static else "no-store"


def redirect(location: str) -> web.Response:
    """A 303 to `location` (after a form, the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location})


def quote_path(text: str) -> str:
    """`text` quoted for a URL, slashes kept."""
    return quote(text, safe="/")


def form_field(form: Mapping[str, Any], name: str) -> str:
    """A text field of a posted form ("" when missing or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def int_param(raw: str | None, default: Any, *, minimum: int, maximum: int = MAX_ROW_ID) -> Any:
    """A query parameter as an int from `minimum` to `maximum`, else `default`: a row id past
    what the database holds would overflow its driver."""
    if raw is None or not raw.isascii() or len(raw) > _MAX_INT_CHARS:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return value if minimum <= value <= maximum else default


def id_in_path(request: web.Request, name: str) -> int:
    """A row id from the route (digits only), or 404 when no row can have it."""
    value = int_param(request.match_info[name], None, minimum=1)
    if value is None:
        raise web.HTTPNotFound(text="No such conversation.")
    return int(value)


async def event_stream(request: web.Request) -> web.StreamResponse:
    """A prepared server-sent events response."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, name: str, data: dict[str, Any]) -> None:
    """One named server-sent event with a JSON payload."""
    await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


async def next_or_none(queue: asyncio.Queue[Any]) -> Any:
    """The queue's next item, or None after KEEPALIVE_S of quiet (or a wake-up at shutdown)."""
    try:
        async with asyncio.timeout(KEEPALIVE_S):
            return await queue.get()  # a cancelled get() leaves the item in the queue
    except TimeoutError:
        return None
