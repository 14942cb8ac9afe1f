"""The LLM client: SSE streaming, reasoning, retries, failover, timeouts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.errors import LLMRequestRejected, LLMStreamBroken, LLMUnavailable
from bot.llm import Api, LLMClient, LLMRequest, StreamEvent
from bot.llm_pool import Routing
from bot.llm_settings import LLMSettings
from bot.sse import SSEDecoder, ThinkSplitter, parse_chunk
from bot.tools.calls import ToolCall, assemble
from tests.fakes.llm_server import Behaviour, FakeLLMServer, FakeToolCall

FAST: dict[str, Any] = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5.0, "connect_timeout_s": 1.0}
DEAD_URL = "http://127.0.0.1:9"  # discard port: nothing listens


def client(
    urls: list[str], api: Api = "chat", routing: Routing | None = None, **overrides: Any
) -> LLMClient:
    return LLMClient(LLMSettings(**{**FAST, **overrides}), urls, api, routing=routing)


async def collect(llm: LLMClient, request: LLMRequest | None = None) -> list[StreamEvent]:
    request = request or LLMRequest(messages=[{"role": "user", "content": "hi"}])
    try:
        return [event async for event in llm.stream(request)]
    finally:
        await llm.close()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events)


@pytest.mark.parametrize("api", ["chat", "completion"])
async def test_streams_text_with_pings_usage_and_done(fake_llm: FakeLLMServer, api: Api) -> None:
    fake_llm.behaviour = Behaviour(reply="Paris is the capital of France.", ping=True)
    events = await collect(client([fake_llm.url], api))
    assert text_of(events) == "Paris is the capital of France."
    assert len([e for e in events if e.text]) == 6  # one event per streamed word
    assert events[-1].usage.get("completion_tokens") == 6  # the "choices": [] usage chunk
    assert ("messages" in fake_llm.requests[0]) == (api == "chat")


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "The weather", "parameters": {"type": "object"}},
}


@pytest.mark.parametrize("api", ["chat", "completion"])
async def test_tool_calls_stream_through_and_only_the_chat_api_offers_tools(
    fake_llm: FakeLLMServer, api: Api
) -> None:
    fake_llm.behaviour = Behaviour(
        tool_calls=lambda body: [FakeToolCall("weather", '{"city": "Paris"}')]
    )
    request = LLMRequest(messages=[{"role": "user", "content": "hi"}], prompt="hi")
    request.tools = [WEATHER_TOOL]
    events = await collect(client([fake_llm.url], api), request)
    (body,) = fake_llm.requests
    if api == "completion":  # a base model never gets tools, and never streams calls
        assert "tools" not in body and text_of(events) == "Hello from the fake model."
        return
    assert body["tools"] == [WEATHER_TOOL]
    pieces = [piece for event in events for piece in event.tool_calls]
    assert assemble([[piece] for piece in pieces]) == [
        ToolCall(fake_llm.call_ids[0], "weather", '{"city": "Paris"}')
    ]
    assert len(pieces) > 2  # the arguments came in pieces
    assert text_of(events) == "" and events[-2].finish_reason == "tool_calls"


def test_sse_decoder_and_chunk_parser_tolerate_junk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_line(b": keep-alive\n") is None
    assert decoder.feed_line(b'data: {"choices": []}\n') is None
    assert decoder.feed_line(b"\n") == '{"choices": []}'
    for junk in ["", "null", "[1]", '{"choices": [null]}', '{"choices": [{"delta": 5}]}', "{"]:
        assert parse_chunk(junk).text == ""
    chunk = parse_chunk('{"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}')
    assert (chunk.text, chunk.reasoning) == ("", "hmm")
    calls = parse_chunk('{"choices":[{"delta":{"tool_calls":[{"index":0},7,null]}}]}')
    assert calls.tool_calls == [{"index": 0}]  # pieces that are no object are left out
    assert parse_chunk('{"choices":[{"delta":{"tool_calls":"x"}}]}').tool_calls == []


def test_think_tags_are_split_out_across_chunk_boundaries() -> None:
    splitter = ThinkSplitter()
    pieces = ["<thi", "nk>let me ", "think</th", "ink>The answer", " is 4."]
    answer, reasoning = zip(*(splitter.feed(p) for p in pieces), strict=True)
    assert "".join(answer) == "The answer is 4."
    assert "".join(reasoning) == "let me think"


async def test_inline_think_block_is_reported_as_reasoning(fake_llm: FakeLLMServer) -> None:
    fake_llm.behaviour = Behaviour(reply="<think>secret plan</think>Hello!")
    events = await collect(client([fake_llm.url]))
    assert text_of(events) == "Hello!"
    assert "".join(e.reasoning for e in events) == "secret plan"


async def test_5xx_before_first_token_fails_over_to_the_next_backend() -> None:
    async with FakeLLMServer(Behaviour(status=503)) as bad, FakeLLMServer() as good:
        good.behaviour = Behaviour(reply="from the second backend")
        events = await collect(client([bad.url, good.url]))
        assert text_of(events) == "from the second backend"
        assert len(bad.requests) == 2  # one try plus one retry, then failover


async def test_connection_refused_fails_over(fake_llm: FakeLLMServer) -> None:
    events = await collect(client([DEAD_URL, fake_llm.url]))
    assert text_of(events) == "Hello from the fake model."


async def test_all_backends_down_raises_unavailable_naming_each() -> None:
    with pytest.raises(LLMUnavailable) as caught:
        await collect(client([DEAD_URL, "http://127.0.0.1:7"]))
    assert "127.0.0.1:9" in str(caught.value) and "127.0.0.1:7" in str(caught.value)


async def test_4xx_is_rejected_without_retry(fake_llm: FakeLLMServer) -> None:
    fake_llm.behaviour = Behaviour(status=400)
    with pytest.raises(LLMRequestRejected, match="fake failure"):
        await collect(client([fake_llm.url]))
    assert len(fake_llm.requests) == 1


async def test_stream_killed_mid_reply_raises_broken_after_the_text(
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.behaviour = Behaviour(reply="one two three four five", die_after_chunks=2)
    got: list[str] = []
    llm = client([fake_llm.url])
    with pytest.raises(LLMStreamBroken):
        async for event in llm.stream(LLMRequest(messages=[])):
            got.append(event.text)
    await llm.close()
    assert "".join(got) == "one two "
    assert len(fake_llm.requests) == 1  # never retried once tokens were shown


async def test_hung_backend_times_out_and_fails_over(fake_llm: FakeLLMServer) -> None:
    async with FakeLLMServer(Behaviour(hang=True)) as hung:
        events = await collect(client([hung.url, fake_llm.url], timeout_s=0.5))
        assert text_of(events) == "Hello from the fake model."
    async with FakeLLMServer(Behaviour(hang=True)) as hung:
        with pytest.raises(LLMUnavailable, match=r"no answer in 0\.5s"):
            await collect(client([hung.url], timeout_s=0.5))


async def test_cancelling_closes_the_connection(fake_llm: FakeLLMServer) -> None:
    fake_llm.behaviour = Behaviour(reply="word " * 200, delay_s=0.02)
    llm = client([fake_llm.url])
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.stream(LLMRequest(messages=[])):
            seen.set()

    task = asyncio.create_task(consume())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await llm.close()
    await _until(lambda: fake_llm.cancelled == 1)
    assert fake_llm.in_flight == 0


async def test_tokenize_falls_back_when_unsupported(fake_llm: FakeLLMServer) -> None:
    llm = client([fake_llm.url])
    assert await llm.tokenize("three little words") == 3
    fake_llm.behaviour = Behaviour(tokenize=False)
    other = client([fake_llm.url])
    assert await other.tokenize("three little words") is None
    await llm.close()
    await other.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- slots, routing, affinity --------------------------------------------


@pytest.mark.parametrize(
    ("props", "slots", "llama"),
    [
        ({"total_slots": 3}, 3, True),
        ({"total_slots": 0}, 4, False),  # nonsense: the default, and no llama.cpp extras
        ({"total_slots": "many"}, 4, False),
        ({"total_slots": True}, 4, False),
        ([3], 4, False),
        ("not json", 4, False),
        (None, 4, False),  # 404: vLLM, Ollama, OpenAI
    ],
)
async def test_props_total_slots_is_read_and_junk_is_not_trusted(
    props: object, slots: int, llama: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if props is None:
            return web.Response(status=404)
        if isinstance(props, str):
            return web.Response(text=props)
        return web.json_response(props)

    app = web.Application()
    app.router.add_get("/props", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    llm = client([f"http://127.0.0.1:{port}"])
    try:
        assert await llm.discover() == slots
        backend = llm.pool.backends[0]
        assert (backend.slots, backend.llama, backend.healthy) == (slots, llama, True)
    finally:
        await llm.close()
        await runner.cleanup()


async def test_an_unreachable_server_at_start_is_counted_once_it_answers() -> None:
    async with FakeLLMServer(slots=2) as up:
        llm = client([DEAD_URL, up.url], routing="least-busy")
        try:
            assert await llm.discover() == 2
            assert "not answering: http://127.0.0.1:9" in llm.capacity_source()
            assert not llm.pool.backends[0].healthy
        finally:
            await llm.close()


async def test_least_busy_moves_to_another_server_at_once_when_one_fails() -> None:
    async with (
        FakeLLMServer(Behaviour(status=503), slots=2) as bad,
        FakeLLMServer(Behaviour(reply="from the good one"), slots=2) as good,
    ):
        llm = client([bad.url, good.url], routing="least-busy")
        await llm.discover()
        try:
            for _ in range(3):
                events = [e async for e in llm.stream(LLMRequest(messages=[]), affinity="c")]
                assert text_of(events) == "from the good one"
        finally:
            await llm.close()
        assert len(bad.requests) == 1  # no retries while a healthy server is there
        assert len(good.requests) == 3


async def test_each_channel_is_pinned_to_its_own_free_slot(fake_llm: FakeLLMServer) -> None:
    fake_llm.slots = 3
    llm = client([fake_llm.url])
    await llm.discover()
    try:
        for channel in ["a", "b", "c", "a", "b", "c"]:
            async for _ in llm.stream(LLMRequest(messages=[]), affinity=channel):
                pass
    finally:
        await llm.close()
    asked = [r["id_slot"] for r in fake_llm.requests]
    assert asked[:3] == asked[3:] and sorted(asked[:3]) == [0, 1, 2]
    assert llm.pool.stats == {"hit": 3, "moved": 0, "new": 3, "shared": 0, "off": 0}


async def test_the_real_llama_server_reports_its_slots_and_honours_id_slot(
    llama_server_url: str,
) -> None:
    llm = client([llama_server_url], api="completion", timeout_s=60.0)
    try:
        assert await llm.discover() == 2  # the fixture's -np 2, from /props total_slots
        backend = llm.pool.backends[0]
        assert backend.llama and backend.source == "llama.cpp /props"
        history = "Q: What is the capital of France?\nA: Paris\n" * 12
        request = LLMRequest(prompt=history + "Q: And of Italy?\nA:", max_tokens=24, stop=["\n"])
        pinned: set[int] = set()
        usage: dict[str, object] = {}
        async with aiohttp.ClientSession() as session:
            async for event in llm.stream(request, affinity="chat"):
                usage |= event.usage
                if not pinned:
                    pinned = set(backend.busy)
                    async with session.get(llama_server_url + "/slots") as resp:
                        processing = {s["id"] for s in await resp.json() if s["is_processing"]}
                    assert processing == pinned  # the slot we asked for is the one working
        request.prompt = history + "Q: And of Spain?\nA:"
        again: dict[str, object] = {}
        async for event in llm.stream(request, affinity="chat"):
            again |= event.usage
        assert llm.pool.stats["hit"] == 1
        # The second turn found the shared history in its slot's cache.
        assert int(str(again["cache_n"])) >= int(str(usage["prompt_n"])) - 12
    finally:
        await llm.close()


async def test_another_client_on_the_server_turns_pinning_off_so_nothing_waits(
    fake_llm: FakeLLMServer,
) -> None:
    release = asyncio.Event()

    async def hold(body: dict[str, object]) -> None:
        if body.get("max_tokens") == 99:  # the other client's long reply
            await release.wait()

    fake_llm.slots = 2
    fake_llm.behaviour = Behaviour(reply="from the server", pause=hold)
    other = client([fake_llm.url])  # say, a second bot process on the same server
    ours = client([fake_llm.url])
    try:
        await other.discover()
        holding = asyncio.create_task(
            collect_text(other, LLMRequest(messages=[], max_tokens=99), "x")
        )
        await _until(lambda: fake_llm.in_flight == 1)
        taken = fake_llm.slot_uses[0].slot
        await ours.discover()  # its /slots shows a slot we do not hold
        assert ours.pool.backends[0].shared_until > 0
        for channel in ("a", "b"):
            text = await asyncio.wait_for(collect_text(ours, LLMRequest(messages=[]), channel), 5)
            assert text == "from the server"
        assert [use.asked for use in fake_llm.slot_uses[1:]] == [None, None]
        assert all(use.slot != taken and not use.waited for use in fake_llm.slot_uses[1:])
        assert ours.pool.stats["shared"] == 2
        release.set()
        await holding
    finally:
        await other.close()
        await ours.close()


async def collect_text(llm: LLMClient, request: LLMRequest, affinity: str) -> str:
    return "".join([e.text async for e in llm.stream(request, affinity=affinity)])
