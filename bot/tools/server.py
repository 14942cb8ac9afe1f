"""One configured MCP server: started (stdio) or connected to (streamable HTTP), watched, and
restarted with the one backoff policy whenever it fails.

A supervisor task owns the server's session from start to end (the SDK's transports must be
entered and left by one task); calls from other tasks use the session while it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Tool

from bot.backoff import Backoff
from bot.tools.childlog import ChildStderr
from bot.tools.settings import ToolServerSettings
from bot.urls import redact_url

logger = logging.getLogger(__name__)

State = Literal["starting", "ready", "failed"]

START_TIMEOUT_S = 60.0  # start, handshake and listing (a first `uvx ...` run downloads)
PROBE_INTERVAL_S = 30.0  # a quiet server's liveness is checked this often, by listing its tools
CLOSE_TIMEOUT_S = 10.0  # the SDK stops a child within ~5 s: stdin closed, 2 s, SIGTERM, 2 s, KILL
MAX_LIST_PAGES = 20  # a server whose tool list never ends cannot hang a start
ERROR_CHARS = 300
RESTART_INITIAL_S = 1.0
RESTART_CAP_S = 60.0
_REDACTED = "[REDACTED]"


class ServerUnavailable(Exception):
    """The server takes no calls now: it failed and waits for its restart."""


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """A server's state for `parley doctor` and /healthz; it never holds a secret."""

    name: str
    transport: Literal["stdio", "http"]
    state: State
    tools: int  # in its latest listing (kept while it restarts)
    last_error: str | None  # why it last failed, redacted; None once it is ready again
    restarts: int


def find_program(name: str) -> str:
    """`name` itself when it is a path, else the program found on PATH or beside Parley's own
    Python (a venv's bin/, which is not on PATH when Parley runs as .venv/bin/python)."""
    if os.sep in name:
        return name
    beside_python = str(Path(sys.executable).parent)
    return shutil.which(name) or shutil.which(name, path=beside_python) or name


def restart_backoff() -> Backoff:
    """The restart delays of one server: 1 s, doubling up to a minute, with jitter."""
    return Backoff(initial=RESTART_INITIAL_S, cap=RESTART_CAP_S)


