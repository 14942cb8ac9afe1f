"""Soak: many chats at once over the platform fakes, with injected faults, round after round.

Per platform, one bot runs for all rounds. In each round every chat sends `--per-chat` messages at
once; the fake answers a share of message edits with 429 and of message posts with 5xx. A round
waits for every reply's final text and counts what was lost, duplicated or out of order. Memory
is read after each round, once the fakes have dropped their records of it (calls, messages,
frames, LLM requests) and a garbage collection ran: flat figures from round 2 on (round 1 warms
caches and pools) mean the bot keeps no per-message state.

Prints Markdown tables, one row per round.

    .venv/bin/python bench/bench_soak.py --chats 200 --per-chat 3 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.chat_load import DiscordLoad, LoadResult, TelegramLoad
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    FlakyDiscord,
    discord_bot,
    discord_settings,
    telegram_bot,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

PADDING_WORDS = 8  # streamed a word at a time after the echo, so replies get edited
WORD_DELAY_S = 0.02
TELEGRAM_RETRY_AFTER = 1  # Telegram's retry_after is a whole number of seconds
ROUND_DEADLINE_S = 600.0
PAGE_KIB = 4


@dataclass
class Row:
    platform: str
    round: int
    result: LoadResult
    rss_mib: float
    heap_blocks_k: float  # Python's allocated memory blocks, in thousands


def padded(question: str) -> str:
    return f"echo {question}: " + " ".join(f"w{i}" for i in range(PADDING_WORDS))


def padded_reply(body: dict[str, Any]) -> str:
    return padded(last_user_text(body))


def rss_mib() -> float:
    """Resident memory of this process (bot, fakes and the LLM stand-in together)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_KIB / 1024


def memory() -> tuple[float, float]:
    gc.collect()
    return rss_mib(), sys.getallocatedblocks() / 1000


async def soak_telegram(args: argparse.Namespace, llm: FakeLLMServer) -> list[Row]:
    rng = random.Random(args.seed)
    async with FakeTelegramAPI() as api:
        api.fail(
            "editMessageText",
            status=429,
            description=f"Too Many Requests: retry after {TELEGRAM_RETRY_AFTER}",
            retry_after=TELEGRAM_RETRY_AFTER,
            times=10**9,
            when=lambda _: rng.random() < args.edit_429,
        )
        api.fail(
            "sendMessage",
            status=502,
            description="Bad Gateway",
            times=10**9,
            when=lambda _: rng.random() < args.post_5xx,
        )
        with tempfile.TemporaryDirectory() as tmp:
            settings = telegram_settings(Path(tmp), api, llm.url, llm={"concurrency": args.slots})
            async with telegram_bot(settings):
                load = TelegramLoad(api, chats=args.chats, expect=padded)
                return await _rounds("Telegram", args, load.round, load.forget, llm)


async def soak_discord(args: argparse.Namespace, llm: FakeLLMServer) -> list[Row]:
    async with FlakyDiscord(
        edit_429_share=args.edit_429, post_5xx_share=args.post_5xx, seed=args.seed
    ) as fake:
        with tempfile.TemporaryDirectory() as tmp:
            settings = discord_settings(Path(tmp), fake, llm.url, llm={"concurrency": args.slots})
            async with discord_bot(settings):
                load = DiscordLoad(fake, chats=args.chats, expect=padded)
                return await _rounds("Discord", args, load.round, load.forget, llm)


async def _rounds(
    platform: str,
    args: argparse.Namespace,
    run: Callable[..., Awaitable[LoadResult]],
    forget: Callable[[], None],
    llm: FakeLLMServer,
) -> list[Row]:
    rows = []
    for number in range(1, args.rounds + 1):
        result = await run(args.per_chat, deadline_s=ROUND_DEADLINE_S)
        forget()
        llm.requests.clear()
        rss, blocks = memory()
        rows.append(Row(platform, number, result, rss, blocks))
        print(f"  {platform} round {number}: {result.seconds:.1f} s", file=sys.stderr)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| platform | round | chats | messages | replies | lost | duplicated | out of order "
        "| 429s | 5xx | s | msg/s | RSS MiB | heap blocks (k) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.platform} | {row.round} | {r.chats} | {r.messages} | {r.answered} "
            f"| {r.lost} | {r.duplicated} | {r.out_of_order} | {r.rate_limited} "
            f"| {r.server_errors} | {r.seconds:.1f} | {r.messages / r.seconds:.0f} "
            f"| {row.rss_mib:.0f} | {row.heap_blocks_k:.0f} |"
        )
    return "\n".join(lines)


def growth(rows: list[Row]) -> str:
    """Memory change from the end of round 2 to the end of the last round."""
    if len(rows) < 3:
        return "(run 3 rounds or more for a memory trend)"
    second, last = rows[1], rows[-1]
    return (
        f"{rows[0].platform}: RSS {last.rss_mib - second.rss_mib:+.1f} MiB, heap blocks "
        f"{last.heap_blocks_k - second.heap_blocks_k:+.1f} k from round 2 to round {last.round}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--per-chat", type=int, default=3, help="messages per chat per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=32, help="replies generated at once")
    parser.add_argument("--edit-429", type=float, default=0.2, help="share of edits refused")
    parser.add_argument("--post-5xx", type=float, default=0.05, help="share of posts failed")
    parser.add_argument("--platform", choices=["telegram", "discord", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # retries are expected here: only failures show
    behaviour = Behaviour(reply=padded_reply, delay_s=WORD_DELAY_S)
    results: list[list[Row]] = []
    async with FakeLLMServer(behaviour=behaviour) as llm:
        if args.platform in ("telegram", "both"):
            results.append(await soak_telegram(args, llm))
        if args.platform in ("discord", "both"):
            results.append(await soak_discord(args, llm))
    print(
        f"Soak: {args.chats} chats x {args.per_chat} messages at once per round, "
        f"{args.edit_429:.0%} of edits answered 429, {args.post_5xx:.0%} of posts answered 5xx, "
        f"{args.slots} replies generated at once (fake LLM, {PADDING_WORDS + 3} words a reply).\n"
    )
    print(table([row for rows in results for row in rows]))
    print()
    for rows in results:
        print(f"- {growth(rows)}")


if __name__ == "__main__":
    asyncio.run(main())
