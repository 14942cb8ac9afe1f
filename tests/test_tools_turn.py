"""Tools in a turn, through the real engine: the fake LLM streams tool calls the way llama-server
does, the SDK-built fake MCP server (tests/fakes/mcp_servers.py) answers them over stdio, and a
recording target shows what the chat would have shown."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import ParleyApp
from bot.messages import Msg, say
from bot.tools.messages import TOOL_DATA_RULE
from tests.conftest import make_settings, message
from tests.fakes.llm_server import (
    Behaviour,
    FakeLLMServer,
    FakeToolCall,
    last_user_text,
    offered_tools,
    tool_messages,
    tool_results,
)
from tests.fakes.mcp_servers import command
from tests.fakes.targets import RecordingTarget
from tests.fakes.waits import HANG_GUARD_S

FAKE_TOOLS = {"echo", "big", "fail", "crash", "freeze", "env_length", "wait"}


def result_of(message: dict[str, Any]) -> str:
    """A `tool` message's result, without the data marking around it."""
    content = str(message["content"])
    return content.split("\n", 1)[1].rsplit("\n", 1)[0]


def calls_once(*calls: FakeToolCall) -> Behaviour:
    """The fake model calls `calls` in its first round, then answers quoting every result."""

    def tool_calls(body: dict[str, Any]) -> list[FakeToolCall]:
        return [] if tool_results(body) else list(calls)

    def reply(body: dict[str, Any]) -> str:
        results = [result_of(m) for m in tool_results(body)]
        return "The tools said: " + " | ".join(results) if results else "No tools needed."

    return Behaviour(reply=reply, tool_calls=tool_calls)


def stored(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def tool_app(fake_llm: FakeLLMServer, tmp_path: Path) -> AsyncIterator[ParleyApp]:
    """The real app with the fake MCP server configured and tools on by default."""
    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url},
        tools={"enabled": True, "servers": {"fake": {"command": command("stdio")}}},
    )
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.tools is not None
        await parley.tools.wait_settled(HANG_GUARD_S)
        yield parley


async def test_a_tool_round_shows_the_tool_sends_its_result_back_and_is_stored(
    tool_app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.behaviour = calls_once(FakeToolCall("echo", '{"text": "forty-two"}'))
    target = RecordingTarget()
    await tool_app.engine.handle(message("ask the tool"), target)

    assert target.text == say(Msg.TOOL_RUNNING, tools="`echo`") + "\n\nThe tools said: forty-two"
    # The tool line was the reply's first message, before any answer text.
    assert next(iter(target.messages.values())).startswith("🔧 `echo`…")
    first, second = fake_llm.requests
    assert set(offered_tools(first)) == FAKE_TOOLS
    assert TOOL_DATA_RULE in first["messages"][0]["content"]
    (call_id,) = fake_llm.call_ids
    asked, (result,) = second["messages"][-2], tool_messages(second)
    assert asked["role"] == "assistant" and asked["content"] is None
    assert asked["tool_calls"] == [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": "echo", "arguments": '{"text": "forty-two"}'},
        }
    ]
    assert result["tool_call_id"] == call_id
    assert result["content"] == '<tool_result tool="echo">\nforty-two\n</tool_result>'

    ((content, status, exchange),) = stored(
        tmp_path / "parley.db",
        "SELECT content, status, tool_exchange FROM messages WHERE role = 'assistant'",
    )
    assert (content, status) == ("The tools said: forty-two", "complete")
    assert json.loads(exchange)["rounds"][0]["calls"][0]["result"] == "forty-two"
    ((key, value),) = stored(
        tmp_path / "parley.db",
        "SELECT key, new_value FROM audit_log WHERE action = 'tool.call'",
    )
    audited = json.loads(value)
    assert key == "echo" and audited["outcome"] == "ok" and audited["server"] == "fake"
    assert "forty-two" not in value  # neither the arguments nor the output


