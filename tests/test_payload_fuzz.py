"""Malformed platform payloads never stop the bot: it skips them and keeps answering.

Each example pushes one damaged update (Telegram getUpdates / webhook) or MESSAGE_CREATE event
(Discord gateway) into a running bot, then a good message from another user, which must still be
answered. One bot serves all examples of a test, as a real bot sees many payloads; shrinking is
off because a later example would run against whatever an earlier one did to that bot, so the
first failing payload is the one reported.
"""

from __future__ import annotations

import copy
import itertools
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from adapters.telegram.webhook import SECRET_HEADER
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeMessage, FakeUser, snowflake
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

ANN, CANARY = 1001, 1002  # Telegram users: the damaged updates come "from" Ann
NO_LIMIT = {"user_messages_per_minute": 0}  # every example sends messages from the same users
EXAMPLES = 40  # per test; each one is a round trip through the running bot

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
ANY_JSON = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# Fields the libraries read, so that added fields reach their decoders, not only unknown keys.
TELEGRAM_FIELDS = (
    "message_id", "date", "chat", "from", "text", "entities", "caption", "caption_entities",
    "reply_to_message", "voice", "audio", "video_note", "message_thread_id", "is_topic_message",
    "sender_chat", "photo", "document", "edit_date", "new_chat_members", "forward_origin", "id",
    "type", "first_name", "is_bot", "offset", "length", "url", "user", "file_id", "duration",
)  # fmt: skip
TELEGRAM_UPDATE_TYPES = ("edited_message", "channel_post", "callback_query", "my_chat_member")
DISCORD_FIELDS = (
    "id", "channel_id", "author", "content", "timestamp", "mentions", "mention_roles",
    "attachments", "embeds", "type", "flags", "guild_id", "member", "message_reference",
    "referenced_message", "sticker_items", "components", "thread", "poll", "webhook_id",
    "application_id", "edited_timestamp", "username", "bot", "roles", "user", "size", "url",
    "filename", "content_type", "duration_secs", "waveform",
)  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and index path inside nested dicts and lists."""
    children = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in children:
        yield (*prefix, key)
        if isinstance(child, dict | list):
            yield from _paths(child, (*prefix, key))


def damage(data: st.DataObject, payload: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A copy of `payload` with one to three random edits: a field removed, replaced or added."""
    payload = copy.deepcopy(payload)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = list(_paths(payload))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        edit = data.draw(st.sampled_from(["remove", "replace", "add"]), label="edit")
        if edit == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        elif edit == "add" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(fields), label="field")] = data.draw(ANY_JSON)
        else:
            parent[path[-1]] = data.draw(ANY_JSON, label="value")
    return payload


# -- Telegram ------------------------------------------------------------------------------


@dataclass
class TelegramWorld:
    """A running bot on the Telegram fake, and the chats the examples use."""

    api: FakeTelegramAPI
    ann: dict[str, Any]
    canary: dict[str, Any]
    pings: Iterator[int] = field(default_factory=itertools.count)

    async def still_answers(self) -> None:
        """A good message from another user is answered."""
        text = f"ping {next(self.pings)}"
        self.api.send_text(self.api.private_chat(self.canary), self.canary, text)
        await self.api.wait_for(lambda a: f"echo {text}" in telegram_replies(a, CANARY))


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=echo_reply)) as server:
        yield server


@pytest.fixture
async def telegram(tmp_path: Path, llm: FakeLLMServer) -> AsyncIterator[TelegramWorld]:
    async with FakeTelegramAPI() as api:
        config = telegram_settings(tmp_path, api, llm.url, engine=NO_LIMIT)
        async with telegram_bot(config):
            yield TelegramWorld(api, api.user(ANN, "Ann"), api.user(CANARY, "Cai"))


def telegram_update(world: TelegramWorld) -> dict[str, Any]:
    """A well-formed update (with the fake's next update_id) to damage."""
    group = world.api.group_chat(-100777)
    return world.api.text_update(group, world.ann, "@ParleyTestBot hello there")


