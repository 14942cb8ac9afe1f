"""Tools through MCP against real servers: the reference `mcp-server-time` and `mcp-server-fetch`
over stdio, and the SDK-built fakes of tests/fakes/mcp_servers.py over stdio and streamable HTTP,
including servers that hang, crash, freeze or fail."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.backoff import Backoff
from bot.tools.hub import ToolCallRecord, ToolHub
from bot.tools.server import ServerStatus
from bot.tools.settings import ToolsSettings
from bot.tools.status import health_detail, probe, summary
from tests.fakes.mcp_servers import HttpFake, command
from tests.fakes.waits import HANG_GUARD_S, eventually

SECRET = "tok-5f1e0c2a9b7d"
# A fault must end a call within timeout_s; what these tests check is that it ends at all, and
# well before the guard (a hang would take the guard).
FAULT_TIMEOUT_S = 2.0
RETURNS_WITHIN_S = FAULT_TIMEOUT_S + 8.0
SILENT_START_TIMEOUT_S = 8.0  # a real server starts in 1-3 s on a loaded machine

MakeHub = Callable[..., Awaitable[ToolHub]]


@pytest.fixture
async def make_hub() -> AsyncIterator[MakeHub]:
    """Builds started hubs (each server's first start over, unless `settle` is false) with fast
    restarts; closes them after the test."""
    hubs: list[ToolHub] = []

    async def make(
        servers: dict[str, dict[str, Any]],
        *,
        audit: Callable[[ToolCallRecord], None] | None = None,
        start_timeout_s: float = HANG_GUARD_S,
        settle: bool = True,
        **tools: Any,
    ) -> ToolHub:
        settings = ToolsSettings(servers=servers, **{"timeout_s": 10.0, **tools})
        hub = ToolHub(
            settings,
            audit=audit,
            backoff=lambda: Backoff(initial=0.05, cap=0.5),
            start_timeout_s=start_timeout_s,
        )
        hubs.append(hub)
        await hub.start()
        if settle:
            await hub.wait_settled(HANG_GUARD_S)
        return hub

    yield make
    for hub in hubs:
        await hub.aclose()


def status_of(hub: ToolHub, name: str) -> ServerStatus:
    return next(s for s in hub.status() if s.name == name)


def processes_with(marker: str) -> list[int]:
    """The live processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def test_the_real_time_server_over_stdio(make_hub: MakeHub) -> None:
    records: list[ToolCallRecord] = []
    hub = await make_hub(
        {"clock": {"command": ["mcp-server-time", "--local-timezone", "UTC"]}},
        audit=records.append,
    )
    assert status_of(hub, "clock") == ServerStatus("clock", "stdio", "ready", 2, None, 0)
    offered = {tool["function"]["name"]: tool for tool in hub.openai_tools()}
    assert set(offered) == {"get_current_time", "convert_time"}
    schema = offered["get_current_time"]["function"]["parameters"]
    assert offered["get_current_time"]["type"] == "function"
    assert schema["type"] == "object" and "timezone" in schema["properties"]

    before = datetime.now(UTC).date()
    result = await hub.call("get_current_time", '{"timezone": "UTC"}', chat="telegram:42")
    after = datetime.now(UTC).date()
    assert result.ok, result.text
    assert json.loads(result.text)["datetime"][:10] in {before.isoformat(), after.isoformat()}
    assert records == [
        ToolCallRecord("telegram:42", "get_current_time", "clock", result.duration, "ok")
    ]

    error = await hub.call("get_current_time", '{"timezone": "Nowhere/Atlantis"}')
    assert not error.ok and "Nowhere/Atlantis" in error.text
    assert records[-1].outcome == "tool_error"


@pytest.fixture
async def http_fake() -> AsyncIterator[HttpFake]:
    fake = HttpFake()
    yield fake
    await fake.kill()


async def test_a_streamable_http_server_works_like_stdio(
    make_hub: MakeHub, http_fake: HttpFake
) -> None:
    port = await http_fake.start()
    hub = await make_hub({"remote": {"url": f"http://127.0.0.1:{port}/mcp"}})
    assert status_of(hub, "remote") == ServerStatus("remote", "http", "ready", 7, None, 0)

    echoed = await hub.call("echo", '{"text": "over http"}')
    assert (echoed.ok, echoed.text) == (True, "over http")
    failed = await hub.call("fail", '{"message": "no such record"}')
    assert not failed.ok and "fail" in failed.text

    # The server goes away: calls get an error result; once it is back, calls work again.
    await http_fake.kill()
    down = await hub.call("echo", '{"text": "anyone?"}')
    assert not down.ok and down.duration < RETURNS_WITHIN_S
    await http_fake.start()
    await eventually(lambda: status_of(hub, "remote").state == "ready")
    assert (await hub.call("echo", '{"text": "back"}')).text == "back"
    assert status_of(hub, "remote").restarts >= 1


async def test_a_url_with_credentials_works_and_is_never_logged_with_them(
    make_hub: MakeHub, http_fake: HttpFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK logs the endpoint it connects to at DEBUG
    port = await http_fake.start()
    hub = await make_hub({"remote": {"url": f"http://tooluser:tool-pw-0123@127.0.0.1:{port}/mcp"}})
    assert status_of(hub, "remote").state == "ready"
    assert (await hub.call("echo", '{"text": "behind a login"}')).text == "behind a login"
    logged = [record.getMessage() for record in caplog.records]
    assert any(f"127.0.0.1:{port}/mcp" in line for line in logged)  # the endpoint is named
    assert not [line for line in logged if "tool-pw-0123" in line or "tooluser" in line]


async def test_a_server_that_answers_nothing_never_hangs_a_call(make_hub: MakeHub) -> None:
    hub = await make_hub(
        {"silent": {"command": command("silent")}, "fake": {"command": command("stdio")}},
        timeout_s=FAULT_TIMEOUT_S,
        start_timeout_s=SILENT_START_TIMEOUT_S,
        settle=False,
    )
    await eventually(lambda: status_of(hub, "fake").state == "ready")
    assert (await hub.call("echo", '{"text": "meanwhile"}')).text == "meanwhile"
    await eventually(lambda: status_of(hub, "silent").last_error is not None)
    assert status_of(hub, "silent").last_error == (
        f"no answer within {SILENT_START_TIMEOUT_S:g} s of starting"
    )
    # It never listed a tool: the model is offered none of its tools, and a call by its
    # qualified name is an error result at once; the other server answers all along.
    assert {t.server for t in hub.tools()} == {"fake"}
    result = await hub.call("silent__anything", "{}")
    assert not result.ok and "no tool named" in result.text
    assert (await hub.call("echo", '{"text": "still here"}')).text == "still here"


async def test_a_server_that_crashes_mid_call_is_restarted(make_hub: MakeHub) -> None:
    hub = await make_hub({"fake": {"command": command("stdio")}})
    result = await hub.call("crash", "{}")
    assert not result.ok and "restarted" in result.text
    await eventually(lambda: status_of(hub, "fake").restarts >= 1)
    await eventually(lambda: status_of(hub, "fake").state == "ready")
    assert (await hub.call("echo", '{"text": "again"}')).text == "again"


async def test_a_server_that_freezes_is_restarted(make_hub: MakeHub) -> None:
    hub = await make_hub({"fake": {"command": command("stdio")}}, timeout_s=FAULT_TIMEOUT_S)
    result = await hub.call("freeze", "{}")
    assert not result.ok and f"within {FAULT_TIMEOUT_S:g} s" in result.text
    assert result.duration < RETURNS_WITHIN_S
    # The timeout makes the server's session be checked: a listing gets no answer either.
    await eventually(lambda: status_of(hub, "fake").restarts >= 1)
    await eventually(lambda: status_of(hub, "fake").state == "ready")
    assert (await hub.call("echo", '{"text": "thawed"}')).text == "thawed"


async def test_errors_are_results_and_the_next_call_works(make_hub: MakeHub) -> None:
    records: list[ToolCallRecord] = []
    hub = await make_hub({"fake": {"command": command("stdio")}}, audit=records.append)
    tool_error = await hub.call("fail", '{"message": "disk on fire"}', chat="c")
    wrong_arguments = await hub.call("echo", '{"words": 3}', chat="c")
    not_json = await hub.call("echo", '{"text": ', chat="c")
    not_an_object = await hub.call("echo", "[1, 2]", chat="c")
    unknown = await hub.call("launch_rockets", "{}", chat="c")
    for result in (tool_error, wrong_arguments, not_json, not_an_object, unknown):
        assert not result.ok and result.text
    assert "not a JSON object" in not_json.text and "not a JSON object" in not_an_object.text
    assert "launch_rockets" in unknown.text and "echo" in unknown.text
    assert [r.outcome for r in records] == [
        "tool_error",
        "tool_error",
        "bad_arguments",
        "bad_arguments",
        "unknown_tool",
    ]
    assert (await hub.call("echo", '{"text": "fine"}')).ok
    assert status_of(hub, "fake").restarts == 0


async def test_allow_list_and_name_clashes(make_hub: MakeHub) -> None:
    hub = await make_hub(
        {
            "a": {
                "command": command("stdio"),
                "tools": ["echo", "env_length"],
                "env": {"WHO": "aaaa"},
            },
            "b": {
                "command": command("stdio"),
                "tools": ["env_length", "big"],
                "env": {"WHO": "bbbbbbb"},
            },
        }
    )
    assert sorted(t["function"]["name"] for t in hub.openai_tools()) == [
        "a__env_length",
        "b__env_length",
        "big",
        "echo",
    ]
    assert (await hub.call("a__env_length", '{"name": "WHO"}')).text == "4"
    assert (await hub.call("b__env_length", '{"name": "WHO"}')).text == "7"
    assert (await hub.call("a__echo", '{"text": "qualified"}')).text == "qualified"
    refused = await hub.call("crash", "{}")  # not on either allow list
    assert not refused.ok and "no tool named" in refused.text
    assert all(s.state == "ready" for s in hub.status())


async def test_output_is_capped_and_says_so(make_hub: MakeHub) -> None:
    hub = await make_hub({"fake": {"command": command("stdio")}}, max_result_chars=100)
    result = await hub.call("big", '{"chars": 5000}')
    assert result.ok
    assert result.text == "abcdefghijklmnopqrstuvwxyz" * 3 + "abcdefghijklmnopqrstuv" + (
        "\n[output cut: 4900 more characters]"
    )


async def test_secrets_in_env_are_never_logged_or_shown(
    make_hub: MakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    records: list[ToolCallRecord] = []
    # This server writes its token to stderr when it starts, and crashes on demand.
    env = {"FAKE_TOKEN": SECRET, "FAKE_LEAK_ENV": "FAKE_TOKEN"}
    hub = await make_hub({"leaky": {"command": command("stdio"), "env": env}}, audit=records.append)
    assert (await hub.call("env_length", '{"name": "FAKE_TOKEN"}')).text == str(len(SECRET))
    crashed = await hub.call("crash", "{}")
    await eventually(lambda: status_of(hub, "leaky").restarts >= 1)
    await eventually(lambda: status_of(hub, "leaky").state == "ready")
    await eventually(lambda: caplog.text.count("starting with [REDACTED]") >= 2)

    shown = [caplog.text, crashed.text, repr(records), repr(hub.settings)]
    statuses = hub.status()
    shown += [repr(statuses), json.dumps(health_detail(statuses)), summary(statuses[0])]
    for text in shown:
        assert SECRET not in text
    assert "fake server: crashing now" in caplog.text  # its stderr was logged, redacted


async def test_closing_stops_every_child_process(make_hub: MakeHub) -> None:
    marker = uuid.uuid4().hex
    hub = await make_hub(
        {
            "fake": {"command": command("stdio", marker)},
            "frozen": {"command": command("stdio", marker)},
            "silent": {"command": command("silent", marker)},
        },
        timeout_s=FAULT_TIMEOUT_S,
        settle=False,
    )
    await eventually(lambda: [s.state for s in hub.status()] == ["ready", "ready", "starting"])
    assert (await hub.call("frozen__freeze", "{}")).ok is False
    assert len(processes_with(marker)) >= 3  # the frozen one may be restarting already
    async with asyncio.timeout(HANG_GUARD_S):
        await hub.aclose()
    assert processes_with(marker) == []
    after = await hub.call("echo", '{"text": "closed"}')
    assert not after.ok


async def test_probe_reports_each_server_for_the_doctor(tmp_path: Path) -> None:
    settings = ToolsSettings(
        servers={
            "clock": {"command": ["mcp-server-time"]},
            "missing": {"command": [str(tmp_path / "no-such-server")]},
        }
    )
    clock, missing = await probe(settings, timeout_s=HANG_GUARD_S)
    assert (clock.state, clock.tools) == ("ready", 2)
    assert summary(clock) == "ready, 2 tools (stdio)"
    assert missing.state == "failed" and "No such file" in (missing.last_error or "")
    assert summary(missing).startswith("failed (stdio): FileNotFoundError")
    assert health_detail([clock])["clock"] == {
        "state": "ready",
        "transport": "stdio",
        "tools": 2,
        "restarts": 0,
        "error": None,
    }


@pytest.fixture
async def web_page() -> AsyncIterator[str]:
    """A loopback web page for the fetch server."""

    async def page(_: web.Request) -> web.Response:
        body = "<html><body><h1>Parley test page</h1><p>The answer is 42.</p></body></html>"
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/page"
    await runner.cleanup()


async def test_the_real_fetch_server_reads_a_loopback_page(
    make_hub: MakeHub, web_page: str
) -> None:
    hub = await make_hub(
        {"web": {"command": ["mcp-server-fetch", "--ignore-robots-txt", "--allow-private-ips"]}},
        timeout_s=HANG_GUARD_S,  # it starts node for each page: seconds on a loaded machine
    )
    result = await hub.call("fetch", json.dumps({"url": web_page}))
    assert result.ok, result.text
    assert "The answer is 42." in result.text


def test_a_hub_is_built_before_the_event_loop_runs() -> None:
    # The app composes its parts before it starts the loop.
    hub = ToolHub(ToolsSettings(servers={"clock": {"command": ["mcp-server-time"]}}))
    assert [s.state for s in hub.status()] == ["starting"] and hub.openai_tools() == []

    async def start_and_close() -> None:
        await hub.start()
        await hub.wait_settled(HANG_GUARD_S)
        assert hub.status()[0].state == "ready"
        await hub.aclose()

    asyncio.run(start_and_close())