async def test_text_before_two_calls_stays_a_paragraph_and_is_replayed_so(
    tool_app: ParleyApp, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    # A model that says what it is about to do, then calls two tools in one round.
    fake_llm.behaviour = calls_once(
        FakeToolCall("echo", '{"text": "one"}'), FakeToolCall("env_length", '{"name": "NONE"}')
    )
    fake_llm.behaviour.before_calls = "Let me look."
    target = RecordingTarget()
    await tool_app.engine.handle(message("look it up"), target)
    assert target.text == "Let me look.\n\n🔧 `echo`, `env_length`…\n\nThe tools said: one | 0"
    ((content,),) = stored(
        tmp_path / "parley.db", "SELECT content FROM messages WHERE role = 'assistant'"
    )
    assert content == "Let me look.\n\nThe tools said: one | 0"

    fake_llm.behaviour = Behaviour(reply="Fine.")
    await tool_app.engine.handle(message("thanks"), RecordingTarget())
    replayed = fake_llm.requests[-1]["messages"][2:-1]
    assert [m["role"] for m in replayed] == ["assistant", "tool", "tool", "assistant"]
    assert replayed[0]["content"] == "Let me look."
    assert [c["id"] for c in replayed[0]["tool_calls"]] == fake_llm.call_ids
    assert [m["tool_call_id"] for m in replayed[1:3]] == fake_llm.call_ids
    assert replayed[3]["content"] == "The tools said: one | 0"


async def test_the_last_round_offers_no_tools_so_the_model_answers(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url},
        tools={
            "enabled": True,
            "max_rounds": 2,
            "servers": {"fake": {"command": command("stdio")}},
        },
    )
    # A model that would call tools for ever: it answers only when it is offered none.
    fake_llm.behaviour = Behaviour(
        reply=lambda body: f"Answered after {len(tool_messages(body))} results.",
        tool_calls=lambda body: (
            [FakeToolCall("echo", '{"text": "again"}')] if offered_tools(body) else []
        ),
    )
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.tools is not None
        await parley.tools.wait_settled(HANG_GUARD_S)
        target = RecordingTarget()
        await parley.engine.handle(message("loop"), target)
    assert [bool(offered_tools(body)) for body in fake_llm.requests] == [True, True, False]
    assert target.text == "🔧 `echo`…\n🔧 `echo`…\n\nAnswered after 2 results."


async def test_the_next_turn_carries_the_exchange_and_tools_off_stops_both(
    tool_app: ParleyApp, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = calls_once(FakeToolCall("echo", '{"text": "kiwi"}'))
    await tool_app.engine.handle(message("first"), RecordingTarget())
    (call_id,) = fake_llm.call_ids
    fake_llm.behaviour = Behaviour(reply=lambda body: f"Echo {last_user_text(body)}.")
    await tool_app.engine.handle(message("second"), RecordingTarget())
    history = fake_llm.requests[-1]["messages"][1:]
    assert [
        (m["role"], m.get("tool_call_id") or m.get("tool_calls", [{}])[0].get("id"))
        for m in history
    ] == [
        ("user", None),
        ("assistant", call_id),
        ("tool", call_id),
        ("assistant", None),
        ("user", None),
    ]
    assert history[3]["content"] == "The tools said: kiwi"

    admin = message("", is_admin=True)
    answer = await tool_app.commands.run(admin, "config", "set tools off")
    assert answer == say(Msg.SETTING_CHANGED, key="tools", value="False", old="True")
    await tool_app.engine.handle(message("third"), RecordingTarget())
    last = fake_llm.requests[-1]
    assert "tools" not in last and TOOL_DATA_RULE not in last["messages"][0]["content"]
    assert [m["role"] for m in last["messages"][1:]] == [
        "user", "assistant", "user", "assistant", "user"
    ]  # fmt: skip


async def test_calls_the_model_was_not_offered_are_ignored(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.behaviour = Behaviour(
        reply="Plain text.", tool_calls=lambda body: [FakeToolCall("echo", "{}")]
    )
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.tools is None
        target = RecordingTarget()
        await parley.engine.handle(message("hi"), target)
    assert "tools" not in fake_llm.requests[0] and len(fake_llm.requests) == 1
    assert target.notices == [say(Msg.EMPTY_REPLY)]