class ToolServer:
    """One MCP server's connection and supervisor: `start()`, `client()` for calls, `aclose()`."""

    def __init__(
        self,
        name: str,
        settings: ToolServerSettings,
        *,
        probe_timeout_s: float,
        start_timeout_s: float = START_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._probe_timeout_s = probe_timeout_s
        self._start_timeout_s = start_timeout_s
        self._backoff = backoff if backoff is not None else restart_backoff()
        self._secrets = _secrets_of(settings)
        self._state: State = "starting"
        self._changed = asyncio.Event()  # replaced at every state change: waiters wake up
        self._settled = asyncio.Event()  # the first start succeeded or failed
        self._wake = asyncio.Event()  # check the server now (a call failed, its process ended)
        self._scope: anyio.CancelScope | None = None  # the supervisor's life; aclose() cancels it
        self._closing = False
        self._client: Client | None = None
        self._stderr: ChildStderr | None = None
        self._tools: list[Tool] = []
        self._missing: set[str] = set()
        self._last_error: str | None = None
        self._restarts = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def tools(self) -> list[Tool]:
        """The allowed tools of its latest listing (kept while it restarts)."""
        return self._tools

    def status(self) -> ServerStatus:
        """Its state now."""
        transport: Literal["stdio", "http"] = "http" if self._settings.url else "stdio"
        return ServerStatus(
            self.name, transport, self._state, len(self._tools), self._last_error, self._restarts
        )

    def redact(self, text: str) -> str:
        """`text` without this server's secrets (its env values, its URL's credentials)."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def start(self) -> None:
        """Start the supervisor; the server comes up in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"tool-server-{self.name}")

    async def wait_settled(self) -> None:
        """Until the first start has succeeded or failed."""
        await self._settled.wait()

    async def client(self) -> Client:
        """The session to call, waiting while the server starts; ServerUnavailable once it has
        failed (the caller bounds the wait)."""
        while True:
            if self._closing:
                raise ServerUnavailable("Parley is shutting down")
            if self._state == "ready" and self._client is not None:
                return self._client
            if self._state == "failed":
                raise ServerUnavailable(self._last_error or "it stopped and is being restarted")
            await self._changed.wait()

    def suspect(self) -> None:
        """A call failed or timed out: check the server now (it restarts if it answers nothing)."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the server (its child process with it), within a bounded time."""
        self._closing = True
        self._changed.set()
        # anyio's cancellation, not Task.cancel(): the SDK stops a child inside a shielded
        # scope, which a native cancel would break off, leaving the process behind.
        if self._scope is not None:
            self._scope.cancel()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            logger.warning("tool server %s did not stop within %g s", self.name, CLOSE_TIMEOUT_S)
            task.cancel()
        elif not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("tool server %s: %s", self.name, self._explain(error))

    def _set_state(self, state: State) -> None:
        self._state = state
        if state != "starting":
            self._settled.set()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        with anyio.CancelScope() as self._scope:
            while not self._closing:
                self._set_state("starting")
                reason = await self._serve()
                delay = self._backoff.next()
                # A server that keeps failing the same way says so once, not every minute.
                level = logging.WARNING if reason != self._last_error else logging.DEBUG
                logger.log(
                    level, "tool server %s failed (%s); restart in %.1f s", self.name, reason, delay
                )
                self._last_error = reason
                self._set_state("failed")
                await anyio.sleep(delay)
                self._restarts += 1

    async def _serve(self) -> str:
        """Start the server, list its tools, and watch it; returns why it stopped serving."""
        self._stderr = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await self._connect(stack)
                # asyncio's timeout, not anyio's: an anyio scope may not end while the
                # transport's task group, entered inside it, lives on.
                try:
                    async with asyncio.timeout(self._start_timeout_s):
                        await stack.enter_async_context(client)
                        tools = await self._list(client)
                except TimeoutError:
                    return self._explain(
                        f"no answer within {self._start_timeout_s:g} s of starting"
                    )
                if self._stderr is not None:
                    self._stderr.release_writer()
                self._client, self._tools, self._last_error = client, tools, None
                self._set_state("ready")
                logger.info("tool server %s ready: %d tools", self.name, len(tools))
                try:
                    return await self._watch(client)
                finally:
                    self._client = None
                    if not self._closing:  # calls fail fast while the session winds down
                        self._set_state("failed")
        except Exception as exc:  # noqa: BLE001 - whatever ends a session is the reason to restart
            return self._explain(exc)
        # The transport's task group ended the session itself (its connection broke) and
        # swallowed its own cancellation.
        return self._explain("the connection closed")

    async def _connect(self, stack: contextlib.AsyncExitStack) -> Client:
        if self._settings.url:
            return Client(await _http_transport(self._settings.url, stack), cache=None)
        stderr = ChildStderr(self.name, self.redact, on_eof=self.suspect)
        stack.push_async_callback(stderr.aclose)  # runs after the client's exit stopped the child
        await stderr.start()
        self._stderr = stderr
        command = self._settings.command
        program = await asyncio.to_thread(find_program, command[0])
        params = StdioServerParameters(
            command=program,
            args=command[1:],
            env={key: value.get_secret_value() for key, value in self._settings.env.items()},
        )
        return Client(stdio_client(params, errlog=stderr.writer), cache=None)

    async def _watch(self, client: Client) -> str:
        """Until a fault: list the tools when asked to check, and every little while."""
        while True:
            with anyio.move_on_after(PROBE_INTERVAL_S):
                await self._wake.wait()
            self._wake.clear()
            with anyio.move_on_after(self._probe_timeout_s) as probing:
                self._tools = await self._list(client)
            if probing.cancelled_caught:
                return self._explain(
                    f"no answer to a tools listing within {self._probe_timeout_s:g} s"
                )
            self._backoff.reset()  # it answered: its next failure restarts it quickly again

    async def _list(self, client: Client) -> list[Tool]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools += page.tools
            cursor = page.next_cursor
            if cursor is None:
                break
        allowed = self._settings.tools
        if not allowed:
            return tools
        missing = set(allowed) - {tool.name for tool in tools}
        if missing and missing != self._missing:
            logger.warning(
                "tool server %s offers no tool named %s (its allow list)",
                self.name,
                ", ".join(sorted(missing)),
            )
        self._missing = missing
        return [tool for tool in tools if tool.name in allowed]

    def _explain(self, problem: BaseException | str) -> str:
        """One redacted line: what went wrong, and the child's last stderr lines."""
        while isinstance(problem, BaseExceptionGroup) and problem.exceptions:
            problem = problem.exceptions[0]
        if isinstance(problem, str):
            text = problem
        elif isinstance(problem, OSError) or not str(problem):
            text = f"{type(problem).__name__}: {problem}".rstrip(": ")
        else:
            text = str(problem)
        tail = self._stderr.tail if self._stderr is not None else ""
        if tail:
            text = f"{text} (stderr: {tail})"
        return " ".join(self.redact(text).split())[:ERROR_CHARS]


_HTTP_TIMEOUT_S = 30.0  # connect, write, pool
_HTTP_STREAM_READ_S = 300.0  # between two bytes of a response stream


async def _http_transport(url: str, stack: contextlib.AsyncExitStack) -> Any:
    """The streamable-HTTP transport to `url`; its user:password@ goes in a Basic auth header
    instead, so the SDK's and the HTTP client's log lines name the URL without them."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return streamable_http_client(url)
    auth = httpx2.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    # The SDK's own client's timeouts: a server may hold a response stream open for minutes.
    timeout = httpx2.Timeout(_HTTP_TIMEOUT_S, read=_HTTP_STREAM_READ_S)
    http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth, timeout=timeout))
    return streamable_http_client(redact_url(url), http_client=http)


def _secrets_of(settings: ToolServerSettings) -> list[str]:
    """Its env values and URL credentials, longest first (so a value's part never shows)."""
    found = {value.get_secret_value() for value in settings.env.values()}
    if settings.url:
        parts = urlsplit(settings.url)
        found |= {parts.username or "", parts.password or "", parts.query}
    # Very short values would redact ordinary words ("1", "on"); the log filter skips them too.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)
