"""The answer cache: an identical request is answered from the store at once, without the LLM,
on every platform; only complete replies are kept; the store expires and evicts them, and on
PostgreSQL every process shares them. The fake LLM records every request it gets."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bot.storage import Store
from tests.fakes.api_bot import ALICE, RunningApi, api_bot, api_settings
from tests.fakes.drivers import PlatformDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import telegram_bot, telegram_replies, telegram_settings
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import HANG_GUARD_S

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

WORDS = 20
SLOW = Behaviour(reply=" ".join(f"w{i}" for i in range(WORDS)), delay_s=0.1)  # >= 2 s a reply
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return SLOW


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLMServer) -> AsyncIterator[RunningApi]:
    models = {"qwen": {"model": "qwen-7b"}}
    settings = api_settings(tmp_path, fake_llm.url, cache={"enabled": True}, llm={"models": models})
    async with api_bot(settings) as running:
        yield running


def client(bot: RunningApi) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=bot.url, api_key=ALICE, max_retries=0)


async def cache_counts(bot: RunningApi) -> dict[str, float]:
    """The answer cache's hits and misses as /metrics shows them (this process's counters)."""
    async with aiohttp.ClientSession() as http, http.get(bot.url[: -len("/v1")] + "/metrics") as r:
        text = await r.text()
    found = re.findall(r'^parley_answer_cache_total\{result="(\w+)"\} (\S+)$', text, flags=re.M)
    return {result: float(value) for result, value in found}


async def test_the_same_request_twice_is_answered_at_once_without_the_llm(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    before = await cache_counts(bot)
    async with client(bot) as openai_client:
        started = time.perf_counter()
        first = await openai_client.chat.completions.create(model="parley", messages=QUESTION)
        generated_s = time.perf_counter() - started
        started = time.perf_counter()
        second = await openai_client.chat.completions.create(model="parley", messages=QUESTION)
        cached_s = time.perf_counter() - started
        # A streamed request sends the LLM the same request: it is answered from the cache too.
        stream = await openai_client.chat.completions.create(
            model="parley", messages=QUESTION, stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert len(fake_llm.requests) == 1
    assert second.choices[0].message.content == first.choices[0].message.content == SLOW.reply
    assert streamed == SLOW.reply
    assert second.usage == first.usage
    # The LLM takes two seconds here; the cache answers in far less (no timing target: bench/).
    assert generated_s >= 1.5 and cached_s < 1.0
    after = await cache_counts(bot)
    assert after["hit"] - before.get("hit", 0) == 2
    assert after["miss"] - before.get("miss", 0) == 1


async def test_a_different_request_reaches_the_llm(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply="fast")
    other: list[ChatCompletionMessageParam] = [{"role": "user", "content": "And of Italy?"}]
    async with client(bot) as openai_client:
        create = openai_client.chat.completions.create
        await create(model="parley", messages=QUESTION)
        await create(model="parley", messages=QUESTION, temperature=0.1)  # sampling differs
        await create(model="parley", messages=QUESTION, max_tokens=20)
        await create(model="qwen", messages=QUESTION)  # another model
        await create(model="parley", messages=other)  # another prompt
        system: list[ChatCompletionMessageParam] = [{"role": "system", "content": "Hi"}]
        await create(model="parley", messages=[*system, *QUESTION])
        assert len(fake_llm.requests) == 6
        await create(model="parley", messages=other)
    assert len(fake_llm.requests) == 6


async def test_partial_and_failed_replies_are_never_kept(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    async with client(bot) as openai_client:
        create = openai_client.chat.completions.create
        fake_llm.behaviour = Behaviour(reply=SLOW.reply, die_after_chunks=3)
        cut = await create(model="parley", messages=QUESTION)
        assert cut.choices[0].finish_reason == "length"  # what came, marked cut off
        fake_llm.behaviour = Behaviour(status=500)
        with pytest.raises(openai.APIStatusError):
            await create(model="parley", messages=QUESTION)
        fake_llm.behaviour = Behaviour(reply=SLOW.reply)
        whole = await create(model="parley", messages=QUESTION)
        assert len(fake_llm.requests) == 3  # neither the cut nor the failed reply was kept
        again = await create(model="parley", messages=QUESTION)
    assert len(fake_llm.requests) == 3
    assert again.choices[0].message.content == whole.choices[0].message.content == SLOW.reply


async def test_a_cache_the_store_cannot_serve_is_a_miss_not_a_failure(
    bot: RunningApi, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply="fast")
    await bot.app.store.db.write(lambda tx: tx.execute("DROP TABLE answer_cache"))
    async with client(bot) as openai_client:
        for _ in range(2):
            answer = await openai_client.chat.completions.create(model="parley", messages=QUESTION)
            assert answer.choices[0].message.content == "fast"
    assert len(fake_llm.requests) == 2


async def test_the_cache_is_off_unless_enabled(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.behaviour = Behaviour(reply="fast")
    async with api_bot(api_settings(tmp_path, fake_llm.url)) as bot, client(bot) as openai_client:
        for _ in range(2):
            await openai_client.chat.completions.create(model="parley", messages=QUESTION)
    assert len(fake_llm.requests) == 2


async def test_a_cached_answer_is_shown_in_a_chat_as_one_message(
    tmp_path: Path, fake_llm: FakeLLMServer, driver: PlatformDriver
) -> None:
    fake_llm.behaviour = Behaviour(reply=SLOW.reply, delay_s=0.05)
    settings = driver.settings(tmp_path, fake_llm.url)
    settings.cache.enabled = True
    async with driver.running(settings) as running:
        ann, bob = driver.person("Ann"), driver.person("Bob")
        await driver.say(ann, "Name twenty words.")
        await driver.wait_until(lambda: driver.replies(ann) == [SLOW.reply])
        assert driver.edit_calls()[0] > 0  # Ann's reply streamed in
        await _kept(running.app.store)
        edits = driver.edit_calls()[0]
        # Bob's private chat gets the very same prompt: persona, no history, the same words.
        await driver.say(bob, "Name twenty words.")
        await driver.wait_until(lambda: driver.replies(bob))
        assert driver.replies(bob) == [SLOW.reply]
        assert driver.edit_calls()[0] == edits  # one message, never edited
        assert len(fake_llm.requests) == 1


async def _kept(store: Store) -> None:
    """Until the first reply is in the cache (it is kept once it has been shown)."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not (await store.fetch("SELECT COUNT(*) FROM answer_cache"))[0][0]:
            await asyncio.sleep(0.01)


