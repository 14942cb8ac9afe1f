"""The conversation engine end to end on the real app, with the fake LLM server behind it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from bot.app import ParleyApp
from bot.errors import DeliveryError
from bot.messages import Msg, say
from tests.conftest import make_settings, message
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.targets import RecordingTarget


def echo(body: dict[str, Any]) -> str:
    return f"You said {last_user_text(body)}."


def prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(m["content"] for m in body["messages"])
    return str(body["prompt"])


def rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_reply_streams_and_history_carries_across_turns(
    app: ParleyApp, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=echo)
    first = RecordingTarget()
    await app.engine.handle(message("apples"), first)
    assert first.text == "You said apples."
    assert first.calls[0] == "send" and first.calls[-1] == "finalize"
    second = RecordingTarget()
    await app.engine.handle(message("pears"), second)
    assert second.text == "You said pears."
    history = fake_llm.requests[1]["messages"]
    assert [(m["role"], m["content"]) for m in history[1:]] == [
        ("user", "apples"),
        ("assistant", "You said apples."),
        ("user", "pears"),
    ]


async def test_history_survives_a_restart(fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    fake_llm.behaviour = Behaviour(reply=echo)
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as parley:
        await parley.engine.handle(message("remember kiwis"), RecordingTarget())
    async with ParleyApp(settings, speech=False) as parley:
        await parley.engine.handle(message("what fruit?"), RecordingTarget())
    assert "remember kiwis" in prompt_text(fake_llm.requests[-1])
    assert "You said remember kiwis." in prompt_text(fake_llm.requests[-1])


async def test_channels_never_see_each_other(app: ParleyApp, fake_llm: FakeLLMServer) -> None:
    await app.engine.handle(message("the password is swordfish", channel="A"), RecordingTarget())
    await app.engine.handle(message("hello", channel="B"), RecordingTarget())
    assert "swordfish" not in prompt_text(fake_llm.requests[-1])
    await app.engine.handle(message("and again", channel="A"), RecordingTarget())
    assert "swordfish" in prompt_text(fake_llm.requests[-1])


async def test_one_channel_answers_in_arrival_order(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.behaviour = Behaviour(reply=echo, delay_s=0.01)
    targets = [RecordingTarget() for _ in range(5)]
    tasks = []
    for i, target in enumerate(targets):
        tasks.append(asyncio.create_task(app.engine.handle(message(f"m{i}"), target)))
        await asyncio.sleep(0)  # arrival order = creation order
    await asyncio.gather(*tasks)
    assert [t.text for t in targets] == [f"You said m{i}." for i in range(5)]
    assert fake_llm.max_in_flight == 1  # one reply at a time in a channel
    # Each prompt holds every earlier turn, answered, in order.
    last = [m["content"] for m in fake_llm.requests[-1]["messages"][1:]]
    assert last == [x for i in range(4) for x in (f"m{i}", f"You said m{i}.")] + ["m4"]
    assert targets[0].positions == [] and targets[1].positions == [1]
    assert targets[4].positions == [4]
    stored = rows(tmp_path / "parley.db")
    assert [r[1] for r in stored] == [*last, "You said m4."]
    assert {r[2] for r in stored} == {"complete"}


async def test_channels_share_the_llm_slots(fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    fake_llm.behaviour = Behaviour(reply="slow reply here", delay_s=0.05)
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url, "concurrency": 2})
    async with ParleyApp(settings, speech=False) as parley:
        targets = [RecordingTarget(key=f"k{i}") for i in range(4)]
        await asyncio.gather(
            *(
                parley.engine.handle(message("hi", channel=f"ch{i}"), t)
                for i, t in enumerate(targets)
            )
        )
    assert fake_llm.max_in_flight == 2
    assert sorted(p for t in targets for p in t.positions) == [1, 2]
    assert all(t.text == "slow reply here" for t in targets)


async def test_backend_down_gives_a_clear_error_and_keeps_the_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm={"base_url": "http://127.0.0.1:9"})
    async with ParleyApp(settings, speech=False) as parley:
        target = RecordingTarget()
        await parley.engine.handle(message("are you there?"), target)
    assert target.notices == [say(Msg.LLM_DOWN)]
    assert target.calls == []  # no half-made reply message
    assert rows(tmp_path / "parley.db") == [
        ("user", "are you there?", "complete"),
        ("assistant", "", "failed"),
    ]


async def test_stream_killed_mid_reply_keeps_the_partial_reply(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.behaviour = Behaviour(reply="alpha beta gamma delta epsilon", die_after_chunks=3)
    target = RecordingTarget()
    await app.engine.handle(message("go"), target)
    assert target.text == f"alpha beta gamma \n\n{say(Msg.CUT_OFF)}"
    assert rows(tmp_path / "parley.db")[-1] == ("assistant", "alpha beta gamma", "partial")
    # The partial reply is part of the conversation the next prompt sees.
    fake_llm.behaviour = Behaviour()
    await app.engine.handle(message("continue"), RecordingTarget())
    assert "alpha beta gamma" in prompt_text(fake_llm.requests[-1])


async def test_fails_over_to_a_second_backend(fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    fake_llm.behaviour = Behaviour(reply="second backend here")
    settings = make_settings(
        tmp_path, llm={"base_url": "http://127.0.0.1:9", "fallback_urls": [fake_llm.url]}
    )
    async with ParleyApp(settings, speech=False) as parley:
        target = RecordingTarget()
        await parley.engine.handle(message("hi"), target)
    assert target.text == "second backend here"


async def test_config_set_is_admin_only_and_audited(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    engine, commands = app.engine, app.commands
    refused = await commands.run(message(user="mallory"), "config", "set temperature 1.5")
    assert refused == "Sorry, only admins can change settings."
    done = await commands.run(message(user="root", is_admin=True), "config", "set temperature 1.5")
    assert done.startswith("temperature is now 1.5 (was 0.7)")
    bad = await commands.run(message(is_admin=True), "config", "set temperature hot")
    assert bad.startswith("Can't set temperature:")
    unknown = await commands.run(message(is_admin=True), "config", "set colour red")
    assert "unknown key 'colour'" in unknown
    # The change applies to the next message, without a restart.
    await engine.handle(message("hi"), RecordingTarget())
    assert fake_llm.requests[-1]["temperature"] == 1.5
    shown = await commands.run(message(), "config", "show")
    assert "temperature = 1.5" in shown
    audit = (
        sqlite3.connect(tmp_path / "parley.db")
        .execute("SELECT actor_id, action, key, old_value, new_value FROM audit_log ORDER BY id")
        .fetchall()
    )
    assert audit == [
        ("mallory", "config.refused", "temperature", None, "1.5"),
        ("root", "config.set", "temperature", "0.7", "1.5"),
    ]


async def test_persona_reset_and_forget_commands(app: ParleyApp, fake_llm: FakeLLMServer) -> None:
    engine, commands = app.engine, app.commands
    assert "Only admins" in await commands.run(message(), "persona", "pirate")
    assert "persona is now pirate" in await commands.run(
        message(is_private=True), "persona", "pirate"
    )
    await engine.handle(message("hello"), RecordingTarget())
    assert "talk like a pirate" in fake_llm.requests[-1]["messages"][0]["content"]
    assert "Conversation cleared (2 messages)" in await commands.run(message(), "reset")
    await engine.handle(message("fresh start"), RecordingTarget())
    assert "hello" not in prompt_text(fake_llm.requests[-1])
    assert await commands.run(message(), "forget") == "Deleted 1 of your messages."


async def test_too_long_input_is_refused_politely(app: ParleyApp, fake_llm: FakeLLMServer) -> None:
    target = RecordingTarget()
    await app.engine.handle(message("x" * 5000), target)
    assert target.notices == [
        "Your message is too long (5000 characters; the limit is 4000). Please shorten it."
    ]
    assert fake_llm.requests == []


async def test_cancelled_reply_is_stored_as_partial(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.behaviour = Behaviour(reply="word " * 100, delay_s=0.02)
    target = RecordingTarget()
    task = asyncio.create_task(app.engine.handle(message("talk"), target))
    await target.first_text.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    role, content, status = rows(tmp_path / "parley.db")[-1]
    assert (role, status) == ("assistant", "partial")
    assert content.startswith("word word") and len(content) < len("word " * 100)


async def test_stt_language_must_be_one_whisper_knows(app: ParleyApp) -> None:
    admin = message(is_admin=True)
    refused = await app.commands.run(admin, "config", "set stt_language klingon")
    assert refused.startswith("Can't set stt_language: 'klingon' is not a language Whisper knows")
    assert "stt_language is now de" in await app.commands.run(
        admin, "config", "set stt_language de"
    )
    assert "stt_language is now auto" in await app.commands.run(
        admin, "config", "set stt_language auto"
    )


async def test_a_chat_that_refuses_the_reply_keeps_it_stored(
    app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    class KickedOut(RecordingTarget):
        async def send(self, text: str) -> str:
            raise DeliveryError("Forbidden: bot was kicked from the group chat")

    await app.engine.handle(message("hello"), KickedOut())
    assert rows(tmp_path / "parley.db")[-1] == (
        "assistant",
        "Hello from the fake model.",
        "complete",
    )
    follow = RecordingTarget()
    await app.engine.handle(message("still there?"), follow)  # the engine carries on
    assert follow.text == "Hello from the fake model."
