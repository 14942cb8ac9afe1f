"""Tools on the platforms, end to end: the real `mcp-server-time` over stdio, the SDK-built fakes
(stdio and streamable HTTP, some of them broken), the fake LLM streaming tool calls the way
llama-server does, and the real adapters on their loopback fakes. The tool servers come from the
environment (`PARLEY_TOOLS__SERVERS`), as the docs show."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.app import ParleyApp
from bot.delivery.stream import DEFAULT_MARKER
from bot.messages import Msg, say
from tests.conftest import make_settings
from tests.fakes.drivers import Person, PlatformDriver, open_driver
from tests.fakes.llm_server import (
    Behaviour,
    FakeLLMServer,
    FakeToolCall,
    last_user_text,
    offered_tools,
    tool_messages,
    tool_results,
)
from tests.fakes.mcp_servers import HttpFake, command
from tests.fakes.stored import stored_rows
from tests.fakes.waits import HANG_GUARD_S, eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

CLOCK = {"clock": {"command": ["mcp-server-time", "--local-timezone", "UTC"]}}
FAULT_TIMEOUT_S = 2.0
# A fault ends its call within tools.timeout_s; the rest is the reply's own time on a loaded
# machine. What is checked is that it ends at all, well before the hang guard.
ANSWERED_WITHIN_S = FAULT_TIMEOUT_S + 10.0


def configure_tools(monkeypatch: pytest.MonkeyPatch, servers: dict[str, Any], **tools: Any) -> None:
    """The `[tools]` section through the environment."""
    monkeypatch.setenv("PARLEY_TOOLS__ENABLED", "true")
    monkeypatch.setenv("PARLEY_TOOLS__SERVERS", json.dumps(servers))
    for key, value in tools.items():
        monkeypatch.setenv(f"PARLEY_TOOLS__{key.upper()}", str(value))


def result_of(message: dict[str, Any]) -> str:
    """A `tool` message's result, without the data marking around it."""
    return str(message["content"]).split("\n", 1)[1].rsplit("\n", 1)[0]


def the_date(body: dict[str, Any]) -> str:
    """The fake model's answer: the date the clock tool returned, or what it was asked."""
    results = tool_results(body)
    if not results:
        return f"echo {last_user_text(body)}"
    return f"Today is {json.loads(result_of(results[-1]))['datetime'][:10]} (UTC)."


def asks_the_clock(body: dict[str, Any]) -> list[FakeToolCall]:
    """The fake model calls the clock when asked for the date and offered the tool."""
    wanted = "date" in last_user_text(body) and not tool_results(body)
    if wanted and "get_current_time" in offered_tools(body):
        return [FakeToolCall("get_current_time", '{"timezone": "UTC"}')]
    return []


async def ask(driver: PlatformDriver, person: Person, text: str, expected: str) -> str:
    """`person` writes `text`; the bot's reply that holds `expected`, once it is final."""
    before = len(driver.replies(person))

    def answer() -> str | None:
        new = driver.replies(person)[before:]
        done = [r for r in new if expected in r and not r.endswith(DEFAULT_MARKER)]
        return done[-1] if done else None

    await driver.say(person, text)
    try:
        await driver.wait_until(answer)
    except TimeoutError:
        raise AssertionError(driver.replies(person)) from None
    found = answer()
    assert found is not None
    return found


