"""The Discord global budget shared through PostgreSQL (bot/storage/shared_budget.py): what a
grant costs.

(a) one grant's round trip (a budget far above the load, so no grant waits), p50 / p99, against
    a local throwaway PostgreSQL 15 with production durability settings (the table is UNLOGGED);
(b) two budgets on one row, as two bot processes have (separate connection pools), asking as fast
    as they can at 50/s: the grants per second they get together, and the busiest one-second
    window of grant times.

Run: .venv/bin/python bench/bench_shared_budget.py   (prints a Markdown table for README.md)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.storage.shared_budget import SharedBudget
from tests.fakes.postgres import PostgresServer

GRANTS = 2000
RATE = 50.0
SHARED_SECONDS = 6.0


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def busiest_window(stamps: list[float], window_s: float = 1.0) -> int:
    stamps = sorted(stamps)
    most, first = 0, 0
    for last, at in enumerate(stamps):
        while at - stamps[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


async def grant_latency(url: str) -> list[float]:
    budget = SharedBudget(url, "bench:latency", 1e6)
    await budget.open()
    try:
        for _ in range(100):  # warm the pool and the plan
            await budget.acquire()
        samples = []
        for _ in range(GRANTS):
            began = time.perf_counter()
            await budget.acquire()
            samples.append(time.perf_counter() - began)
    finally:
        await budget.close()
    assert budget.local_grants == 0
    return samples


async def two_processes(url: str) -> tuple[int, float, int]:
    budgets = [SharedBudget(url, "bench:shared", RATE, share=0.5) for _ in range(2)]
    for budget in budgets:
        await budget.open()
    stamps: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + SHARED_SECONDS

    async def ask(budget: SharedBudget) -> None:
        while loop.time() < end:
            await budget.acquire()
            stamps.append(loop.time())

    try:
        # Four askers per "process", as several reply streams of one bot would be.
        await asyncio.gather(*(ask(b) for b in budgets for _ in range(4)))
    finally:
        for budget in budgets:
            await budget.close()
    span = max(stamps) - min(stamps)
    return len(stamps), (len(stamps) - 1) / span, busiest_window(stamps)


async def main() -> None:
    server = PostgresServer(durable=True).start()
    try:
        url = server.url(server.create_database())
        samples = await grant_latency(url)
        count, rate, busiest = await two_processes(url)
    finally:
        server.stop()
    print("| measure | value |")
    print("|---|---|")
    p50, p99 = percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6
    grant = f"{p50:,.0f} / {p99:,.0f} µs"
    print(f"| one grant (a round trip, loopback PostgreSQL 15), p50 / p99 | {grant} |")
    print(
        f"| two pools on one {RATE:.0f}/s budget, 8 askers, {SHARED_SECONDS:.0f} s:"
        f" grants/s together | {rate:.1f} ({count} grants) |"
    )
    print(f"| the same: busiest one-second window of grants | {busiest} |")


if __name__ == "__main__":
    asyncio.run(main())
