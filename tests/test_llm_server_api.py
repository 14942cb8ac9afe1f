"""The LLM servers' HTTP API besides the stream: what each page gives, the key on every request,
and failures told without the URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.llm_server_api import NoAnswer, ServerAPI
from tests.conftest import free_port
from tests.fakes.llm_server import Behaviour, FakeLLMServer


@pytest.fixture
async def api() -> AsyncIterator[ServerAPI]:
    client = ServerAPI(timeout_s=2.0)
    yield client
    await client.close()


async def test_a_llama_server_reports_its_slots_vision_and_tokens(api: ServerAPI) -> None:
    async with FakeLLMServer(slots=2, vision=True) as llama:
        assert await api.healthy(llama.url)
        props = await api.props(llama.url + "/")  # a trailing slash is fine
        assert props["total_slots"] == 2 and props["modalities"]["vision"] is True
        assert await api.slots(llama.url) == [
            {"id": 0, "is_processing": False},
            {"id": 1, "is_processing": False},
        ]
        assert await api.tokenize(llama.url, "three little words") == [0, 1, 2]
        models = await api.get(llama.url, "/v1/models")
        assert models.ok and models.data["data"][0]["id"] == "fake"


async def test_a_server_without_llama_pages_has_none_of_them(api: ServerAPI) -> None:
    async with FakeLLMServer(Behaviour(tokenize=False)) as other:  # vLLM-like: no /props
        assert await api.healthy(other.url)
        assert await api.props(other.url) == {}
        assert await api.slots(other.url) is None
        assert await api.tokenize(other.url, "a few words") is None


async def test_an_unreachable_server_is_no_answer_without_its_url(api: ServerAPI) -> None:
    dead = f"http://bob:pw-in-the-url-0123@127.0.0.1:{free_port()}"
    with pytest.raises(NoAnswer) as refused:
        await api.props(dead)
    assert str(refused.value) == "cannot connect (Connection refused)"
    assert not await api.healthy(dead)


async def test_a_silent_server_is_no_answer_after_the_timeout() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slots", hang)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    api = ServerAPI(timeout_s=0.2)
    try:
        with pytest.raises(NoAnswer, match=r"^no answer within 0\.2 s$"):
            await api.slots(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        release.set()
        await api.close()
        await runner.cleanup()


async def test_every_request_carries_the_key_over_one_session() -> None:
    seen: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", "")))
        return web.json_response({"tokens": [1]} if request.path == "/tokenize" else {})

    app = web.Application()
    for path in ("/health", "/props", "/slots"):
        app.router.add_get(path, record)
    app.router.add_post("/tokenize", record)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    api = ServerAPI("sk-server-key")
    try:
        session = api.session()
        await api.healthy(url)
        await api.props(url)
        await api.slots(url)
        await api.tokenize(url, "hi")
        assert api.session() is session
    finally:
        await api.close()
        await runner.cleanup()
    assert seen == [
        (path, "Bearer sk-server-key") for path in ("/health", "/props", "/slots", "/tokenize")
    ]