async def test_the_real_time_server_answers_in_a_chat(
    driver: PlatformDriver,
    fake_llm: FakeLLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_tools(monkeypatch, CLOCK)
    fake_llm.behaviour = Behaviour(reply=the_date, tool_calls=asks_the_clock)
    ann = driver.person("Ann")
    settings = driver.settings(tmp_path, fake_llm.url, admin_ids=[ann.id])
    async with driver.running(settings) as running:
        hub = running.app.tools
        await hub.wait_settled(HANG_GUARD_S)
        listing = await driver.command(ann, "tools")
        assert listing.startswith(say(Msg.TOOLS_SHOWN)), listing
        assert "get_current_time (clock)" in listing and "convert_time (clock)" in listing

        before = datetime.now(UTC).date().isoformat()
        answer = await ask(driver, ann, "what is the date today?", "Today is")
        after = datetime.now(UTC).date().isoformat()
        assert answer.startswith("🔧") and "get_current_time" in answer.splitlines()[0]
        assert answer.endswith((f"Today is {before} (UTC).", f"Today is {after} (UTC)."))
        first, second = fake_llm.requests
        assert set(offered_tools(first)) == {"get_current_time", "convert_time"}
        (call_id,) = fake_llm.call_ids
        (result,) = tool_messages(second)
        assert result["tool_call_id"] == call_id
        assert second["messages"][-2]["tool_calls"][0]["id"] == call_id

        # The next turn's prompt carries what the tool did.
        await ask(driver, ann, "thanks", "echo thanks")
        replayed = fake_llm.requests[-1]
        assert [m["tool_call_id"] for m in tool_messages(replayed)] == [call_id]

        changed = await driver.command(ann, "config set", "tools", "off")
        assert changed == say(Msg.SETTING_CHANGED, key="tools", value="False", old="True")
        assert await driver.command(ann, "tools") == say(Msg.TOOLS_OFF)
        await ask(driver, ann, "what is the date now?", "echo what is the date now?")
        last = fake_llm.requests[-1]
        assert "tools" not in last and tool_messages(last) == []
    audited = stored_rows(
        tmp_path / "parley.db", "SELECT key, new_value FROM audit_log WHERE action = 'tool.call'"
    )
    assert [(key, json.loads(value)["outcome"]) for key, value in audited] == [
        ("get_current_time", "ok")
    ]


def broken_tool(body: dict[str, Any]) -> list[FakeToolCall]:
    """Each person's question names the broken tool the fake model calls (once)."""
    if tool_results(body):
        return []
    tool = last_user_text(body).split()[-1]
    arguments = {"fail": '{"message": "the disk is on fire"}'}.get(tool, "{}")
    return [FakeToolCall(tool, arguments)] if tool in offered_tools(body) else []


def reports_the_result(body: dict[str, Any]) -> str:
    results = tool_results(body)
    if not results:
        return f"echo {last_user_text(body)}"
    return f"The tool failed: {result_of(results[-1])}"


async def test_hanging_crashing_and_failing_servers_never_hang_a_chat(
    fake_llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One server per fault (a frozen server answers nothing at all, whichever tool is called).
    servers = {
        "frozen": {"command": command("stdio"), "tools": ["freeze"]},
        "crashing": {"command": command("stdio"), "tools": ["crash"]},
        "failing": {"command": command("stdio"), "tools": ["fail"]},
        "silent": {"command": command("silent")},  # never answers its start
    }
    configure_tools(monkeypatch, servers, timeout_s=FAULT_TIMEOUT_S)
    fake_llm.behaviour = Behaviour(reply=reports_the_result, tool_calls=broken_tool)
    async with open_driver("telegram") as driver:
        settings = driver.settings(tmp_path, fake_llm.url)
        async with driver.running(settings) as running:
            hub = running.app.tools
            # The silent server is still starting, and stays so: the turns do not wait for it.
            await eventually(lambda: [s.state for s in hub.status()][:3] == ["ready"] * 3)
            people = {tool: driver.person(tool) for tool in ("freeze", "crash", "fail")}

            async def timed(person: Person, tool: str) -> tuple[str, float]:
                started = asyncio.get_running_loop().time()
                answer = await ask(driver, person, f"please run {tool}", "The tool failed")
                return answer, asyncio.get_running_loop().time() - started

            answers = await asyncio.gather(*(timed(p, t) for t, p in people.items()))
            froze, crashed, failed = (answer for answer, _ in answers)
            assert f"did not answer within {FAULT_TIMEOUT_S:g} s" in froze
            assert "restarted" in crashed or "unavailable" in crashed, crashed
            assert "Error executing tool fail" in failed, failed
            assert all(elapsed < ANSWERED_WITHIN_S for _, elapsed in answers), answers
            # Each chat goes on: the next message is answered (a plain one, no tool).
            for person in people.values():
                await ask(driver, person, "still there?", "echo still there?")
    outcomes = stored_rows(
        tmp_path / "parley.db", "SELECT key, new_value FROM audit_log WHERE action = 'tool.call'"
    )
    assert {key: json.loads(value)["outcome"] for key, value in outcomes} == {
        "freeze": "timeout",
        "crash": "unavailable",
        "fail": "tool_error",
    }


@pytest.fixture
async def http_server() -> AsyncIterator[HttpFake]:
    fake = HttpFake()
    await fake.start()
    yield fake
    await fake.kill()


async def test_a_streamable_http_server_works_in_a_chat_like_stdio(
    fake_llm: FakeLLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: HttpFake,
) -> None:
    configure_tools(monkeypatch, {"remote": {"url": http_server.url, "tools": ["echo"]}})
    fake_llm.behaviour = Behaviour(
        reply=lambda body: "The echo said: " + " ".join(map(result_of, tool_results(body))),
        tool_calls=lambda body: (
            [] if tool_results(body) else [FakeToolCall("echo", '{"text": "over http"}')]
        ),
    )
    async with open_driver("discord") as driver:
        bea = driver.person("Bea")
        async with driver.running(driver.settings(tmp_path, fake_llm.url)) as running:
            await running.app.tools.wait_settled(HANG_GUARD_S)
            answer = await ask(driver, bea, "call it", "The echo said")
    assert answer.endswith("The echo said: over http")
    assert offered_tools(fake_llm.requests[0]) == ["echo"]


async def test_the_console_shows_the_tool_then_the_answer(
    fake_llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.console import ConsoleChat

    configure_tools(monkeypatch, {"fake": {"command": command("stdio")}})
    fake_llm.behaviour = Behaviour(
        reply=lambda body: "The echo said: " + " ".join(map(result_of, tool_results(body))),
        tool_calls=lambda body: (
            [] if tool_results(body) else [FakeToolCall("echo", '{"text": "in the console"}')]
        ),
    )
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as app:
        assert app.tools is not None
        await app.tools.wait_settled(HANG_GUARD_S)
        out = io.StringIO()
        chat = ConsoleChat(app.services, stdin=io.StringIO("echo please\n"), stdout=out)
        await chat.run()
    assert "Parley: 🔧 `echo`…\n\nThe echo said: in the console" in out.getvalue()
