"""Tools through MCP (bot/tools/): Parley's own overhead per tool call and per tool round.

Two instances of the same stdio MCP server (tests/fakes/mcp_servers.py, whose `echo` tool answers
at once) are called in alternation: one through `ToolHub.call()`, one straight through the SDK's
`Client.call_tool()`. The server's handling and the stdio round trip are in both; the difference
is Parley's part (name lookup, JSON arguments, timeout, result text, cap, audit, log).

A whole round adds what the engine does around a call: assembling the streamed `tool_calls`
deltas (llama-server's fragmenting), offering the tools (`openai_tools()`), and building the
assistant and `tool` messages. The same work is also timed without the server (a call that ends
before any I/O), which isolates Parley's CPU time from the loaded machine's noise.

Through the engine: real turns (ParleyApp, SQLite, the fake LLM streaming one tool call the way
llama-server does, then the answer). A round's gap runs from the moment the fake LLM has sent the
whole tool-call response to the moment the follow-up request reaches it: reading and assembling
the calls, showing the tool line, the call itself, its audit row, the new messages and the new
request. Minus the SDK's own call (interleaved, on a second server), that is Parley's part.
Target: a round's Parley part <= 20 ms p50.

Run: .venv/bin/python bench/bench_tools.py   (prints a Markdown table for README.md)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from bot.app import ParleyApp
from bot.tools.calls import assemble
from bot.tools.hub import ToolCallRecord, ToolHub
from bot.tools.messages import assistant_message, tool_message
from bot.tools.settings import ToolsSettings
from tests.conftest import make_settings, message
from tests.fakes.llm_server import Behaviour, FakeLLMServer, FakeToolCall, tool_results
from tests.fakes.mcp_servers import command
from tests.fakes.targets import RecordingTarget

WARMUP = 50
CALLS = 1000
TURNS = 300
ROUND_TARGET_S = 0.020
ARGUMENTS = '{"text": "the time in Paris, please"}'


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def streamed_call(call_id: str) -> list[list[dict[str, Any]] | None]:
    """One call the way llama-server streams it: id and name, then the arguments in pieces."""
    first = {"index": 0, "id": call_id, "type": "function"}
    chunks: list[list[dict[str, Any]] | None] = [
        None,
        [{**first, "function": {"name": "echo", "arguments": ""}}],
    ]
    chunks += [
        [{"index": 0, "function": {"arguments": ARGUMENTS[i : i + 4]}}]
        for i in range(0, len(ARGUMENTS), 4)
    ]
    return chunks


async def tool_round(hub: ToolHub, n: int) -> None:
    """What the engine does for one round with one call, the LLM's streaming aside."""
    hub.openai_tools()
    calls = assemble(streamed_call(f"call_{n}"))
    messages = [assistant_message(calls)]
    for call in calls:
        result = await hub.call(call.name, call.arguments, chat="bench")
        assert result.ok, result.text
        messages.append(tool_message(call, result.text))


async def engine_rounds() -> tuple[list[float], list[float]]:
    """Each turn's tool round as the fake LLM sees it (the gap between its two responses), and
    an SDK call to a second server after each turn."""
    sent: list[float] = []
    gaps: list[float] = []

    def calls(body: dict[str, Any]) -> list[FakeToolCall]:
        return [] if tool_results(body) else [FakeToolCall("echo", ARGUMENTS)]

    def reply(body: dict[str, Any]) -> str:
        gaps.append(time.perf_counter() - sent[-1])
        return "The tool said so."

    behaviour = Behaviour(
        reply=reply,
        tool_calls=calls,
        ping=False,
        on_calls_sent=lambda body: sent.append(time.perf_counter()),
    )
    argv = command("stdio")
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    direct: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        async with FakeLLMServer(behaviour) as llm, Client(stdio_client(params), cache=None) as raw:
            settings = make_settings(
                Path(folder),
                llm={"base_url": llm.url},
                tools={"enabled": True, "servers": {"fake": {"command": argv}}},
            )
            async with ParleyApp(settings, speech=False) as app:
                assert app.tools is not None
                await app.tools.wait_settled(60.0)
                for n in range(WARMUP + TURNS):
                    target = RecordingTarget()
                    msg = message(f"turn {n}", channel=f"c{n % 20}", user=f"u{n}")
                    await app.engine.handle(msg, target)
                    assert target.text.endswith("The tool said so."), target.text
                    began = time.perf_counter()
                    await raw.call_tool("echo", {"text": "the time in Paris, please"})
                    direct.append(time.perf_counter() - began)
    return gaps[WARMUP:], direct[WARMUP:]


