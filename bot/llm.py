"""Streaming client for OpenAI-compatible servers (llama.cpp, vLLM, Ollama, OpenAI)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from bot.backoff import Backoff
from bot.config import LLMSettings
from bot.errors import LLMRequestRejected, LLMStreamBroken, LLMTimeout, LLMUnavailable
from bot.sse import DONE, SSEDecoder, ThinkSplitter, parse_chunk

log = logging.getLogger(__name__)

Api = Literal["chat", "completion"]
_MAX_BACKOFF_S = 8.0


@dataclass(slots=True)
class LLMRequest:
    """One generation: chat messages (api "chat") or a raw prompt (api "completion")."""

    # A message's content is text, or a list of parts (text and images) for a chat with images.
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    model: str = ""  # the model name to send; empty: llm.model
    temperature: float = 0.7
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamEvent:
    """A piece of the reply: answer text and/or reasoning; the last one carries usage."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class _RetryableError(Exception):
    """A failure before the first token that another try (or backend) may not have."""


class LLMClient:
    """Streams replies from the first healthy backend among `urls`, failing over in order."""

    def __init__(
        self,
        settings: LLMSettings,
        urls: list[str],
        api: Api,
        *,
        wait_ready: dict[str, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("LLMClient needs at least one base URL")
        self.settings = settings
        self.urls = [url.rstrip("/") for url in urls]
        self.api: Api = api
        self._preferred = 0  # index of the backend that answered last
        self._tokenize_ok: dict[str, bool] = {}
        self._session: aiohttp.ClientSession | None = None
        # Per URL: awaited before each try, e.g. while the managed llama-server restarts.
        self._wait_ready = {url.rstrip("/"): fn for url, fn in (wait_ready or {}).items()}

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key.get_secret_value()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # llama-server closes streamed connections although it announces keep-alive:
            # reusing one fails with "Can not write request body", so never reuse.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                headers=self._headers(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _payload(self, request: LLMRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "stream": True,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stream_options": {"include_usage": True},
        }
        model = request.model or self.settings.model
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = request.stop[:4]  # OpenAI accepts at most four stop strings
        if self.api == "chat":
            body["messages"] = request.messages
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    async def stream(self, request: LLMRequest) -> AsyncGenerator[StreamEvent, None]:
        """Yield the reply as it streams. Closing the iterator closes the connection.

        Raises LLMUnavailable (nothing answered), LLMRequestRejected (4xx), LLMTimeout (no answer in
        llm.timeout_s) or LLMStreamBroken (the stream stopped after the first token).
        """
        path, body = self._payload(request)
        order = [(self._preferred + i) % len(self.urls) for i in range(len(self.urls))]
        problems: list[str] = []
        for index in order:
            url = self.urls[index]
            backoff = Backoff(self.settings.backoff_s, _MAX_BACKOFF_S)  # jittered: no herd
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    await asyncio.sleep(backoff.next())
                started = False
                if url in self._wait_ready:
                    await self._wait_ready[url]()
                try:
                    async for event in self._stream_one(url + path, body):
                        if not started:
                            started = True
                            self._preferred = index
                        yield event
                    return
                except _RetryableError as exc:
                    if started:
                        raise LLMStreamBroken(str(exc)) from None
                    problems.append(f"{url}: {exc}")
                    log.warning("LLM backend %s failed (try %d): %s", url, attempt + 1, exc)
                except LLMTimeout:
                    if started:
                        raise
                    problems.append(f"{url}: no answer in {self.settings.timeout_s:g}s")
                    log.warning("LLM backend %s timed out", url)
                    break  # a hung backend gets no second try: fail over at once
        raise LLMUnavailable("; ".join(problems))

    async def _stream_one(self, url: str, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout_s,
            sock_read=self.settings.timeout_s,  # silence longer than this is a hung backend
        )
        think = ThinkSplitter()
        decoder = SSEDecoder()
        finished = False
        try:
            async with self._client().post(url, json=body, timeout=timeout) as resp:
                if resp.status >= 400:
                    # Some servers quote the key they refused; the reason reaches the user.
                    reason = await _error_text(resp)
                    key = self.settings.api_key.get_secret_value()
                    if key:
                        reason = reason.replace(key, "[REDACTED]")
                    error = _RetryableError if resp.status >= 500 else LLMRequestRejected
                    raise error(f"HTTP {resp.status}: {reason}")
                async for raw in resp.content:
                    data = decoder.feed_line(raw)
                    if data is None:
                        continue
                    if data.strip() == DONE:
                        finished = True
                        break
                    chunk = parse_chunk(data)
                    finished = finished or chunk.finish_reason is not None
                    if chunk.error:
                        raise _RetryableError(f"server error in stream: {chunk.error}")
                    text, inline_reasoning = think.feed(chunk.text)
                    event = StreamEvent(
                        text=text,
                        reasoning=chunk.reasoning + inline_reasoning,
                        finish_reason=chunk.finish_reason,
                        usage={**chunk.timings, **chunk.usage},
                    )
                    if event.text or event.reasoning or event.finish_reason or event.usage:
                        yield event
                if not finished:
                    # No [DONE] and no finish_reason: the server died or the connection dropped.
                    raise _RetryableError("the stream ended before the reply was finished")
            text, reasoning = think.flush()
            if text or reasoning:
                yield StreamEvent(text=text, reasoning=reasoning)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise LLMTimeout(f"no data from {url} in {self.settings.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _RetryableError(_describe_client_error(exc)) from None

    async def tokenize(self, text: str) -> int | None:
        """Count tokens with llama-server's /tokenize; None when no backend offers it."""
        url = self.urls[self._preferred]
        if self._tokenize_ok.get(url) is False:
            return None
        try:
            async with self._client().post(
                url + "/tokenize",
                json={"content": text},
                timeout=aiohttp.ClientTimeout(total=self.settings.connect_timeout_s),
            ) as resp:
                if resp.status != 200:
                    self._tokenize_ok[url] = False
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            self._tokenize_ok[url] = False
            return None
        self._tokenize_ok[url] = True
        return len(tokens)

    async def healthy(self, url: str) -> bool:
        """True when `url` answers /health (llama.cpp) or /v1/models (others) with 200."""
        for probe in ("/health", "/v1/models"):
            try:
                async with self._client().get(
                    url.rstrip("/") + probe,
                    timeout=aiohttp.ClientTimeout(total=self.settings.connect_timeout_s),
                ) as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                return False
        return False


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        data = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return resp.reason or ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:300]
    return str(data)[:300]


def _describe_client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "connection closed mid-stream"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 characters a token for English prose)."""
    return max(1, round(len(text) / 3.5)) if text else 0
