"""The LLM client: SSE streaming, reasoning, retries, failover, timeouts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from bot.config import LLMSettings
from bot.errors import LLMRequestRejected, LLMStreamBroken, LLMUnavailable
from bot.llm import Api, LLMClient, LLMRequest, StreamEvent
from bot.sse import SSEDecoder, ThinkSplitter, parse_chunk
from tests.fakes.llm_server import Behaviour, FakeLLMServer

FAST: dict[str, Any] = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5.0, "connect_timeout_s": 1.0}
DEAD_URL = "http://127.0.0.1:9"  # discard port: nothing listens


def client(urls: list[str], api: Api = "chat", **overrides: Any) -> LLMClient:
    return LLMClient(LLMSettings(**{**FAST, **overrides}), urls, api)


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


def test_sse_decoder_and_chunk_parser_tolerate_junk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_line(b": keep-alive\n") is None
    assert decoder.feed_line(b'data: {"choices": []}\n') is None
    assert decoder.feed_line(b"\n") == '{"choices": []}'
    for junk in ["", "null", "[1]", '{"choices": [null]}', '{"choices": [{"delta": 5}]}', "{"]:
        assert parse_chunk(junk).text == ""
    chunk = parse_chunk('{"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}')
    assert (chunk.text, chunk.reasoning) == ("", "hmm")


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
