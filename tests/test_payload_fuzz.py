"""Malformed platform payloads never stop the bot: it skips them and keeps answering.

Each example pushes one damaged update (Telegram getUpdates / webhook) or MESSAGE_CREATE event
(Discord gateway) into a running bot, then a good message from another user, which must still be
answered. One bot serves all examples of a test, as a real bot sees many payloads; shrinking is
off because a later example would run against whatever an earlier one did to that bot, so the
first failing payload is the one reported.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from adapters.telegram.webhook import SECRET_HEADER
from tests.conftest import free_port
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeMessage, snowflake
from tests.fakes.drivers import DiscordDriver, Person, PlatformDriver, TelegramDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import echo_reply, telegram_bot, telegram_replies, telegram_settings
from tests.fakes.telegram_api import FakeTelegramAPI

D = TypeVar("D", bound=PlatformDriver)

ANN = 1001  # the Telegram user of the webhook test
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


@dataclass
class World(Generic[D]):
    """A running bot on one platform's fake: damaged payloads come from Ann, the canary is Cai."""

    driver: D
    ann: Person
    canary: Person
    pings: Iterator[int] = field(default_factory=itertools.count)

    async def still_answers(self) -> None:
        """A good message from another user is answered."""
        text = f"ping {next(self.pings)}"
        await self.driver.say(self.canary, text)
        await self.driver.wait_until(lambda: f"echo {text}" in self.driver.replies(self.canary))


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


@contextlib.asynccontextmanager
async def running_world(driver: D, tmp_path: Path, llm_url: str) -> AsyncIterator[World[D]]:
    async with driver.running(driver.settings(tmp_path, llm_url, engine=NO_LIMIT)):
        yield World(driver, driver.person("Ann"), driver.person("Cai"))


# -- Telegram ------------------------------------------------------------------------------


@pytest.fixture
async def telegram_world(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> AsyncIterator[World[TelegramDriver]]:
    async with running_world(TelegramDriver(telegram), tmp_path, fake_llm.url) as world:
        yield world


def telegram_update(world: World[TelegramDriver]) -> dict[str, Any]:
    """A well-formed update (with the fake's next update_id) to damage."""
    api = world.driver.api
    group = api.group_chat(-100777)
    return api.text_update(group, world.driver.user(world.ann), "@ParleyTestBot hello there")


@FUZZ
@given(data=st.data())
async def test_damaged_telegram_messages_are_skipped(
    telegram_world: World[TelegramDriver], data: st.DataObject
) -> None:
    update = telegram_update(telegram_world)
    damaged = damage(data, update["message"], TELEGRAM_FIELDS)
    telegram_world.driver.api.push({**update, "message": damaged})
    await telegram_world.still_answers()


@FUZZ
@given(kind=st.sampled_from(("message", *TELEGRAM_UPDATE_TYPES)), body=ANY_JSON)
async def test_telegram_updates_of_any_shape_are_skipped(
    telegram_world: World[TelegramDriver], kind: str, body: Any
) -> None:
    update_id = telegram_update(telegram_world)["update_id"]
    telegram_world.driver.api.push({"update_id": update_id, kind: body})
    await telegram_world.still_answers()


async def test_an_unreadable_update_does_not_hold_up_its_batch(
    telegram_world: World[TelegramDriver],
) -> None:
    # Regression: PTB decodes a getUpdates batch as a whole; one bad update used to fail every
    # poll from then on, and the bot answered nobody.
    update = telegram_update(telegram_world)
    telegram_world.driver.api.push({**update, "message": {"message_id": 1}})  # no date, no chat
    await telegram_world.still_answers()


async def test_webhook_acknowledges_an_unreadable_update(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    headers = {SECRET_HEADER: "s3cret"}
    config = telegram_settings(
        tmp_path,
        telegram,
        fake_llm.url,
        webhook_url=url,
        webhook_port=port,
        webhook_secret="s3cret",
    )
    ann = telegram.user(ANN, "Ann")
    chat = telegram.private_chat(ann)
    async with telegram_bot(config), aiohttp.ClientSession() as http:
        bad = telegram.text_update(chat, ann, "lost")
        bad["message"]["date"] = 2**62  # outside what a datetime can hold
        async with http.post(url, json=bad, headers=headers) as response:
            assert response.status == 200  # Telegram would redeliver a failed update
        good = telegram.text_update(chat, ann, "hello")
        async with http.post(url, json=good, headers=headers) as response:
            assert response.status == 200
        await telegram.wait_for(lambda a: telegram_replies(a, ANN) == ["echo hello"])


# -- Discord -------------------------------------------------------------------------------


@pytest.fixture
async def discord_world(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> AsyncIterator[World[DiscordDriver]]:
    async with running_world(DiscordDriver(discord), tmp_path, fake_llm.url) as world:
        yield world


def discord_event(world: World[DiscordDriver]) -> dict[str, Any]:
    """A well-formed MESSAGE_CREATE payload of Ann's DM to damage."""
    fake, ann = world.driver.fake, world.driver.user(world.ann)
    message = FakeMessage(
        id=snowflake(), channel_id=fake.dm_channel(ann), author=ann, content="hello there"
    )
    return fake.message_payload(message, event=True)


@FUZZ
@given(data=st.data())
async def test_damaged_discord_messages_are_skipped(
    discord_world: World[DiscordDriver], data: st.DataObject
) -> None:
    damaged = damage(data, discord_event(discord_world), DISCORD_FIELDS)
    await discord_world.driver.fake.gateway.dispatch("MESSAGE_CREATE", damaged)
    await discord_world.still_answers()


@FUZZ
@given(body=ANY_JSON)
async def test_discord_events_of_any_shape_are_skipped(
    discord_world: World[DiscordDriver], body: Any
) -> None:
    await discord_world.driver.fake.gateway.dispatch("MESSAGE_CREATE", body)
    await discord_world.still_answers()
