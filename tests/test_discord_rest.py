"""DiscordRest: a streamed reply's REST calls, where a 429 is the streamer's to handle."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.discord.rest import DiscordRest, InteractionTokenExpired
from bot.errors import DeliveryError, RetryAfter
from tests.fakes.discord_api import (
    INTERACTION_TOKEN_LIFETIME_S,
    FakeDiscord,
)
from tests.fakes.discord_world import FakeInteraction, ManualClock

ASK = {"name": "ask", "description": "Ask"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(clock=clock) as server:
        yield server


@pytest.fixture
async def rest(fake: FakeDiscord) -> AsyncIterator[DiscordRest]:
    client = DiscordRest(fake.api_url, fake.token, "DiscordBot (test, 1)")
    await client.open()
    yield client
    await client.close()


async def deferred(fake: FakeDiscord) -> FakeInteraction:
    """An /ask interaction acknowledged with "thinking…" (discord.py does this in the adapter)."""
    fake.commands[None] = [{**ASK, "id": "1", "type": 1}]
    interaction = await fake.interact("ask")
    url = f"{fake.api_url}/interactions/{interaction.id}/{interaction.token}/callback"
    async with aiohttp.ClientSession() as session, session.post(url, json={"type": 5}) as answer:
        assert answer.status == 204
    return interaction


async def test_channel_message_lifecycle(fake: FakeDiscord, rest: DiscordRest) -> None:
    question = await fake.post_message(fake.ALICE, "hi", mention_bot=True)
    message_id = await rest.create_message(fake.GENERAL_ID, "Hel", reply_to=question.id)
    await rest.edit_message(fake.GENERAL_ID, message_id, "Hello")
    stored = fake.messages[message_id]
    assert stored.writes == ["Hel", "Hello"] and stored.reference == question.id
    (post,) = fake.calls_to("POST", r"/channels/\d+/messages")
    assert post.body["allowed_mentions"]["parse"] == []  # the model's text pings nobody
    await rest.delete_message(fake.GENERAL_ID, message_id)
    assert stored.deleted


async def test_429_raises_retry_after_without_resending(
    fake: FakeDiscord, rest: DiscordRest
) -> None:
    message_id = await rest.create_message(fake.GENERAL_ID, "Hel", reply_to=None)
    fake.rate_limit("PATCH", r"/channels/\d+/messages/\d+", retry_after=0.75)
    with pytest.raises(RetryAfter) as caught:
        await rest.edit_message(fake.GENERAL_ID, message_id, "Hello")
    assert caught.value.retry_after == 0.75 and not caught.value.is_global
    assert len(fake.calls_to("PATCH", r"/channels/\d+/messages/\d+")) == 1
    assert fake.messages[message_id].content == "Hel"


async def test_global_429_is_marked_global(fake: FakeDiscord, rest: DiscordRest) -> None:
    fake.rate_limit("POST", r"/channels/\d+/messages", retry_after=2.0, is_global=True)
    with pytest.raises(RetryAfter) as caught:
        await rest.create_message(fake.GENERAL_ID, "Hi", reply_to=None)
    assert caught.value.is_global and caught.value.retry_after == 2.0


async def test_server_errors_and_lost_connections_are_network_failures(
    fake: FakeDiscord, rest: DiscordRest
) -> None:
    """OSErrors: the reply streamer backs off and tries again."""
    fake.refuse("POST", r"/channels/\d+/messages", status=502, code=0, message="Bad Gateway")
    with pytest.raises(ConnectionError, match="502"):
        await rest.create_message(fake.GENERAL_ID, "Hi", reply_to=None)
    unreachable = DiscordRest("http://127.0.0.1:1/api/v10", fake.token, "DiscordBot (test, 1)")
    await unreachable.open()
    try:
        with pytest.raises(ConnectionError):
            await unreachable.create_message(fake.GENERAL_ID, "Hi", reply_to=None)
    finally:
        await unreachable.close()


async def test_refusals_are_delivery_errors(fake: FakeDiscord, rest: DiscordRest) -> None:
    with pytest.raises(DeliveryError, match="Unknown Message"):
        await rest.edit_message(fake.GENERAL_ID, 42, "Hello")
    fake.refuse("POST", r"/channels/\d+/messages")
    with pytest.raises(DeliveryError, match="403 Missing Permissions"):
        await rest.create_message(fake.GENERAL_ID, "Hi", reply_to=None)


async def test_interaction_response_and_followups(fake: FakeDiscord, rest: DiscordRest) -> None:
    interaction = await deferred(fake)
    app = fake.APPLICATION_ID
    original = await rest.edit_original(app, interaction.token, "part one")
    followup = await rest.create_followup(app, interaction.token, "part")
    await rest.edit_followup(app, interaction.token, followup, "part two")
    assert original == interaction.original_id
    assert [m.content for m in fake.reply_messages(interaction)] == ["part one", "part two"]
    await rest.delete_followup(app, interaction.token, followup)
    assert [m.content for m in fake.reply_messages(interaction)] == ["part one"]


async def test_expired_interaction_token(
    fake: FakeDiscord, rest: DiscordRest, clock: ManualClock
) -> None:
    interaction = await deferred(fake)
    clock.advance(INTERACTION_TOKEN_LIFETIME_S + 1)
    with pytest.raises(InteractionTokenExpired):
        await rest.edit_original(fake.APPLICATION_ID, interaction.token, "too late")
