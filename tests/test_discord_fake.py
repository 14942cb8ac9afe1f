"""The fake Discord keeps Discord's rules: the tests of the adapter rely on these checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from discord.http import HTTPClient

from adapters.discord.compat import redirect_endpoints
from tests.fakes.clock import ManualClock
from tests.fakes.discord_api import (
    ALREADY_ACKNOWLEDGED,
    INTERACTION_DEADLINE_S,
    INVALID_FORM_BODY,
    MAX_MESSAGE_CHARS,
    UNKNOWN_INTERACTION,
    FakeDiscord,
)
from tests.fakes.discord_gateway import CLOSE_DISALLOWED_INTENTS, INTENT_MESSAGE_CONTENT

ASK = {"name": "ask", "description": "Ask", "options": [
    {"type": 3, "name": "prompt", "description": "Prompt", "required": True},
]}  # fmt: skip


@pytest.fixture
def discord_clock(clock: ManualClock) -> ManualClock:
    return clock  # the fake's time moves only when a test advances it


@pytest.fixture
async def http(discord: FakeDiscord) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bot {discord.token}"}
    async with aiohttp.ClientSession(base_url=discord.url, headers=headers) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.request(method, "/api/v10" + path, json=body) as response:
        return response.status, await response.json(content_type=None), response


async def test_late_interaction_callback_is_refused(
    discord: FakeDiscord, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    await call(http, "PUT", f"/applications/{discord.APPLICATION_ID}/commands", [ASK])
    on_time = await discord.interact("ask", {"prompt": "hi"})
    late = await discord.interact("ask", {"prompt": "hi"})
    status, body, _ = await call(
        http, "POST", f"/interactions/{on_time.id}/{on_time.token}/callback?with_response=1",
        {"type": 5},
    )  # fmt: skip
    assert status == 200
    assert body["interaction"]["response_message_loading"] is True
    clock.advance(INTERACTION_DEADLINE_S + 0.1)
    status, body, _ = await call(
        http, "POST", f"/interactions/{late.id}/{late.token}/callback", {"type": 5}
    )
    assert (status, body["code"]) == (404, UNKNOWN_INTERACTION)
    assert late.late_callback and late.callback_type is None
    status, body, _ = await call(
        http, "POST", f"/interactions/{on_time.id}/{on_time.token}/callback", {"type": 5}
    )
    assert (status, body["code"]) == (400, ALREADY_ACKNOWLEDGED)


async def test_unsynced_command_cannot_be_used(discord: FakeDiscord) -> None:
    with pytest.raises(LookupError, match="not registered"):
        await discord.interact("ask", {"prompt": "hi"})


async def test_429_has_discords_shape(discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    discord.rate_limit("GET", "/users/@me", retry_after=0.5)
    status, body, response = await call(http, "GET", "/users/@me")
    assert status == 429
    # Exactly this: discord.py reads no JSON body from any other Content-Type.
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Via"] and response.headers["Retry-After"] == "1"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert body == {"message": "You are being rate limited.", "retry_after": 0.5, "global": False}
    status, _, _ = await call(http, "GET", "/users/@me")
    assert status == 200


async def test_discord_py_waits_out_a_429_by_itself(discord: FakeDiscord) -> None:
    """Why streamed edits bypass discord.py's HTTP client: it sleeps and resends on its own."""
    discord.rate_limit("GET", "/users/@me", retry_after=0.05)
    restore_endpoints = redirect_endpoints(discord.api_url, discord.gateway_url)
    client = HTTPClient(asyncio.get_running_loop())
    try:
        me = await client.static_login(discord.token)
    finally:
        restore_endpoints()
        await client.close()
    assert me["id"] == str(discord.BOT.id)
    assert [c.status for c in discord.calls_to("GET", "/users/@me")] == [429, 200]


async def test_message_length_and_empty_messages_are_refused(
    discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    path = f"/channels/{discord.GENERAL_ID}/messages"
    status, body, _ = await call(http, "POST", path, {"content": "x" * (MAX_MESSAGE_CHARS + 1)})
    assert (status, body["code"]) == (400, INVALID_FORM_BODY)
    status, body, _ = await call(http, "POST", path, {"content": ""})
    assert status == 400
    status, body, _ = await call(http, "POST", path, {"content": "x" * MAX_MESSAGE_CHARS})
    assert status == 200


async def test_refused_privileged_intent_closes_with_4014() -> None:
    async with (
        FakeDiscord(grant_message_content=False) as discord,
        aiohttp.ClientSession() as session,
        session.ws_connect(discord.gateway_url + "?v=10&encoding=json") as ws,
    ):
        hello = json.loads((await ws.receive()).data)
        assert hello["op"] == 10
        identify = {"token": discord.token, "intents": INTENT_MESSAGE_CONTENT, "properties": {}}
        await ws.send_json({"op": 2, "d": identify})
        closed = await ws.receive()
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == CLOSE_DISALLOWED_INTENTS
