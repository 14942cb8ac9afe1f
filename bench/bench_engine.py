"""Core benchmarks: engine overhead, last-N history query at 1M rows, engine vs raw llama-server.

Run: .venv/bin/python bench/bench_engine.py   (prints a Markdown table for README.md)
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import ParleyApp
from bot.channel_config import ChannelSettings
from bot.config import Settings
from bot.llm import LLMClient
from bot.llm_settings import LLMSettings
from bot.prompt import build_request, system_prompt
from bot.storage import SQLiteStore, migrate
from bot.types import IncomingMessage
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.targets import RecordingTarget

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
CHANNELS = 2000
MESSAGES = 300


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def msg(text: str, channel: str) -> IncomingMessage:
    return IncomingMessage("bench", channel, "u", "user", text)


async def engine_overhead(tmp: Path) -> tuple[list[float], list[float]]:
    """Per message: engine.handle() end to end vs the bare LLM request, same instant fake."""
    handle_ms: list[float] = []
    bare_ms: list[float] = []
    async with FakeLLMServer(Behaviour(reply="Short instant answer.", ping=False)) as llm:
        settings = Settings(
            storage={"path": str(tmp / "o.db")},
            llm={"base_url": llm.url},
            engine={"user_messages_per_minute": 0},
        )
        async with ParleyApp(settings, speech=False) as app:
            client = LLMClient(settings.llm, [llm.url], "chat")
            request = build_request(
                api="chat",
                prompt_format="plain",
                system="s",
                history=[],
                user_text="hi",
                settings=ChannelSettings.resolve(Settings(), {}),
                bot_name="P",
            )
            for i in range(MESSAGES):
                start = time.perf_counter()
                await app.engine.handle(msg(f"message {i}", f"c{i % 20}"), RecordingTarget())
                handle_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                async for _ in client.stream(request):
                    pass
                bare_ms.append((time.perf_counter() - start) * 1000)
            await client.close()
    return handle_ms, bare_ms


async def history_query(tmp: Path) -> tuple[list[float], float]:
    path = str(tmp / "h.db")
    await migrate(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    conn.executemany(
        "INSERT INTO channels (id, platform, channel_key, created_at) VALUES (?, 'b', ?, 0)",
        [(i, str(i)) for i in range(1, CHANNELS + 1)],
    )
    start = time.perf_counter()
    rng = random.Random(1)
    batch = []
    for i in range(ROWS):
        role = "user" if i % 2 == 0 else "assistant"
        batch.append((rng.randint(1, CHANNELS), role, "u", "message text " * 4, "complete", 12))
        if len(batch) == 50_000:
            conn.executemany(
                "INSERT INTO messages (channel_id, role, author_id, content, status, token_count,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
                batch,
            )
            batch.clear()
    conn.commit()
    conn.close()
    fill_s = time.perf_counter() - start
    store = await SQLiteStore.open(path)
    timings = []
    for _ in range(2000):
        channel = rng.randint(1, CHANNELS)
        start = time.perf_counter()
        rows = await store.history(channel, 10**12, 50)
        timings.append((time.perf_counter() - start) * 1e6)
        assert rows
    await store.close()
    return timings, fill_s


async def engine_vs_raw(tmp: Path) -> tuple[float, float, int]:
    """Tokens/s of the same prompt through the engine and straight from llama-server."""
    # With the gemma turn format the base model never stops early, so every run decodes
    # max_tokens tokens: a long, equal stretch of decoding for both paths.
    settings = Settings(
        storage={"path": str(tmp / "r.db")},
        llm={"prompt_format": "gemma"},
        engine={"temperature": 0.0, "max_tokens": 128, "history_tokens": 0},
    )
    question = "Write a long story about a dragon who learns to cook."
    async with ParleyApp(settings, speech=False) as app:
        raw_client = LLMClient(LLMSettings(), [app.llm.urls[0]], app.llm.api)
        channel = ChannelSettings.resolve(settings, {})
        request = build_request(
            api=app.llm.api,
            prompt_format=settings.llm.prompt_format,
            system=system_prompt(channel, settings.engine.bot_name),
            history=[],
            user_text=question,
            settings=channel,
            bot_name=settings.engine.bot_name,
        )
        engine_tps: list[float] = []
        raw_tps: list[float] = []
        tokens = 0
        for i in range(5):
            # Decoding rate: from the first token to the end, so prompt processing is excluded.
            first = 0.0
            usage: dict[str, object] = {}
            async for event in raw_client.stream(request):
                first = first or time.perf_counter()
                usage |= event.usage
            tokens = int(str(usage.get("completion_tokens", 0)))
            raw_tps.append((tokens - 1) / (time.perf_counter() - first))
            target = RecordingTarget()
            task = asyncio.create_task(app.engine.handle(msg(question, f"r{i}"), target))
            await target.first_text.wait()
            first = time.perf_counter()
            await task
            engine_tps.append((tokens - 1) / (time.perf_counter() - first))
        await raw_client.close()
    return statistics.median(engine_tps), statistics.median(raw_tps), tokens


async def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        handle_ms, bare_ms = await engine_overhead(tmp)
        history_us, fill_s = await history_query(tmp)
        engine_tps, raw_tps, tokens = await engine_vs_raw(tmp)
    overhead = [h - b for h, b in zip(handle_ms, bare_ms, strict=True)]
    print("| benchmark | p50 | p99 |")
    print("|---|---|---|")
    print(
        f"| engine.handle(), instant fake LLM, {MESSAGES} messages | "
        f"{pct(handle_ms, 0.5):.2f} ms | {pct(handle_ms, 0.99):.2f} ms |"
    )
    print(
        f"| same request straight to the fake LLM | {pct(bare_ms, 0.5):.2f} ms | "
        f"{pct(bare_ms, 0.99):.2f} ms |"
    )
    print(
        f"| engine overhead (difference, per message) | {pct(overhead, 0.5):.2f} ms | "
        f"{pct(overhead, 0.99):.2f} ms |"
    )
    print(
        f"| last 50 messages of a channel, {ROWS:,} rows / {CHANNELS} channels | "
        f"{pct(history_us, 0.5):.0f} µs | {pct(history_us, 0.99):.0f} µs |"
    )
    print()
    print(f"(filled {ROWS:,} rows in {fill_s:.1f} s)")
    print()
    print("| real llama-server, bundled model, same prompt | tokens/s (median of 5) |")
    print("|---|---|")
    print(f"| straight from llama-server ({tokens} tokens) | {raw_tps:.1f} |")
    print(f"| through the engine (store, prompt, streamer) | {engine_tps:.1f} |")
    print(f"| ratio engine / direct | {engine_tps / raw_tps:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
