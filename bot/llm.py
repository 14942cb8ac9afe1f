"""Streaming client for OpenAI-compatible servers (llama.cpp, vLLM, Ollama, OpenAI), or a pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from bot import metrics
from bot.backoff import Backoff
from bot.errors import LLMRequestRejected, LLMStreamBroken, LLMTimeout, LLMUnavailable
from bot.llm_pool import DEFAULT_SLOTS, SHARED_HOLD_S, Backend, BackendPool, Lease, Routing
from bot.llm_server_api import NoAnswer, ServerAPI, describe_network_error
from bot.llm_settings import LLMSettings
from bot.sse import DONE, SSEDecoder, ThinkSplitter, parse_chunk

log = logging.getLogger(__name__)

Api = Literal["chat", "completion"]
_MAX_BACKOFF_S = 8.0
_PROBE_MIN_S = 0.05  # re-probing an unhealthy backend: first wait (llm.backoff_s if longer) ...
_PROBE_MAX_S = 30.0  # ... doubling up to this
_NO_SLOT_COUNT = "no /props slot count, the default"
_SLOTS_LOOK_BUSY_S = 1.0  # how often /slots is read while we have requests on the server ...
_SLOTS_LOOK_IDLE_S = 5.0  # ... and while we have none


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
    # Functions the model may call (the chat API's `tools`, OpenAI's format); chat only.
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class StreamEvent:
    """A piece of the reply: answer text, reasoning and/or pieces of tool calls (`delta.
    tool_calls` as streamed, put together by bot/tools/calls.py); the last one carries usage."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class _RetryableError(Exception):
    """A failure before the first token that another try (or backend) may not have."""


def configured_urls(settings: LLMSettings) -> list[str]:
    """The servers named in the settings: `backends`, else `base_url` + `fallback_urls`."""
    if settings.backends:
        return list(settings.backends)
    return [settings.base_url, *settings.fallback_urls] if settings.base_url else []


def resolve_routing(settings: LLMSettings, backends: int) -> Routing:
    """`llm.routing`, with "auto" meaning least-busy for a pool (`backends`), else failover."""
    if settings.routing != "auto":
        return settings.routing
    return "least-busy" if settings.backends and backends > 1 else "failover"


