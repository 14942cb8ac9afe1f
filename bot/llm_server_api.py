"""The HTTP API of OpenAI-compatible LLM servers besides the reply stream.

What Parley asks a server: `/health` (llama.cpp) and `/v1/models` (everyone) whether it answers,
and llama.cpp's `/props` (slot count, modalities), `/slots` (which slots are processing) and
`/tokenize`. One `ServerAPI` serves one list of servers (a pool): one aiohttp session, with the
list's Bearer key, that the reply stream shares. No URL appears in an error here: a URL may carry
credentials.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp


class NoAnswer(Exception):
    """The server could not be reached or did not answer in time; the message names no URL."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's answer: the HTTP status and the JSON body (None when the body is not JSON)."""

    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return self.status == 200


class ServerAPI:
    """One list of servers' HTTP API: one session (with the Bearer key) for every request.

    `timeout_s` bounds each request unless a call gives its own. The session is also the reply
    stream's (`session()`): llama-server closes every streamed connection although it announces
    keep-alive, and reusing one fails with "Can not write request body", so no connection is
    reused.
    """

    def __init__(self, api_key: str = "", *, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The list's session (made on first use, again after `close()`)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        """Close the session; a later request opens a new one."""
        if self._session is not None:
            await self._session.close()

    async def get(self, url: str, path: str, *, timeout_s: float | None = None) -> Answer:
        """GET `url` + `path`; raises NoAnswer when the server is unreachable or too slow."""
        return await self._request("GET", url, path, None, timeout_s)

    async def post(
        self, url: str, path: str, body: dict[str, Any], *, timeout_s: float | None = None
    ) -> Answer:
        """POST `body` as JSON to `url` + `path`; raises NoAnswer like `get`."""
        return await self._request("POST", url, path, body, timeout_s)

    async def _request(
        self, method: str, url: str, path: str, body: dict[str, Any] | None, timeout_s: float | None
    ) -> Answer:
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with self.session().request(
                method,
                url.rstrip("/") + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:  # not JSON: another server's page, or an error text
                    data = None
                return Answer(resp.status, data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NoAnswer(describe_network_error(exc, limit)) from None

    async def healthy(self, url: str, *, timeout_s: float | None = None) -> bool:
        """True when `url` answers /health (llama.cpp) or /v1/models (others) with 200."""
        try:
            for probe in ("/health", "/v1/models"):
                if (await self.get(url, probe, timeout_s=timeout_s)).ok:
                    return True
        except NoAnswer:
            return False
        return False

    async def props(self, url: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """llama.cpp's /props ({} from a server without it); raises NoAnswer."""
        answer = await self.get(url, "/props", timeout_s=timeout_s)
        return answer.data if answer.ok and isinstance(answer.data, dict) else {}

    async def slots(
        self, url: str, *, timeout_s: float | None = None
    ) -> list[dict[str, Any]] | None:
        """llama.cpp's /slots, one dict a slot; None from a server without it (or with
        `--no-slots`). Raises NoAnswer."""
        answer = await self.get(url, "/slots", timeout_s=timeout_s)
        if not answer.ok or not isinstance(answer.data, list):
            return None
        return [slot for slot in answer.data if isinstance(slot, dict)]

    async def tokenize(self, url: str, text: str) -> list[Any] | None:
        """llama.cpp's /tokenize of `text`; None from a server without it. Raises NoAnswer."""
        answer = await self.post(url, "/tokenize", {"content": text})
        tokens = answer.data.get("tokens") if isinstance(answer.data, dict) else None
        return tokens if answer.ok and isinstance(tokens, list) else None


def describe_network_error(exc: BaseException, timeout_s: float) -> str:
    """A short reason without URLs (they may carry credentials, Telegram's the bot token)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({_os_reason(exc.os_error)})"
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "connection closed mid-stream"
    if isinstance(exc, aiohttp.ClientOSError):  # connected, then the connection failed
        return f"connection lost ({_os_reason(exc)})"
    if isinstance(exc, OSError):
        return f"cannot connect ({_os_reason(exc)})"
    return type(exc).__name__


def _os_reason(err: OSError) -> str:
    if isinstance(err, socket.gaierror):  # DNS: errno is a resolver code, not an OS one
        return err.strerror or "name resolution failed"
    if err.errno:
        return os.strerror(err.errno)  # asyncio's strerror repeats the address
    return err.strerror or type(err).__name__
