"""The HTTP API's rules as plain functions: request checks on any JSON, key names and the
[api] settings, key hashing and the constant-time key ring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.api.config import ApiSettings
from adapters.api.doctor import check as doctor_check
from adapters.api.errors import ApiError
from adapters.api.keys import KEY_PREFIX, KeyRing, key_hash, new_key
from adapters.api.rules import (
    check_session,
    completion_request,
    history_limit,
    session_message,
)
from bot.app import load
from bot.config import StorageSettings
from bot.errors import ConfigError
from bot.storage import open_store
from tests.conftest import make_settings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["model", "messages", "stream", "temperature", "max_tokens", "n", "content", "role"]
)
REQUESTS = st.dictionaries(FIELDS, JSON, max_size=6) | st.fixed_dictionaries(
    {"messages": st.lists(st.dictionaries(FIELDS, JSON, max_size=3), max_size=4)},
    optional={"model": JSON, "temperature": JSON, "max_tokens": JSON, "stream": JSON},
)


@given(REQUESTS)
def test_a_completion_request_is_either_checked_or_refused(data: dict[str, Any]) -> None:
    try:
        asked = completion_request(data, models=["parley"], max_input_chars=100)
    except ApiError as exc:
        assert exc.status in (400, 404)
        assert set(exc.body["error"]) == {"message", "type", "param", "code"}
        return
    assert asked.messages[-1].role == "user"
    assert len(asked.messages[-1].content) <= 100
    assert asked.temperature is None or 0 <= asked.temperature <= 2


@given(st.dictionaries(FIELDS, JSON, max_size=4))
def test_a_session_message_is_either_checked_or_refused(data: dict[str, Any]) -> None:
    try:
        asked = session_message(data, max_input_chars=100)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert asked.content.strip() and len(asked.content.strip()) <= 100


@given(st.text())
def test_session_ids_and_limits_never_raise_anything_else(text: str) -> None:
    for check in (check_session, history_limit):
        try:
            check(text)
        except ApiError as exc:
            assert exc.status == 400


def test_text_parts_and_the_newer_names_are_understood() -> None:
    asked = completion_request(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "assistant", "content": None},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_completion_tokens": 7,
            "max_tokens": 9,
        },
        models=["parley"],
        max_input_chars=100,
    )
    assert [(m.role, m.content) for m in asked.messages] == [
        ("system", "Be brief."),
        ("assistant", ""),
        ("user", "a\nb"),
    ]
    assert asked.max_tokens == 7
    with pytest.raises(ApiError) as picture:
        completion_request(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            models=["parley"],
            max_input_chars=100,
        )
    assert picture.value.body["error"]["param"] == "messages[0]"


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[api.keys]\n"bad name" = "pk-0123456789abcdef"', "a key's name is 1 to 64"),
        ('[api.keys]\nalice = "pk-short"', "at least 16 characters"),
        ('[api.keys]\na = "pk-0123456789abcdef"\nb = "pk-0123456789abcdef"', "same key"),
        ('[api]\ntoken = "pk-0123456789abcdef"', "api has no token"),
        ("[api]\nrequests_per_minute = -1", "api.requests_per_minute"),
    ],
)
def test_bad_api_settings_are_refused_without_echoing_a_key(
    tmp_path: Path, toml: str, problem: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load(path)
    said = "\n".join(refused.value.problems)
    assert problem in said
    assert "0123456789abcdef" not in said and "short" not in said


def test_configured_keys_are_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api={"keys": {"alice": "pk-0123456789abcdef"}})
    assert "pk-0123456789abcdef" in settings.secrets()
    assert "pk-0123456789abcdef" not in repr(ApiSettings.of(settings))
    assert ApiSettings.of(settings).enabled
    assert not ApiSettings.of(make_settings(tmp_path)).enabled


def test_a_new_key_is_random_and_only_its_hash_is_kept() -> None:
    one, two = new_key(), new_key()
    assert one != two and one.startswith(KEY_PREFIX) and len(one) >= 40
    assert len(key_hash(one)) == 64 and one not in key_hash(one)


async def test_the_key_ring_knows_configured_and_stored_keys(tmp_path: Path) -> None:
    store = await open_store(StorageSettings(path=str(tmp_path / "k.db")))
    now = [0.0]
    try:
        configured = make_settings(tmp_path, api={"keys": {"alice": "pk-0123456789abcdef"}})
        ring = KeyRing(ApiSettings.of(configured).keys, store, clock=lambda: now[0])
        assert await ring.owner("pk-0123456789abcdef") == "alice"
        assert await ring.owner("pk-0123456789abcdeF") is None
        carol = new_key()
        assert await store.add_api_key("carol", key_hash(carol))
        assert not await store.add_api_key("carol", key_hash(new_key()))  # the name is taken
        now[0] += 2  # a key that matches none makes the ring read the store again
        assert await ring.owner(carol) == "carol"
        # A configured name wins over a stored key made under the same name before.
        await store.add_api_key("alice", key_hash("pk-stored-for-alice-1"))
        now[0] += 10
        assert await ring.owner("pk-stored-for-alice-1") is None
    finally:
        await store.close()


async def test_the_doctor_says_where_the_api_is_served_or_that_it_is_not(tmp_path: Path) -> None:
    keys = {"keys": {"alice": "pk-0123456789abcdef"}}
    off = await doctor_check(make_settings(tmp_path, api=keys))
    assert [(f.check, f.status) for f in off] == [("api", "warn")]
    assert "http.enabled" in off[0].detail
    on = await doctor_check(make_settings(tmp_path, api=keys, http={"enabled": True, "port": 8181}))
    assert [(f.check, f.status) for f in on] == [("api", "ok")]
    assert "http://127.0.0.1:8181/v1/" in on[0].detail
    assert "pk-0123456789abcdef" not in on[0].detail + off[0].detail
