"""The HTTP API (adapters/api/): its overhead per request, the requests a second it sustains, and
an answer cache hit.

Overhead: the same chat completion, interleaved, through the API (`POST /v1/chat/completions`,
key check, per-key rate, request checks, the engine's queue and reply loop, the answer) and
straight to the fake LLM (the streamed request Parley itself sends, read to `[DONE]`), with an
instant fake LLM; the difference of the medians is Parley's part. Target: <= 5 ms at p50.
Throughput: clients sending requests back to back for a few seconds. A cache hit: the same
request again once its answer is kept (`[cache] enabled`): no LLM request at all.

Client, bot and fake LLM share this one process (and so its one event loop): the throughput is
a floor, the bot's share of the CPU is about a third.

Run: .venv/bin/python bench/bench_api.py   (prints Markdown tables for docs/benchmarks.md)
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

import aiohttp

from tests.fakes.api_bot import ALICE, RunningApi, api_bot, api_settings
from tests.fakes.llm_server import Behaviour, FakeLLMServer

WARMUP = 50
REQUESTS = 1000
CACHE_HITS = 500
THROUGHPUT_S = 5.0
CLIENTS = (1, 8, 32)
OVERHEAD_TARGET_S = 0.005
QUESTION = {"role": "user", "content": "What is the capital of France?"}
HEADERS = {"Authorization": f"Bearer {ALICE}"}


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def row(label: str, samples: list[float]) -> str:
    return (
        f"| {label} | {statistics.median(samples) * 1e3:.2f} ms | {pct(samples, 99) * 1e3:.2f} ms |"
    )


async def through_api(http: aiohttp.ClientSession, bot: RunningApi) -> float:
    began = time.perf_counter()
    body = {"model": "parley", "messages": [QUESTION]}
    async with http.post(bot.url + "/chat/completions", json=body, headers=HEADERS) as resp:
        answer = await resp.json()
    assert resp.status == 200, answer
    return time.perf_counter() - began


async def straight(http: aiohttp.ClientSession, llm_url: str) -> float:
    """The request Parley's LLM client sends, streamed and read to the end."""
    began = time.perf_counter()
    body: dict[str, Any] = {
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 512,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are Parley."}, QUESTION],
    }
    async with http.post(llm_url + "/v1/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                break
    return time.perf_counter() - began


async def overhead(llm: FakeLLMServer, tmp: Path) -> tuple[list[float], list[float]]:
    settings = api_settings(tmp / "o", llm.url, api={"requests_per_minute": 0})
    api: list[float] = []
    direct: list[float] = []
    async with api_bot(settings) as bot, aiohttp.ClientSession() as http:
        for _ in range(WARMUP):
            await through_api(http, bot)
            await straight(http, llm.url)
        for n in range(REQUESTS):
            for which in (0, 1) if n % 2 else (1, 0):
                if which == 0:
                    api.append(await through_api(http, bot))
                else:
                    direct.append(await straight(http, llm.url))
    return api, direct


async def throughput(llm: FakeLLMServer, tmp: Path, clients: int) -> float:
    settings = api_settings(
        tmp / f"t{clients}",
        llm.url,
        api={"requests_per_minute": 0},
        llm={"concurrency": 64},  # the fake answers any number at once: slots are no limit
    )
    done = 0
    async with api_bot(settings) as bot:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(WARMUP):
                await through_api(http, bot)
            deadline = time.perf_counter() + THROUGHPUT_S

            async def client() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await through_api(http, bot)
                    done += 1

            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.perf_counter() - began
    return done / elapsed


async def cache_hits(llm: FakeLLMServer, tmp: Path) -> list[float]:
    settings = api_settings(
        tmp / "c", llm.url, api={"requests_per_minute": 0}, cache={"enabled": True}
    )
    async with api_bot(settings) as bot, aiohttp.ClientSession() as http:
        await through_api(http, bot)
        asked = len(llm.requests)
        hits = [await through_api(http, bot) for _ in range(WARMUP + CACHE_HITS)][WARMUP:]
        assert len(llm.requests) == asked, "a cache hit reached the LLM"
    return hits


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for name in ("o", "c", *(f"t{n}" for n in CLIENTS)):
            (tmp / name).mkdir()
        async with FakeLLMServer(Behaviour(reply="Paris is the capital.", ping=False)) as llm:
            api, direct = await overhead(llm, tmp)
            rates = {n: await throughput(llm, tmp, n) for n in CLIENTS}
            hits = await cache_hits(llm, tmp)
    extra = statistics.median(api) - statistics.median(direct)
    print(f"{REQUESTS} chat completions each way, interleaved, instant fake LLM\n")
    print("| measure | p50 | p99 |")
    print("|---|---:|---:|")
    print(row("straight to the fake LLM (streamed, read to [DONE])", direct))
    print(row("through the API (POST /v1/chat/completions)", api))
    print(f"| API overhead (difference of the p50s) | {extra * 1e3:.2f} ms | |")
    print(row(f"a cache hit through the API ({CACHE_HITS} requests, no LLM request)", hits))
    print("\n| clients sending back to back | requests/s |")
    print("|---:|---:|")
    for clients, rate in rates.items():
        print(f"| {clients} | {rate:.0f} |")
    verdict = "met" if extra <= OVERHEAD_TARGET_S else "MISSED"
    print(f"\nTarget: API overhead <= {OVERHEAD_TARGET_S * 1e3:.0f} ms at p50: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
