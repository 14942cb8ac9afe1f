"""The HTTP API, end to end: the real openai client and plain HTTP against the real app, its
real `api` adapter and [http] endpoint, with the fake LLM (which records every request).

Covers the OpenAI endpoints (models, plain and streamed completions, keys), the sessions Parley
keeps (history, commands, one key's sessions hidden from another, delete), and the limits.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionUserMessageParam

from tests.fakes.api_bot import ALICE, BOB, RunningApi, api_bot, api_settings
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import echo_reply, echoed
from tests.fakes.waits import eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

PERSONA_START = "You are Parley"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLMServer) -> AsyncIterator[RunningApi]:
    models = {"qwen": {"model": "qwen-7b", "about": "another model on the same server"}}
    settings = api_settings(tmp_path, fake_llm.url, llm={"models": models})
    async with api_bot(settings) as running:
        yield running


def client(bot: RunningApi, key: str = ALICE) -> openai.AsyncOpenAI:
    """The real OpenAI client on the API (`async with` it: it closes its connections)."""
    return openai.AsyncOpenAI(base_url=bot.url, api_key=key, max_retries=0)


def user(text: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": text}


async def call(
    bot: RunningApi,
    method: str,
    path: str,
    key: str | None = ALICE,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, Any]:
    """One plain HTTP request; (status, the body as JSON or text, the headers)."""
    if headers is None:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, bot.url + path, headers=headers, **kwargs) as resp,
    ):
        text = await resp.text()
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        return resp.status, body, resp.headers


def sse_text(body: str) -> str:
    """The text of a streamed answer's `chat.completion.chunk` events, which end with [DONE]."""
    events = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)


