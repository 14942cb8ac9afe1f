"""DiscordRest: a streamed reply's REST calls, where a 429 is the streamer's to handle."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.discord.rest import DiscordRest, InteractionTokenExpired
from bot.errors import DeliveryError, RetryAfter
from tests.fakes.clock import ManualClock
from tests.fakes.discord_api import (
    INTERACTION_TOKEN_LIFETIME_S,
    FakeDiscord,
)
from tests.fakes.discord_world import FakeInteraction

ASK = {"name": "ask", "description": "Ask"}


@pytest.fixture
def discord_clock(clock: ManualClock) -> ManualClock:
    return clock  # the fake's time moves only when a test advances it


@pytest.fixture
async def rest(discord: FakeDiscord) -> AsyncIterator[DiscordRest]:
    client = DiscordRest(discord.api_url, discord.token, "DiscordBot (test, 1)")
    await client.open()
    yield client
    await client.close()


async def deferred(discord: FakeDiscord) -> FakeInteraction:
    """An /ask interaction acknowledged with "thinking…" (discord.py does this in the adapter)."""
    discord.commands[None] = [{**ASK, "id": "1", "type": 1}]
    interaction = await discord.interact("ask")
    url = f"{discord.api_url}/interactions/{interaction.id}/{interaction.token}/callback"
    async with aiohttp.ClientSession() as session, session.post(url, json={"type": 5}) as answer:
        assert answer.status == 204
    return interaction


async def test_channel_message_lifecycle(discord: FakeDiscord, rest: DiscordRest) -> None:
    question = await discord.post_message(discord.ALICE, "hi", mention_bot=True)
    message_id = await rest.create_message(discord.GENERAL_ID, "Hel", reply_to=question.id)
    await rest.edit_message(discord.GENERAL_ID, message_id, "Hello")
    stored = discord.messages[message_id]
    assert stored.writes == ["Hel", "Hello"] and stored.reference == question.id
    (post,) = discord.calls_to("POST", r"/channels/\d+/messages")
    assert post.body["allowed_mentions"]["parse"] == []  # the model's text pings nobody
    await rest.delete_message(discord.GENERAL_ID, message_id)
    assert stored.deleted


async def test_429_raises_retry_after_without_resending(
    discord: FakeDiscord, rest: DiscordRest
) -> None:
    message_id = await rest.create_message(discord.GENERAL_ID, "Hel", reply_to=None)
    discord.rate_limit("PATCH", r"/channels/\d+/messages/\d+", retry_after=0.75)
    with pytest.raises(RetryAfter) as caught:
        await rest.edit_message(discord.GENERAL_ID, message_id, "Hello")
    assert caught.value.retry_after == 0.75 and not caught.value.is_global
    assert len(discord.calls_to("PATCH", r"/channels/\d+/messages/\d+")) == 1
    assert discord.messages[message_id].content == "Hel"


async def test_global_429_is_marked_global(discord: FakeDiscord, rest: DiscordRest) -> None:
    discord.rate_limit("POST", r"/channels/\d+/messages", retry_after=2.0, is_global=True)
    with pytest.raises(RetryAfter) as caught:
        await rest.create_message(discord.GENERAL_ID, "Hi", reply_to=None)
    assert caught.value.is_global and caught.value.retry_after == 2.0


async def test_server_errors_and_lost_connections_are_network_failures(
    discord: FakeDiscord, rest: DiscordRest
) -> None:
    """OSErrors: the reply streamer backs off and tries again."""
    discord.refuse("POST", r"/channels/\d+/messages", status=502, code=0, message="Bad Gateway")
    with pytest.raises(ConnectionError, match="502"):
        await rest.create_message(discord.GENERAL_ID, "Hi", reply_to=None)
    unreachable = DiscordRest("http://127.0.0.1:1/api/v10", discord.token, "DiscordBot (test, 1)")
    await unreachable.open()
    try:
        with pytest.raises(ConnectionError):
            await unreachable.create_message(discord.GENERAL_ID, "Hi", reply_to=None)
    finally:
        await unreachable.close()


async def test_refusals_are_delivery_errors(discord: FakeDiscord, rest: DiscordRest) -> None:
    with pytest.raises(DeliveryError, match="Unknown Message"):
        await rest.edit_message(discord.GENERAL_ID, 42, "Hello")
    discord.refuse("POST", r"/channels/\d+/messages")
    with pytest.raises(DeliveryError, match="403 Missing Permissions"):
        await rest.create_message(discord.GENERAL_ID, "Hi", reply_to=None)


async def test_interaction_response_and_followups(discord: FakeDiscord, rest: DiscordRest) -> None:
    interaction = await deferred(discord)
    app = discord.APPLICATION_ID
    original = await rest.edit_original(app, interaction.token, "part one")
    followup = await rest.create_followup(app, interaction.token, "part")
    await rest.edit_followup(app, interaction.token, followup, "part two")
    assert original == interaction.original_id
    assert [m.content for m in discord.reply_messages(interaction)] == ["part one", "part two"]
    await rest.delete_followup(app, interaction.token, followup)
    assert [m.content for m in discord.reply_messages(interaction)] == ["part one"]


async def test_expired_interaction_token(
    discord: FakeDiscord, rest: DiscordRest, clock: ManualClock
) -> None:
    interaction = await deferred(discord)
    clock.advance(INTERACTION_TOKEN_LIFETIME_S + 1)
    with pytest.raises(InteractionTokenExpired):
        await rest.edit_original(discord.APPLICATION_ID, interaction.token, "too late")