@FUZZ
@given(data=st.data())
async def test_damaged_telegram_messages_are_skipped(
    telegram: TelegramWorld, data: st.DataObject
) -> None:
    update = telegram_update(telegram)
    telegram.api.push({**update, "message": damage(data, update["message"], TELEGRAM_FIELDS)})
    await telegram.still_answers()


@FUZZ
@given(kind=st.sampled_from(("message", *TELEGRAM_UPDATE_TYPES)), body=ANY_JSON)
async def test_telegram_updates_of_any_shape_are_skipped(
    telegram: TelegramWorld, kind: str, body: Any
) -> None:
    update_id = telegram_update(telegram)["update_id"]
    telegram.api.push({"update_id": update_id, kind: body})
    await telegram.still_answers()


async def test_an_unreadable_update_does_not_hold_up_its_batch(telegram: TelegramWorld) -> None:
    # Regression: PTB decodes a getUpdates batch as a whole; one bad update used to fail every
    # poll from then on, and the bot answered nobody.
    update = telegram_update(telegram)
    telegram.api.push({**update, "message": {"message_id": 1}})  # no date, no chat
    await telegram.still_answers()


async def test_webhook_acknowledges_an_unreadable_update(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/hook"
    headers = {SECRET_HEADER: "s3cret"}
    async with FakeTelegramAPI() as api:
        config = telegram_settings(
            tmp_path, api, llm.url, webhook_url=url, webhook_port=port, webhook_secret="s3cret"
        )
        ann = api.user(ANN, "Ann")
        chat = api.private_chat(ann)
        async with telegram_bot(config), aiohttp.ClientSession() as http:
            bad = api.text_update(chat, ann, "lost")
            bad["message"]["date"] = 2**62  # outside what a datetime can hold
            async with http.post(url, json=bad, headers=headers) as response:
                assert response.status == 200  # Telegram would redeliver a failed update
            good = api.text_update(chat, ann, "hello")
            async with http.post(url, json=good, headers=headers) as response:
                assert response.status == 200
            await api.wait_for(lambda a: telegram_replies(a, ANN) == ["echo hello"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- Discord -------------------------------------------------------------------------------


@dataclass
class DiscordWorld:
    """A running bot on the Discord fake; damaged events come from Zed, the canary is Cai."""

    fake: FakeDiscord
    zed: FakeUser = field(default_factory=lambda: FakeUser(snowflake(), "Zed"))
    canary: FakeUser = field(default_factory=lambda: FakeUser(snowflake(), "Cai"))
    pings: Iterator[int] = field(default_factory=itertools.count)

    def event(self) -> dict[str, Any]:
        """A well-formed MESSAGE_CREATE payload of a DM to damage."""
        message = FakeMessage(
            id=snowflake(),
            channel_id=self.fake.dm_channel(self.zed),
            author=self.zed,
            content="hello there",
        )
        return self.fake.message_payload(message, event=True)

    async def still_answers(self) -> None:
        """A good message from another user is answered."""
        text = f"ping {next(self.pings)}"
        await self.fake.post_message(self.canary, text, dm=True)
        channel = self.fake.dm_channel(self.canary)
        await self.fake.wait_until(lambda: f"echo {text}" in discord_replies(self.fake, channel))


@pytest.fixture
async def discord(tmp_path: Path, llm: FakeLLMServer) -> AsyncIterator[DiscordWorld]:
    async with FakeDiscord() as fake:
        config = discord_settings(tmp_path, fake, llm.url, engine=NO_LIMIT)
        async with discord_bot(config):
            yield DiscordWorld(fake)


@FUZZ
@given(data=st.data())
async def test_damaged_discord_messages_are_skipped(
    discord: DiscordWorld, data: st.DataObject
) -> None:
    await discord.fake.gateway.dispatch(
        "MESSAGE_CREATE", damage(data, discord.event(), DISCORD_FIELDS)
    )
    await discord.still_answers()


@FUZZ
@given(body=ANY_JSON)
async def test_discord_events_of_any_shape_are_skipped(discord: DiscordWorld, body: Any) -> None:
    await discord.fake.gateway.dispatch("MESSAGE_CREATE", body)
    await discord.still_answers()
