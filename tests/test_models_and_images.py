"""Per-chat models (`llm.models`, `/model NAME`) and pictures for models that take images, end to
end on every platform: two fake LLM servers record where each request went and what it carried.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_settings
from bot.errors import ConfigError
from bot.llm import LLMClient
from bot.messages import Msg, say
from bot.models import ModelCatalog
from tests.fakes.drivers import PlatformDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import echo_reply, echoed
from tests.fakes.stored import stored_rows

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # a "photo": what matters is its bytes
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


@pytest.fixture
async def other_llm() -> AsyncIterator[FakeLLMServer]:
    """A second server, for a model of its own."""
    async with FakeLLMServer(behaviour=Behaviour(reply=echo_reply)) as server:
        yield server


def audit(tmp_path: Path) -> list[tuple[str, str, str | None, str | None]]:
    return stored_rows(
        tmp_path / "parley.db",
        "SELECT action, key, old_value, new_value FROM audit_log WHERE key = 'model' ORDER BY id",
    )


def image_parts(body: dict[str, Any]) -> list[str]:
    """The data URLs of the pictures in a chat request's last message."""
    content = body["messages"][-1]["content"]
    if not isinstance(content, list):
        return []
    return [part["image_url"]["url"] for part in content if part["type"] == "image_url"]