class LLMClient:
    """Streams replies from a pool of backends: routed, failed over, pinned to cached slots.

    `known_slots` gives the slot count of servers we run ourselves (the managed llama-server);
    the others are asked (`discover()`). `affinity` off sends no `id_slot` (benchmarks compare).
    """

    def __init__(
        self,
        settings: LLMSettings,
        urls: list[str],
        api: Api,
        *,
        wait_ready: dict[str, Callable[[], Awaitable[None]]] | None = None,
        routing: Routing | None = None,
        known_slots: Mapping[str, int] | None = None,
        affinity: bool = True,
    ) -> None:
        if not urls:
            raise ValueError("LLMClient needs at least one base URL")
        self.settings = settings
        self.api: Api = api
        self.pool = BackendPool(
            urls,
            routing or resolve_routing(settings, len(urls)),
            default_slots=settings.concurrency or DEFAULT_SLOTS,
            affinity=affinity,
        )
        self._known_slots = {url.rstrip("/"): n for url, n in (known_slots or {}).items()}
        self._tokenize_ok: dict[str, bool] = {}
        # The servers' API (health, /props, /slots, /tokenize); its session carries the streams.
        self.http = ServerAPI(
            settings.api_key.get_secret_value(), timeout_s=settings.connect_timeout_s
        )
        self._probers: dict[int, asyncio.Task[None]] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._discovered = False  # capacity changes are logged once the start-up line is out
        # Per URL: awaited before each try, e.g. while the managed llama-server restarts.
        self._wait_ready = {url.rstrip("/"): fn for url, fn in (wait_ready or {}).items()}
        self.pool.on_capacity(self._log_capacity)
        for backend in self.pool.backends:
            _watch_backend(backend)

    @property
    def urls(self) -> list[str]:
        """Every backend's base URL, in configuration order."""
        return [b.url for b in self.pool.backends]

    @property
    def capacity(self) -> int:
        """Replies the healthy backends run at once (see `BackendPool.capacity`)."""
        return self.pool.capacity

    async def close(self) -> None:
        """Stop probing and watching the backends; close the session."""
        tasks = [*self._probers.values(), *self._watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probers.clear()
        self._watchers.clear()
        await self.http.close()

    # ------------------------------------------------------------------ slots

    async def discover(self) -> int:
        """Ask every backend how many replies it runs at once; log it and return the total.

        llama.cpp reports `total_slots` at /props; a server without it counts as
        `llm.concurrency` or DEFAULT_SLOTS. A set `llm.concurrency` is the total either way.
        """
        await asyncio.gather(*(self._read_slots(b) for b in self.pool.backends))
        total = self.settings.concurrency or self.pool.capacity
        log.info("%d replies at once (%s)", total, self.capacity_source())
        self._discovered = True
        return total

    async def _read_slots(self, backend: Backend) -> bool:
        """Set the backend's slots from /props (or the default); False when it is unreachable."""
        if backend.url in self._known_slots:
            slots = self._known_slots[backend.url]
            self.pool.set_slots(backend, slots, "managed llama-server -np", llama=True)
            return True
        default = self.settings.concurrency or DEFAULT_SLOTS
        try:
            props = await self.http.props(backend.url)
        except NoAnswer as exc:
            self._mark_failed(backend, str(exc))
            return False
        reported = props.get("total_slots")
        if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 1:
            self.pool.set_slots(backend, reported, "llama.cpp /props", llama=True)
            # Another client's requests would make our pinned ones wait: watch /slots for
            # them (unless the server says that endpoint is off).
            backend.watch_slots = props.get("endpoint_slots") is not False
            if backend.watch_slots:
                await self._look_at_slots(backend)
                self._watch_slots(backend)
        else:
            self.pool.set_slots(backend, default, _NO_SLOT_COUNT, llama=False)
        return True

    def capacity_source(self) -> str:
        """Where the number of replies at once comes from, for the log ("llama.cpp /props: 4")."""
        pool = self.pool
        if self.settings.concurrency:
            return "llm.concurrency"
        serving = [b for b in pool.backends if b.healthy] or pool.backends
        if pool.routing == "failover":
            first = pool.plan(None)[0]
            parts = [f"{first.source}: {first.slots}"]
            if len(pool.backends) > 1:
                parts.append(f"failover: {len(pool.backends) - 1} more on standby")
        else:
            counts: dict[str, list[str]] = {}
            for backend in serving:
                counts.setdefault(backend.source, []).append(str(backend.slots))
            parts = [f"{source}: {' + '.join(n)}" for source, n in counts.items()]
        down = [b.name for b in pool.backends if not b.healthy]
        if down and len(down) < len(pool.backends):
            parts.append("not answering: " + ", ".join(down))
        elif down:
            parts.append("no server answers yet")
        return "; ".join(parts)

    def _log_capacity(self, capacity: int) -> None:
        if self._discovered and not self.settings.concurrency:
            log.info("now %d replies at once (%s)", capacity, self.capacity_source())

    def status(self) -> dict[str, object]:
        """The pool as /healthz shows it: routing and, per backend, health and slots."""
        return {"routing": self.pool.routing, "backends": self.pool.status()}

    def _watch_slots(self, backend: Backend) -> None:
        task = self._watchers.get(backend.index)
        if task is None or task.done():
            self._watchers[backend.index] = asyncio.create_task(
                self._keep_watching_slots(backend), name=f"llm-slots-{backend.index}"
            )

    async def _keep_watching_slots(self, backend: Backend) -> None:
        while backend.watch_slots:
            await asyncio.sleep(_SLOTS_LOOK_BUSY_S if backend.in_flight else _SLOTS_LOOK_IDLE_S)
            if backend.healthy:
                await self._look_at_slots(backend)

    async def _look_at_slots(self, backend: Backend) -> None:
        """Read /slots: slots processing that we do not hold belong to another client."""
        asked_at = self.pool.now()
        try:
            slots = await self.http.slots(backend.url)
        except NoAnswer:
            return  # a failing server is the stream's and the prober's business
        if slots is None:
            backend.watch_slots = False  # --no-slots: our own count is all there is
            return
        processing = {
            s["id"] for s in slots if isinstance(s.get("id"), int) and s.get("is_processing")
        }
        if self.pool.slots_seen(backend, processing, asked_at):
            log.info(
                "another client is using LLM backend %s: its slots are not pinned for %.0fs "
                "(a pinned request would wait for a slot that client holds)",
                backend.name,
                SHARED_HOLD_S,
            )

    # ------------------------------------------------------------------ health

    def _mark_failed(self, backend: Backend, problem: str) -> None:
        if self.pool.failed(backend, problem):
            log.warning(
                "LLM backend %s is unhealthy (%s); re-probing it in the background",
                backend.name,
                problem,
            )
        task = self._probers.get(backend.index)
        if task is None or task.done():
            self._probers[backend.index] = asyncio.create_task(
                self._reprobe(backend), name=f"llm-probe-{backend.index}"
            )

    async def _reprobe(self, backend: Backend) -> None:
        """Probe an unhealthy backend with backoff until it answers, then count its slots again."""
        backoff = Backoff(max(self.settings.backoff_s, _PROBE_MIN_S), _PROBE_MAX_S)
        while not backend.healthy:
            await asyncio.sleep(backoff.next())
            if backend.healthy or not await self.http.healthy(backend.url):
                continue
            # A restarted server may have other slots.
            if await self._read_slots(backend) and self.pool.recovered(backend):
                log.info("LLM backend %s answers again (%d slots)", backend.name, backend.slots)

    # ------------------------------------------------------------------ streaming

    def payload(self, request: LLMRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body `stream()` posts for `request` (before a server's slot hint)."""
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
            if request.tools:
                body["tools"] = request.tools
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    async def stream(
        self, request: LLMRequest, *, affinity: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield the reply as it streams. Closing the iterator closes the connection.

        `affinity` (a channel) keeps the turns of one conversation on the llama.cpp slot that
        caches its prompt while that slot is free. Raises LLMUnavailable (nothing answered),
        LLMRequestRejected (4xx), LLMTimeout (no answer in llm.timeout_s) or LLMStreamBroken
        (the stream stopped after the first token).
        """
        path, body = self.payload(request)
        plan = self.pool.plan(affinity)
        problems: list[str] = []
        for position, backend in enumerate(plan):
            backoff = Backoff(self.settings.backoff_s, _MAX_BACKOFF_S)  # jittered: no herd
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    if self.pool.routing == "least-busy" and any(
                        b.healthy for b in plan[position + 1 :]
                    ):
                        break  # another healthy server is there: no time lost on retries
                    await asyncio.sleep(backoff.next())
                if backend.url in self._wait_ready:
                    await self._wait_ready[backend.url]()
                # A reply that lost its server goes ahead of the newcomers on the next one.
                lease = await self.pool.acquire(backend, affinity, first=bool(problems))
                if lease.affinity != "off":
                    metrics.LLM_SLOT_AFFINITY.labels(lease.affinity).inc()
                started = False
                try:
                    async for event in self._stream_one(lease, path, body):
                        if not started:
                            started = True
                            self.pool.answered(backend)
                        yield event
                    return
                except _RetryableError as exc:
                    self._mark_failed(backend, str(exc))
                    if started:
                        raise LLMStreamBroken(str(exc)) from None
                    problems.append(f"{backend.name}: {exc}")
                    log.warning(
                        "LLM backend %s failed (try %d): %s", backend.name, attempt + 1, exc
                    )
                except LLMTimeout:
                    self._mark_failed(backend, "timed out")
                    if started:
                        raise
                    problems.append(f"{backend.name}: no answer in {self.settings.timeout_s:g}s")
                    log.warning("LLM backend %s timed out", backend.name)
                    break  # a hung backend gets no second try: fail over at once
                finally:
                    self.pool.release(lease)
        raise LLMUnavailable("; ".join(problems))

    async def _stream_one(
        self, lease: Lease, path: str, body: dict[str, Any]
    ) -> AsyncIterator[StreamEvent]:
        url = lease.backend.url + path
        if lease.backend.llama:
            body = {**body, "cache_prompt": True}  # the default, said out loud
            if lease.slot is not None:
                body["id_slot"] = lease.slot
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout_s,
            sock_read=self.settings.timeout_s,  # silence longer than this is a hung backend
        )
        think = ThinkSplitter()
        decoder = SSEDecoder()
        finished = False
        try:
            async with self.http.session().post(url, json=body, timeout=timeout) as resp:
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
                    if chunk.timings:
                        _count_prompt_tokens(chunk.timings)
                    text, inline_reasoning = think.feed(chunk.text)
                    event = StreamEvent(
                        text=text,
                        reasoning=chunk.reasoning + inline_reasoning,
                        tool_calls=chunk.tool_calls,
                        finish_reason=chunk.finish_reason,
                        usage={**chunk.timings, **chunk.usage},
                    )
                    if (
                        event.text
                        or event.reasoning
                        or event.tool_calls
                        or event.finish_reason
                        or event.usage
                    ):
                        yield event
                if not finished:
                    # No [DONE] and no finish_reason: the server died or the connection dropped.
                    raise _RetryableError("the stream ended before the reply was finished")
            text, reasoning = think.flush()
            if text or reasoning:
                yield StreamEvent(text=text, reasoning=reasoning)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise LLMTimeout(
                f"no data from {lease.backend.name} in {self.settings.timeout_s:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            reason = describe_network_error(exc, self.settings.connect_timeout_s)
            raise _RetryableError(reason) from None

    async def warm(self, request: LLMRequest, *, affinity: str | None = None) -> bool:
        """Have llama-server process `request`'s prompt into the cache of the slot `affinity`'s
        next reply will use, generating (almost) nothing: that reply then pays only for the
        tokens after the common prefix. Only on an idle llama.cpp server (it must not slow or
        displace replies); True when the prompt was taken."""
        backend = self.pool.plan(affinity)[0]
        if not (backend.llama and backend.healthy and backend.in_flight == 0):
            return False
        path, body = self.payload(request)
        # llama.cpp samples one token even when asked for none; that is the whole cost.
        body = {**body, "stream": False, "max_tokens": 0, "n_predict": 0, "cache_prompt": True}
        body.pop("stream_options", None)
        lease = await self.pool.acquire(backend, affinity)
        if lease.slot is not None:
            body["id_slot"] = lease.slot
        try:
            answer = await self.http.post(
                backend.url, path, body, timeout_s=self.settings.timeout_s
            )
            return answer.ok
        except NoAnswer:
            return False  # the next reply finds out what is wrong, and says so
        finally:
            self.pool.release(lease)

    async def tokenize(self, text: str) -> int | None:
        """Count tokens with llama-server's /tokenize; None when no backend offers it."""
        url = self.pool.plan(None)[0].url
        if self._tokenize_ok.get(url) is False:
            return None
        try:
            tokens = await self.http.tokenize(url, text)
        except NoAnswer:
            return None
        self._tokenize_ok[url] = tokens is not None
        return None if tokens is None else len(tokens)


def _watch_backend(backend: Backend) -> None:
    """Export the backend's slots, our requests on it and its health as gauges."""
    name = backend.name
    metrics.LLM_BACKEND_SLOTS.labels(name).set_function(lambda: backend.slots)
    metrics.LLM_BACKEND_IN_FLIGHT.labels(name).set_function(lambda: backend.in_flight)
    metrics.LLM_BACKEND_HEALTHY.labels(name).set_function(lambda: float(backend.healthy))


def _count_prompt_tokens(timings: dict[str, Any]) -> None:
    """llama.cpp's timings: prompt tokens taken from the slot's cache vs processed anew."""
    for key, kind in (("cache_n", "cached"), ("prompt_n", "processed")):
        value = timings.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            metrics.LLM_PROMPT_TOKENS.labels(kind).inc(value)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        data = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return resp.reason or ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:300]
    return str(data)[:300]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 characters a token for English prose)."""
    return max(1, round(len(text) / 3.5)) if text else 0