# -- the store's side ---------------------------------------------------------------------------


async def test_answers_expire_and_the_oldest_are_evicted(store: Store) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    for key in ("a", "b", "c"):
        await store.keep_answer(key, f"answer {key}", usage, ttl_s=60, max_entries=2)
    assert await store.cached_answer("a") is None  # evicted: beyond the two newest
    assert await store.cached_answer("c") == ("answer c", usage)
    await store.keep_answer("short", "soon gone", {}, ttl_s=0.05, max_entries=10)
    assert await store.cached_answer("short") == ("soon gone", {})
    await asyncio.sleep(0.1)
    assert await store.cached_answer("short") is None  # expired: never served
    await store.keep_answer("d", "answer d", {}, ttl_s=60, max_entries=10)
    keys = {row[0] for row in await store.fetch("SELECT key FROM answer_cache")}
    assert keys == {"b", "c", "d"}  # the expired row was removed


async def test_processes_sharing_postgresql_share_the_cache(
    tmp_path: Path, fake_llm: FakeLLMServer, postgres_url: str
) -> None:
    fake_llm.behaviour = Behaviour(reply="shared")
    settings = api_settings(
        tmp_path, fake_llm.url, cache={"enabled": True}, storage={"url": postgres_url}
    )
    async with api_bot(settings) as one, api_bot(settings) as two:
        async with client(one) as first:
            await first.chat.completions.create(model="parley", messages=QUESTION)
        async with client(two) as second:
            answer = await second.chat.completions.create(model="parley", messages=QUESTION)
    assert answer.choices[0].message.content == "shared"
    assert len(fake_llm.requests) == 1


@pytest.mark.speech
async def test_a_cached_answer_is_spoken_as_usual(
    tmp_path: Path, fake_llm: FakeLLMServer, telegram: FakeTelegramAPI
) -> None:
    fake_llm.behaviour = Behaviour(reply="The capital of France is Paris.")
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, engine={"voice_mode": "always"})
    settings.cache.enabled = True
    ann, bob = telegram.user(7001, "Ann"), telegram.user(7002, "Bob")
    async with telegram_bot(settings, speech=True) as running:
        telegram.send_text(telegram.private_chat(ann), ann, "What is the capital of France?")
        await telegram.wait_for(lambda a: a.calls_to("sendVoice", ok=True))
        await _kept(running.app.store)
        telegram.send_text(telegram.private_chat(bob), bob, "What is the capital of France?")
        await telegram.wait_for(lambda a: len(a.calls_to("sendVoice", ok=True)) == 2)
    assert len(fake_llm.requests) == 1
    voices = telegram.calls_to("sendVoice", ok=True)
    assert [call.params["chat_id"] for call in voices] == [7001, 7002]
    assert telegram_replies(telegram, 7002) == ["The capital of France is Paris."]
