"""A loopback stand-in for an OpenAI-compatible server (llama.cpp's), for error paths and speed.

It speaks the real wire format: SSE `data:` chunks, `:` keep-alive pings, the final usage chunk with
`"choices": []`, `data: [DONE]`; errors as JSON bodies; /health, /tokenize, /v1/models; with
`slots` set, llama.cpp's /props (`total_slots`), /slots and `id_slot` scheduling. Tool calls
stream the way llama-server (`--jinja`) streams them: `delta.tool_calls` with the call's id and
name first, its arguments in pieces after, then `finish_reason: "tool_calls"`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import ClientConnectionResetError, web

ReplyFn = Callable[[dict[str, Any]], str]


def last_user_text(body: dict[str, Any]) -> str:
    """The newest user message of a chat or raw-completion request (its text parts)."""
    if body.get("messages"):
        users = [m["content"] for m in body["messages"] if m.get("role") == "user"]
        if not users:
            return ""
        if isinstance(users[-1], list):  # content parts: text and images
            return " ".join(p["text"] for p in users[-1] if p.get("type") == "text")
        return str(users[-1])
    found = re.findall(r"^User: (.*)$", body.get("prompt", ""), flags=re.M)
    return found[-1] if found else ""


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `tool` messages of a chat request (the results of the model's calls), in order."""
    return [m for m in body.get("messages", ()) if m.get("role") == "tool"]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `tool` messages of the reply being written: those after the newest user message
    (earlier turns' results come with the history)."""
    messages = body.get("messages", [])
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    return tool_messages({"messages": messages[users[-1] + 1 :] if users else messages})


def offered_tools(body: dict[str, Any]) -> list[str]:
    """The names of the functions a request offers the model."""
    return [tool["function"]["name"] for tool in body.get("tools", ())]


@dataclass(frozen=True)
class FakeToolCall:
    """A call the fake model makes: a function's name and its JSON arguments (sent in pieces)."""

    name: str
    arguments: str = "{}"


ToolCallsFn = Callable[[dict[str, Any]], Sequence[FakeToolCall]]
ARGUMENT_PIECE_CHARS = 5  # llama-server streams a call's arguments a few characters at a time


@dataclass
class Behaviour:
    """How the fake answers the next requests; tests change it between turns."""

    reply: str | ReplyFn = "Hello from the fake model."
    status: int = 200  # non-200: answer with this status and an error body, no stream
    die_after_chunks: int | None = None  # drop the connection after this many content chunks
    hang: bool = False  # accept, then never send a byte
    delay_s: float = 0.0  # between chunks
    first_delay_s: float = 0.0  # before the first chunk
    ping: bool = True  # send a ":" keep-alive line first
    tokenize: bool = True  # serve /tokenize
    words_per_chunk: int = 1
    # Raw bytes written into the stream after this many content chunks, e.g. an event nobody
    # can parse: (chunks, bytes).
    raw_after: tuple[int, bytes] | None = None
    # Awaited after the first content chunk, with the request body: a test holds chosen
    # streams open (e.g. until another chat has been answered).
    pause: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    endless: bool = False  # repeat the reply's words for ever: no finish_reason, no [DONE]
    reasoning_only: bool = False  # every chunk as `reasoning_content` (chat API), no content
    # Called as each content chunk goes out, with the request body, the chunk's index and the
    # number of chunks: a benchmark notes when each reply's first and last tokens left.
    on_chunk: Callable[[dict[str, Any], int, int], None] | None = None
    # Given the request body, the calls to stream instead of a reply (none: the reply), and
    # the text streamed before them (a model saying what it is about to do).
    tool_calls: ToolCallsFn | None = None
    before_calls: str = ""
    # Called once a response of tool calls has gone out whole (a benchmark times the round).
    on_calls_sent: Callable[[dict[str, Any]], None] | None = None


@dataclass
class SlotUse:
    """One request as llama-server's scheduler saw it: the id_slot asked for, the slot used."""

    asked: int | None  # the request's id_slot (None: not sent)
    slot: int
    waited: bool  # the slot (or every slot) was busy: the request waited for it


@dataclass
class FakeLLMServer:
    """`async with FakeLLMServer() as llm:` then point `llm.base_url` at `llm.url`."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0
    # /props `modalities.vision`, as llama-server reports it when started with --mmproj.
    vision: bool = False
    # llama.cpp's slots: /props reports total_slots, /slots their state, and a request waits for
    # its id_slot (or any slot) to be free, as llama-server defers it. None: a server without
    # /props (vLLM, Ollama): no slots, every request runs at once.
    slots: int | None = None
    slot_uses: list[SlotUse] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)  # the ids of the tool calls it made
    port: int = 0  # 0: any free port; set it to start a server again where one was stopped

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.url = ""
        self._busy: set[int] = set()
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._call_numbers = itertools.count(1)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_get("/slots", self._slots)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop serving, as a killed server would: open streams break, connections are refused."""
        if self._runner is None:
            return
        self._closing.set()  # releases hung handlers
        await self._runner.cleanup()
        self._runner = None

    async def _props(self, request: web.Request) -> web.Response:
        if self.slots is None and not self.vision:
            return web.json_response({"error": {"message": "File Not Found"}}, status=404)
        props: dict[str, Any] = {
            "default_generation_settings": {"n_ctx": 1024},
            "modalities": {"vision": self.vision, "audio": False},
        }
        if self.slots is not None:
            props["total_slots"] = self.slots
        return web.json_response(props)

    async def _slots(self, request: web.Request) -> web.Response:
        if self.slots is None:
            return web.json_response({"error": {"message": "File Not Found"}}, status=404)
        return web.json_response(
            [{"id": i, "is_processing": i in self._busy} for i in range(self.slots)]
        )

    async def _take_slot(self, asked: int | None) -> int:
        """Like llama-server: the asked slot when free, else any free one; wait while none is."""
        assert self.slots is not None
        waited = False
        while True:
            if asked is not None and 0 <= asked < self.slots:
                free = [asked] if asked not in self._busy else []
            else:
                free = [i for i in range(self.slots) if i not in self._busy]
            if free:
                break
            waited = True
            freed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(freed)
            await freed
        self._busy.add(free[0])
        self.slot_uses.append(SlotUse(asked, free[0], waited))
        return free[0]

    def _free_slot(self, slot: int) -> None:
        self._busy.discard(slot)
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:  # each looks again (the one it wants may still be busy)
            if not waiter.done():
                waiter.set_result(None)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.behaviour.tokenize:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        body = await request.json()
        return web.json_response({"tokens": list(range(len(body["content"].split())))})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        b = self.behaviour
        if b.status != 200:
            return web.json_response(
                {"error": {"code": b.status, "message": "fake failure", "type": "server_error"}},
                status=b.status,
            )
        if b.hang:
            await self._closing.wait()
            return web.Response(status=503)
        chat = "messages" in body
        calls = b.tool_calls(body) if chat and b.tool_calls is not None else ()
        reply = "" if calls else b.reply(body) if callable(b.reply) else b.reply
        slot = None
        if self.slots is not None:
            asked = body.get("id_slot")
            slot = await self._take_slot(asked if isinstance(asked, int) else None)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            if b.ping:
                await resp.write(b": ping\n\n")
            if chat:
                await _send(resp, _chat_chunk({"role": "assistant", "content": None}))
            await asyncio.sleep(b.first_delay_s)
            if calls:
                if b.before_calls:
                    await _send(resp, _chat_chunk({"content": b.before_calls}))
                await self._stream_calls(resp, calls)
                if b.on_calls_sent is not None:
                    b.on_calls_sent(body)
                return resp
            words = re.findall(r"\S+\s*|\s+", reply)
            pieces = [
                "".join(words[i : i + b.words_per_chunk])
                for i in range(0, len(words), b.words_per_chunk)
            ]
            sent: Iterable[str] = _forever(pieces) if b.endless else pieces
            for index, piece in enumerate(sent):
                if b.raw_after is not None and index == b.raw_after[0]:
                    await resp.write(b.raw_after[1])
                if b.die_after_chunks is not None and index >= b.die_after_chunks:
                    assert request.transport is not None
                    request.transport.abort()  # like a killed server: no end of stream
                    return resp
                if b.on_chunk is not None:
                    b.on_chunk(body, index, len(pieces))
                key = "reasoning_content" if b.reasoning_only else "content"
                chunk = _chat_chunk({key: piece}) if chat else _text_chunk(piece)
                await _send(resp, chunk)
                if index == 0 and b.pause is not None:
                    await b.pause(body)
                if b.delay_s:
                    await asyncio.sleep(b.delay_s)
            final = _chat_chunk({}, finish="stop") if chat else _text_chunk("", finish="stop")
            final["timings"] = {"predicted_n": len(pieces)}
            await _send(resp, final)
            await _send(resp, {"choices": [], "usage": {"completion_tokens": len(pieces)}})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError, ClientConnectionResetError):
            self.cancelled += 1  # the client closed the connection: a cancelled request
            if not isinstance(sys.exc_info()[1], asyncio.CancelledError):
                return resp
            raise
        finally:
            self.in_flight -= 1
            if slot is not None:
                self._free_slot(slot)
        return resp

    async def _stream_calls(self, resp: web.StreamResponse, calls: Sequence[FakeToolCall]) -> None:
        """The calls as llama-server streams them, then the end of the response."""
        for index, call in enumerate(calls):
            call_id = f"call_fake{next(self._call_numbers):04d}"
            self.call_ids.append(call_id)
            head = {"index": index, "id": call_id, "type": "function"}
            head["function"] = {"name": call.name, "arguments": ""}
            await _send(resp, _chat_chunk({"tool_calls": [head]}))
            args = call.arguments
            for start in range(0, len(args), ARGUMENT_PIECE_CHARS):
                piece = args[start : start + ARGUMENT_PIECE_CHARS]
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                await _send(resp, _chat_chunk(delta))
        await _send(resp, _chat_chunk({}, finish="tool_calls"))
        await _send(resp, {"choices": [], "usage": {"completion_tokens": len(calls)}})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()


def _forever(pieces: list[str]) -> Iterator[str]:
    while True:
        yield from pieces or ["more "]


async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