async def main() -> None:
    audit: list[ToolCallRecord] = []
    settings = ToolsSettings(servers={"fake": {"command": command("stdio")}})
    hub = ToolHub(settings, audit=audit.append)
    await hub.start()
    await hub.wait_settled(60.0)
    assert hub.status()[0].state == "ready", hub.status()
    argv = command("stdio")
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with Client(stdio_client(params), cache=None) as raw:
        for n in range(WARMUP):
            await hub.call("echo", ARGUMENTS)
            await raw.call_tool("echo", {"text": "warm"})
            await tool_round(hub, n)
        through_hub: list[float] = []
        direct: list[float] = []
        rounds: list[float] = []
        for n in range(CALLS):
            # The order turns each time: the call after another server's answer competes with
            # that server's own clean-up for the CPU.
            for which in (0, 1, 2) if n % 2 else (2, 1, 0):
                began = time.perf_counter()
                if which == 0:
                    await hub.call("echo", ARGUMENTS)
                elif which == 1:
                    await raw.call_tool("echo", {"text": "the time in Paris, please"})
                else:
                    await tool_round(hub, n)
                (through_hub, direct, rounds)[which].append(time.perf_counter() - began)
        # The same round's work without the server: tools offered, deltas assembled, messages
        # built, and a call that ends before any I/O (an unknown name: lookup, result, audit).
        local: list[float] = []
        for n in range(CALLS * 10):
            began = time.perf_counter()
            hub.openai_tools()
            calls = assemble(streamed_call(f"call_{n}"))
            assistant_message(calls)
            result = await hub.call("no_such_tool", calls[0].arguments, chat="bench")
            tool_message(calls[0], result.text)
            local.append(time.perf_counter() - began)
    await hub.aclose()

    direct_p50 = statistics.median(direct)
    print(f"{CALLS} calls each, stdio server with an instant tool, interleaved\n")
    print("| measure | p50 | p99 |")
    print("| --- | ---: | ---: |")
    for label, samples in (
        ("SDK call_tool (server + stdio + SDK)", direct),
        ("ToolHub.call", through_hub),
        ("whole tool round (assemble, offer, call, messages)", rounds),
        ("a round's work without the server's I/O", local),
    ):
        print(
            f"| {label} | {statistics.median(samples) * 1e3:.2f} ms "
            f"| {percentile(samples, 99) * 1e3:.2f} ms |"
        )
    call_overhead = statistics.median(through_hub) - direct_p50
    round_overhead = statistics.median(rounds) - direct_p50
    print(f"| ToolHub.call minus SDK call_tool (p50s) | {call_overhead * 1e3:.3f} ms | |")
    print(f"| tool round minus SDK call_tool (p50s) | {round_overhead * 1e3:.3f} ms | |")

    gaps, sdk = await engine_rounds()
    engine_overhead = statistics.median(gaps) - statistics.median(sdk)
    print(f"\n{TURNS} turns through the engine, one tool round each (SQLite, fake LLM)\n")
    print("| measure | p50 | p99 |")
    print("| --- | ---: | ---: |")
    for label, samples in (
        ("SDK call_tool on a second server", sdk),
        ("round gap: calls sent -> follow-up request received", gaps),
    ):
        print(
            f"| {label} | {statistics.median(samples) * 1e3:.2f} ms "
            f"| {percentile(samples, 99) * 1e3:.2f} ms |"
        )
    print(f"| round gap minus SDK call_tool (p50s) | {engine_overhead * 1e3:.3f} ms | |")
    worst = max(round_overhead, statistics.median(local), engine_overhead)
    verdict = "met" if worst <= ROUND_TARGET_S else "MISSED"
    print(f"\nTarget: a round's Parley part <= {ROUND_TARGET_S * 1e3:.0f} ms p50: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