async def test_model_name_sends_the_chats_next_request_there_and_only_there(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer, other_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    models = {"big": {"url": other_llm.url, "model": "big-13b", "about": "bigger, slower"}}
    settings = driver.settings(tmp_path, fake_llm.url, llm={"models": models})
    async with driver.running(settings):
        listing = await driver.command(ann, "model")
        assert listing.splitlines()[1:3] == [
            "• default — the bot's default (this chat)",
            "• big — bigger, slower",
        ]
        picked = await driver.command(ann, "model", "big")
        assert picked == "This chat now uses big (was default). It applies from the next message."
        await driver.say(ann, "hello big model")
        await driver.wait_until(lambda: echoed("hello big model") in driver.replies(ann))
        await driver.say(bob, "hello default")  # another chat keeps the default
        await driver.wait_until(lambda: echoed("hello default") in driver.replies(bob))
        # In a group, picking takes an admin.
        refused = await driver.command(bob, "model", "big", group=True)
        await driver.say(bob, "still default here", group=True)
        await driver.wait_until(lambda: echoed("still default here") in driver.replies(group=True))
        assert "(was big)" in await driver.command(ann, "model", "default")
        await driver.say(ann, "back to default")
        await driver.wait_until(lambda: echoed("back to default") in driver.replies(ann))
        unknown = await driver.command(ann, "model", "huge")
    assert [last_user_text(b) for b in other_llm.requests] == ["hello big model"]
    assert other_llm.requests[0]["model"] == "big-13b"
    assert [last_user_text(b) for b in fake_llm.requests] == [
        "hello default",
        "still default here",
        "back to default",
    ]
    assert refused == "Only admins can change the model here."
    assert unknown == "There is no model called “huge”. /model lists them."
    assert audit(tmp_path) == [
        ("config.set", "model", '"default"', '"big"'),
        ("config.refused", "model", None, None),
        ("config.set", "model", '"big"', '"default"'),
    ]


async def test_a_model_with_a_pool_of_its_own_is_answered_by_its_servers_alone(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer, other_llm: FakeLLMServer
) -> None:
    """Both sides are pools (llm.backends): a chat's model fails over inside its own pool and,
    with every one of its servers down, is told so; the default pool never takes its turns."""
    ann, bob = driver.person("Ann"), driver.person("Bob")
    fake_llm.slots, other_llm.slots = 2, 3  # llama.cpp servers: /props total_slots
    echo = Behaviour(reply=echo_reply)
    async with (
        FakeLLMServer(behaviour=echo, slots=2) as default_two,
        FakeLLMServer(behaviour=echo, slots=1) as own_two,
    ):
        models = {"pool": {"backends": [other_llm.url, own_two.url], "about": "two servers"}}
        llm = {"base_url": "", "backends": [fake_llm.url, default_two.url], "models": models}
        async with driver.running(driver.settings(tmp_path, "", llm=llm)) as bot:
            # One line for every server's slots: the default pool's 4 and the model's 4.
            assert bot.app.engine.queue.slots == 8
            await driver.command(ann, "model", "pool")
            await driver.say(ann, "one")
            await driver.wait_until(lambda: echoed("one") in driver.replies(ann))
            await other_llm.stop()
            await driver.say(ann, "two")  # its first server is gone: its other one answers
            await driver.wait_until(lambda: echoed("two") in driver.replies(ann))
            await own_two.stop()
            await driver.say(ann, "three")  # the default servers are up, but not its own
            await driver.wait_until(lambda: say(Msg.LLM_DOWN) in driver.replies(ann))
            # /healthz shows the model's own servers (not a failing check: the others answer).
            health = bot.app.health_checks()
            pool = health.details()["models"]["pool"]
            assert [b["healthy"] for b in pool["backends"]] == [False, False]
            assert pool["routing"] == "least-busy"
            await driver.say(bob, "hello default")
            await driver.wait_until(lambda: echoed("hello default") in driver.replies(bob))
        assert driver.replies(ann)[1:] == [echoed("one"), echoed("two"), say(Msg.LLM_DOWN)]
        own = [last_user_text(b) for b in [*other_llm.requests, *own_two.requests]]
        assert sorted(own) == ["one", "two"]
        assert "two" in [last_user_text(b) for b in own_two.requests]
        default = [last_user_text(b) for b in [*fake_llm.requests, *default_two.requests]]
        assert default == ["hello default"]


async def test_a_picture_reaches_a_model_that_sees_as_an_image_part(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    fake_llm.vision = True  # as llama-server started with a multimodal projector says in /props
    ann = driver.person("Ann")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await driver.send_picture(ann, JPEG, caption="what is this?")
        await driver.wait_until(lambda: echoed("what is this?") in driver.replies(ann))
        await driver.send_picture(ann, PNG, mime="image/png")  # no caption: the picture alone
        await driver.wait_until(lambda: len(fake_llm.requests) == 2)
        await driver.wait_until(lambda: len(driver.replies(ann)) == 2)
        await driver.say(ann, "and now?")
        await driver.wait_until(lambda: echoed("and now?") in driver.replies(ann))
    with_caption, alone, later = fake_llm.requests
    jpeg_url = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    assert with_caption["messages"][-1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": jpeg_url}},
    ]
    assert alone["messages"][-1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}}
    ]
    # Pictures are not stored: the history says where one was, and no later prompt carries it.
    assert image_parts(later) == []
    assert {"role": "user", "content": "[image] what is this?"} in later["messages"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_picture_for_a_model_that_cannot_see_gets_a_clear_reply(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):  # /props: no vision
        await driver.send_picture(ann, JPEG)
        await driver.wait_until(lambda: driver.replies(ann))
    assert driver.replies(ann) == [say(Msg.NO_VISION)]
    assert fake_llm.requests == [] and driver.downloads() == 0  # nothing fetched for nothing


async def test_llm_vision_forces_it_and_an_oversized_picture_gets_a_clear_reply(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    limit = len(JPEG) - 1
    settings = driver.settings(
        tmp_path, fake_llm.url, llm={"vision": True, "max_image_bytes": limit}
    )
    async with driver.running(settings):
        await driver.send_picture(ann, JPEG)
        await driver.wait_until(lambda: driver.replies(ann))
        await driver.send_picture(ann, PNG, mime="image/png", caption="and this small one?")
        await driver.wait_until(lambda: echoed("and this small one?") in driver.replies(ann))
    too_large = say(Msg.IMAGE_TOO_LARGE, size_mb=len(JPEG) / 2**20, limit_mb=limit / 2**20)
    assert driver.replies(ann) == [too_large, echoed("and this small one?")]
    (request,) = fake_llm.requests  # the oversized picture was never sent
    assert image_parts(request) == ["data:image/png;base64," + b64(PNG)]
    assert driver.downloads() == 1  # the large one was refused by its size, not downloaded


async def test_a_chat_that_picks_a_model_with_eyes_can_send_it_pictures(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer, other_llm: FakeLLMServer
) -> None:
    other_llm.vision = True
    ann = driver.person("Ann")
    models = {"eyes": {"url": other_llm.url}}
    async with driver.running(driver.settings(tmp_path, fake_llm.url, llm={"models": models})):
        await driver.send_picture(ann, JPEG, caption="first try")
        await driver.wait_until(lambda: echoed("first try") in driver.replies(ann))
        await driver.command(ann, "model", "eyes")
        await driver.send_picture(ann, JPEG, caption="second try")
        await driver.wait_until(lambda: echoed("second try") in driver.replies(ann))
    (blind,) = fake_llm.requests
    assert image_parts(blind) == [] and last_user_text(blind) == "first try"
    (seeing,) = other_llm.requests
    assert image_parts(seeing) == ["data:image/jpeg;base64," + b64(JPEG)]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[llm.models.x]\nurl = "http://a:1"\nbackends = ["http://b:1"]',
            "config: llm.models.x = {...}: set url (one server) or backends (a pool), not both",
        ),
        (
            '[llm.models.x]\nbackends = ["http://b:1", "http://b:1/"]',
            "config: llm.models.x = {...}: lists the same server twice",
        ),
        (
            '[llm.models.x]\nbackends = ["http://a:1", "http://b:1"]',
            "config: llm = {...}: llm.models.x shares a server with the default servers",
        ),
        (
            '[llm.models.x]\nurl = "http://b:1"\n[llm.models.y]\nbackends = ["http://b:1", '
            '"http://c:1"]',
            "config: llm = {...}: llm.models.y shares a server with llm.models.x",
        ),
        (
            '[llm.models.x]\nurl = "http://b:1"\n[llm.models.y]\nurl = "http://b:1"\n'
            'api_key = "sk-model-y-secret"',
            "config: llm = {...}: llm.models.y is on the same servers as llm.models.x",
        ),
        ('[llm.models.default]\nmodel = "m"', "config: llm.models = {...}: model name 'default'"),
    ],
)
def test_model_servers_are_validated(tmp_path: Path, toml: str, expected: str) -> None:
    """A server is in one pool only (two pools would each count its slots as theirs)."""
    path = tmp_path / "config.toml"
    path.write_text(f'[llm]\nbase_url = "http://a:1"\n{toml}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value
    assert "sk-model-y" not in str(caught.value)  # a secret is never shown


def test_models_on_the_default_servers_or_one_server_list_share_a_client(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[llm]\nbase_url = "http://a:1"\n[llm.models.same]\nurl = "http://a:1/"\n'
        '[llm.models.p]\nurl = "http://b:1"\nmodel = "p"\n[llm.models.q]\nurl = "http://b:1"\n'
        'model = "q"\n'
    )
    llm = load_settings(path).llm
    default = LLMClient(llm, ["http://a:1"], "chat")
    catalog = ModelCatalog(llm, default)
    same, p, q = (catalog.pick(name) for name in ("same", "p", "q"))
    assert same.client is default  # the default servers' pool, its slots counted once
    assert p.client is q.client and p.client.urls == ["http://b:1"]
    assert (p.model, q.model) == ("p", "q")