def assert_openai_error(body: Any, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


# -- the OpenAI endpoints, through the real openai client ----------------------------------------


async def test_models_lists_parley_then_the_configured_models(bot: RunningApi) -> None:
    async with client(bot) as openai_client:
        models = await openai_client.models.list()
    assert [model.id for model in models.data] == ["parley", "qwen"]
    assert {model.object for model in models.data} == {"model"}


async def test_a_plain_completion_gets_the_persona_and_reports_usage(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    async with client(bot) as openai_client:
        answer = await openai_client.chat.completions.create(
            model="parley", messages=[user("What is a comet?")]
        )
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == echoed("What is a comet?")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    sent = fake_llm.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[0]["content"].startswith(PERSONA_START)
    assert sent[1:] == [user("What is a comet?")]


async def test_the_callers_own_system_message_replaces_the_persona(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Answer in French."},
        user("Hello"),
        {"role": "assistant", "content": "Bonjour"},
        user("How are you?"),
    ]
    async with client(bot) as openai_client:
        await openai_client.chat.completions.create(model="parley", messages=conversation)
    assert fake_llm.requests[-1]["messages"] == conversation


async def test_a_streamed_completion_arrives_as_chunks_then_usage(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=echo_reply, delay_s=0.02)
    async with client(bot) as openai_client:
        stream = await openai_client.chat.completions.create(
            model="parley",
            messages=[user("Count to twenty, one two three four five six seven eight nine ten")],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echoed("Count to twenty, one two three four five six seven eight nine ten")
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(with_text) >= 2  # streamed, not given whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_model_temperature_and_max_tokens_reach_the_llm_capped(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    async with client(bot) as openai_client:
        await openai_client.chat.completions.create(
            model="qwen", messages=[user("hi")], temperature=0.25, max_tokens=40
        )
        sent = fake_llm.requests[-1]
        assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("qwen-7b", 0.25, 40)
        await openai_client.chat.completions.create(
            model="parley", messages=[user("hi")], max_tokens=100_000
        )
        assert fake_llm.requests[-1]["max_tokens"] == 512  # engine.max_tokens caps it
        with pytest.raises(openai.NotFoundError) as refused:
            await openai_client.chat.completions.create(model="gpt-9", messages=[user("hi")])
    assert refused.value.code == "model_not_found"


async def test_a_wrong_key_is_refused(bot: RunningApi, fake_llm: FakeLLMServer) -> None:
    async with client(bot, key="pk-not-a-key-at-all") as openai_client:
        with pytest.raises(openai.AuthenticationError):
            await openai_client.models.list()
    async with client(bot, key=ALICE + "x") as openai_client:
        with pytest.raises(openai.AuthenticationError):
            await openai_client.chat.completions.create(model="parley", messages=[user("hi")])
    status, body, _ = await call(bot, "GET", "/models", key="pk-wrong-wrong-wrong")
    assert status == 401
    assert_openai_error(body, "invalid_api_key")
    assert fake_llm.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("POST", "/chat/completions"),
        ("POST", "/sessions/s1/messages"),
        ("GET", "/sessions/s1/messages"),
        ("DELETE", "/sessions/s1"),
        ("GET", "/no/such/path"),
    ],
)
async def test_no_key_is_401_everywhere(bot: RunningApi, method: str, path: str) -> None:
    status, body, _ = await call(bot, method, path, key=None, json={"content": "hi"})
    assert status == 401
    assert_openai_error(body, "invalid_api_key")
    status, body, _ = await call(bot, method, path, key=None, headers={"Authorization": "Basic x"})
    assert status == 401


# -- sessions Parley keeps ----------------------------------------------------------------------


async def test_a_sessions_second_turn_carries_the_first_and_the_list_is_in_order(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    status, first, _ = await call(
        bot, "POST", "/sessions/kitchen/messages", json={"content": "My name is Ann."}
    )
    assert status == 200
    assert first["choices"][0]["message"]["content"] == echoed("My name is Ann.")
    status, second, _ = await call(
        bot, "POST", "/sessions/kitchen/messages", json={"content": "What is my name?"}
    )
    assert second["choices"][0]["message"]["content"] == echoed("What is my name?")
    prompt = fake_llm.requests[-1]["messages"]
    assert prompt[0]["role"] == "system"
    assert prompt[1:] == [
        user("My name is Ann."),
        {"role": "assistant", "content": echoed("My name is Ann.")},
        user("What is my name?"),
    ]
    status, listed, _ = await call(bot, "GET", "/sessions/kitchen/messages")
    assert status == 200 and listed["session"] == "kitchen"
    assert [(m["role"], m["content"]) for m in listed["messages"]] == [
        ("user", "My name is Ann."),
        ("assistant", echoed("My name is Ann.")),
        ("user", "What is my name?"),
        ("assistant", echoed("What is my name?")),
    ]
    assert all(isinstance(m["created_at"], int) for m in listed["messages"])
    _, newest, _ = await call(bot, "GET", "/sessions/kitchen/messages?limit=2")
    assert [m["content"] for m in newest["messages"]] == [
        "What is my name?",
        echoed("What is my name?"),
    ]


async def test_another_key_never_sees_a_session(bot: RunningApi, fake_llm: FakeLLMServer) -> None:
    await call(bot, "POST", "/sessions/den/messages", json={"content": "alice's secret"})
    status, seen, _ = await call(bot, "GET", "/sessions/den/messages", key=BOB)
    assert status == 200 and seen == {"session": "den", "messages": []}
    # Bob's own "den" is another chat: his turn's prompt holds nothing of Alice's.
    await call(bot, "POST", "/sessions/den/messages", key=BOB, json={"content": "bob here"})
    assert "alice's secret" not in json.dumps(fake_llm.requests[-1])
    status, _, _ = await call(bot, "DELETE", "/sessions/den", key=BOB)
    assert status == 204
    _, alices, _ = await call(bot, "GET", "/sessions/den/messages")
    assert alices["messages"][0]["content"] == "alice's secret"


async def test_a_streamed_session_turn_is_stored(bot: RunningApi, fake_llm: FakeLLMServer) -> None:
    fake_llm.behaviour = Behaviour(reply=echo_reply, delay_s=0.02)
    question = "Tell me a story about a small red fox who lived near a river"
    status, body, headers = await call(
        bot, "POST", "/sessions/s2/messages", json={"content": question, "stream": True}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert sse_text(body) == echoed(question)
    _, listed, _ = await call(bot, "GET", "/sessions/s2/messages")
    assert [m["content"] for m in listed["messages"]] == [question, echoed(question)]


async def test_delete_then_the_session_is_empty_and_starts_afresh(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    await call(bot, "POST", "/sessions/s3/messages", json={"content": "/persona pirate"})
    await call(bot, "POST", "/sessions/s3/messages", json={"content": "remember the owl"})
    status, body, _ = await call(bot, "DELETE", "/sessions/s3")
    assert (status, body) == (204, None)
    _, listed, _ = await call(bot, "GET", "/sessions/s3/messages")
    assert listed["messages"] == []
    await call(bot, "POST", "/sessions/s3/messages", json={"content": "hello again"})
    prompt = fake_llm.requests[-1]["messages"]
    assert prompt[1:] == [user("hello again")]  # no history, and the persona is the default
    assert prompt[0]["content"].startswith(PERSONA_START)
    status, _, _ = await call(bot, "DELETE", "/sessions/never-used")
    assert status == 204


async def test_commands_in_the_content_work_as_in_any_chat(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    status, body, _ = await call(bot, "POST", "/sessions/s4/messages", json={"content": "/help"})
    assert status == 200 and "/reset" in body["choices"][0]["message"]["content"]
    asked = len(fake_llm.requests)
    await call(bot, "POST", "/sessions/s4/messages", json={"content": "/persona pirate"})
    assert len(fake_llm.requests) == asked  # a command is no turn
    await call(bot, "POST", "/sessions/s4/messages", json={"content": "/ask Where is the gold?"})
    prompt = fake_llm.requests[-1]["messages"]
    assert "pirate" in prompt[0]["content"].lower()
    assert last_user_text(fake_llm.requests[-1]) == "Where is the gold?"
    await call(bot, "POST", "/sessions/s4/messages", json={"content": "/reset"})
    _, listed, _ = await call(bot, "GET", "/sessions/s4/messages")
    assert listed["messages"] == []


# -- limits -------------------------------------------------------------------------------------


async def test_requests_over_the_keys_rate_get_429_with_retry_after(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    settings = api_settings(tmp_path, fake_llm.url, api={"requests_per_minute": 2})
    async with api_bot(settings) as bot:
        for _ in range(2):
            assert (await call(bot, "GET", "/models"))[0] == 200
        status, body, headers = await call(bot, "GET", "/models")
        assert status == 429
        assert_openai_error(body, "rate_limit_exceeded")
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert (await call(bot, "GET", "/models", key=BOB))[0] == 200  # per key
        async with client(bot) as openai_client:
            with pytest.raises(openai.RateLimitError):
                await openai_client.models.list()


async def test_a_body_over_the_cap_is_413(bot: RunningApi) -> None:
    huge = {"messages": [user("x" * (1024 * 1024))]}
    status, body, _ = await call(bot, "POST", "/chat/completions", json=huge)
    assert status == 413
    assert_openai_error(body, "request_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 65536

    status, body, _ = await call(bot, "POST", "/sessions/s/messages", data=chunks())
    assert status == 413


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/chat/completions", b"{not json", None),
        ("/chat/completions", b"\xff\xfe", None),
        ("/chat/completions", b"[1, 2]", None),
        ("/chat/completions", {"model": "parley"}, "messages"),
        ("/chat/completions", {"messages": []}, "messages"),
        ("/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0]"),
        ("/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ("/chat/completions", {"messages": [user("x" * 4001)]}, "messages"),
        ("/chat/completions", {"messages": [user("hi")], "temperature": 3}, "temperature"),
        ("/chat/completions", {"messages": [user("hi")], "max_tokens": 0}, "max_tokens"),
        ("/chat/completions", {"messages": [user("hi")], "stream": "yes"}, "stream"),
        ("/chat/completions", {"messages": [user("hi")], "n": 2}, "n"),
        ("/chat/completions", {"messages": [user("hi")], "model": 7}, "model"),
        ("/sessions/s/messages", {"content": ""}, "content"),
        ("/sessions/s/messages", {"content": ["hi"]}, "content"),
        ("/sessions/s/messages", {"content": "x" * 4001}, "content"),
        ("/sessions/s/messages", {"content": "/ask"}, "content"),
        ("/sessions/bad%20name/messages", {"content": "hi"}, "session"),
        ("/sessions/" + "s" * 65 + "/messages", {"content": "hi"}, "session"),
    ],
)
async def test_a_bad_request_is_400_naming_what_is_wrong(
    bot: RunningApi, fake_llm: FakeLLMServer, path: str, payload: Any, param: str | None
) -> None:
    given = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    status, body, _ = await call(bot, "POST", path, **given)
    assert status == 400
    assert_openai_error(body)
    assert body["error"]["param"] == param
    assert fake_llm.requests == []


async def test_a_message_over_the_engines_input_limit_says_the_limit(bot: RunningApi) -> None:
    status, body, _ = await call(bot, "POST", "/sessions/s/messages", json={"content": "y" * 5000})
    assert status == 400
    assert "5000 characters; the limit is 4000" in body["error"]["message"]


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "9" * 5000])
async def test_a_bad_history_limit_is_400(bot: RunningApi, limit: str) -> None:
    status, body, _ = await call(bot, "GET", f"/sessions/s/messages?limit={limit}")
    assert status == 400 and body["error"]["param"] == "limit"


async def test_wrong_keys_are_throttled_per_address(bot: RunningApi) -> None:
    async def from_address(address: str, key: str) -> tuple[int, Any]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(bot.url + "/models", headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            return resp.status, resp.headers.get("Retry-After")

    for _ in range(5):  # the admin sign-in's free tries
        assert (await from_address("127.0.0.2", "pk-guess-guess-guess"))[0] == 401
    status, retry_after = await from_address("127.0.0.2", "pk-guess-guess-guess")
    assert status == 429 and retry_after is not None and int(retry_after) >= 1
    assert (await from_address("127.0.0.2", ALICE))[0] == 429  # locked, even with a good key
    assert (await from_address("127.0.0.1", ALICE))[0] == 200  # another address is not


async def test_the_llm_failing_is_an_error_not_an_answer(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(status=500)
    async with client(bot) as openai_client:
        with pytest.raises(openai.APIStatusError) as failed:
            await openai_client.chat.completions.create(model="parley", messages=[user("hi")])
    assert failed.value.status_code == 502
    status, body, _ = await call(bot, "POST", "/sessions/s5/messages", json={"content": "hi"})
    assert status == 502
    assert_openai_error(body, "reply_failed")
    fake_llm.behaviour = Behaviour(reply=echo_reply)
    async with client(bot) as openai_client:
        answer = await openai_client.chat.completions.create(
            model="parley", messages=[user("back?")]
        )
    assert answer.choices[0].message.content == echoed("back?")


def _shape(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, leaning towards the fields a request has."""
    kinds = ["null", "bool", "int", "float", "text", "list", "object", "message"]
    kind = rng.choice(kinds[:5] if depth > 3 else kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2, 10**30, 512])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 2.5])
    if kind == "text":
        return rng.choice(["", "hi", "/help", "/ask", "user", "system", "\x00", "🙂" * 3, "parley"])
    if kind == "list":
        return [_shape(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "message":
        return {"role": _shape(rng, depth + 1), "content": _shape(rng, depth + 1)}
    fields = ["model", "messages", "stream", "temperature", "max_tokens", "n", "content"]
    fields += ["stream_options", "max_completion_tokens", "x"]
    return {rng.choice(fields): _shape(rng, depth + 1) for _ in range(rng.randrange(6))}


async def test_nothing_a_client_sends_breaks_the_api(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    settings = api_settings(tmp_path, fake_llm.url, api={"requests_per_minute": 0})
    async with api_bot(settings) as bot:
        await _fuzz(bot)


async def _fuzz(bot: RunningApi) -> None:
    rng = random.Random(26)
    paths = ["/chat/completions", "/sessions/fuzz/messages"]
    statuses = set()
    for _ in range(80):
        payload = _shape(rng)
        status, body, _ = await call(bot, "POST", rng.choice(paths), json=payload)
        statuses.add(status)
        assert status in (200, 400, 404), (payload, status, body)
        if status != 200:
            assert_openai_error(body)
    for raw in (b"", b"\x00" * 10, b'{"messages": [' * 5000, b'{"content": "\xc3"}', b"nul"):
        status, body, _ = await call(bot, "POST", paths[raw[:1] == b"{"], data=raw)
        assert status == 400, (raw[:20], body)
    assert {400} <= statuses
    async with client(bot) as openai_client:  # still serving
        answer = await openai_client.chat.completions.create(model="parley", messages=[user("ok?")])
    assert answer.choices[0].message.content == echoed("ok?")


# -- connections and stopping -------------------------------------------------------------------


async def test_a_client_that_leaves_mid_stream_frees_the_llm(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply="word " * 500, delay_s=0.02)  # ten seconds of words
    body = {"messages": [user("talk")], "stream": True}
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(bot.url + "/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            if b'"content": "word' in line:
                break  # the answer streams: leave
    await eventually(lambda: fake_llm.cancelled == 1)
    assert fake_llm.in_flight == 0
    assert bot.app.engine.queue.in_use == 0


async def test_a_stop_lets_answers_finish_and_refuses_new_requests(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=echo_reply, delay_s=0.1)
    async with api_bot(api_settings(tmp_path, fake_llm.url), stop_grace_s=30.0) as bot:
        answering = asyncio.create_task(
            call(bot, "POST", "/sessions/s/messages", json={"content": "one two three four"})
        )
        await eventually(lambda: fake_llm.in_flight == 1)
        stopping = asyncio.create_task(bot.adapter.stop())
        await eventually(lambda: not bot.adapter.connected)
        status, body, _ = await call(bot, "GET", "/models")
        assert status == 503 and body["error"]["code"] == "unavailable"
        status, body, _ = await answering
        assert status == 200
        assert body["choices"][0]["message"]["content"] == echoed("one two three four")
        await stopping
