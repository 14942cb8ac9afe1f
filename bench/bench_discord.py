"""Discord streaming under load: N channels streaming at once through the loopback fake.

The fake Discord enforces a per-channel cap on message writes (5 per 5 s, the figure commonly
observed) and the 50 requests/s global limit, answering 429 like Discord when one is exceeded.
Every channel is a user's DM: "chat" mode sends a message, "ask" mode runs /ask. Prints a Markdown
table: each channel's write rate and busiest 5-second window against the cap, the 429s on
message writes (the reply streamer's) and on other calls (typing, which discord.py waits out),
and the reply time.

    .venv/bin/python bench/bench_discord.py --channels 1,10,40 --mode chat,ask --budget 5,10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.discord.adapter import DiscordAdapter
from bot.app import ParleyApp, full_settings_class
from tests.fakes.discord_api import Call, FakeDiscord
from tests.fakes.discord_world import FakeInteraction, FakeUser
from tests.fakes.llm_server import Behaviour, FakeLLMServer

CAP_WRITES = 5  # per channel ...
CAP_WINDOW_S = 5.0  # ... in this window, enforced by the fake
GLOBAL_LIMIT = (50, 1.0)
FIRST_USER_ID = 1_400_000_000_000_000_000
READY_S = 0.05
DEADLINE_S = 300.0  # the whole run gives up after this


@dataclass
class Row:
    mode: str
    channels: int
    budget: float
    mean_rate: float
    peak_window: int
    overall_rate: float
    limited_writes: int
    limited_other: int
    writes: int
    reply_s: float
    complete: int


def _busiest_window(times: list[float], window: float) -> int:
    """The most writes within any `window` seconds."""
    best, start = 0, 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(mode: str, channels: int, budget: int, words: int, words_per_s: float) -> Row:
    reply = " ".join(f"word{i}" for i in range(words))
    behaviour = Behaviour(reply=reply, delay_s=1 / words_per_s)
    limit = (CAP_WRITES, CAP_WINDOW_S)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeLLMServer(behaviour=behaviour) as llm,
            FakeDiscord(channel_write_limit=limit, global_limit=GLOBAL_LIMIT) as fake,
        ):
            settings = full_settings_class()(
                llm={"base_url": llm.url, "concurrency": channels},
                engine={"voice_mode": "off"},
                storage={"path": str(Path(tmp) / "bench.db")},
                discord={
                    "token": fake.token,
                    "api_base_url": fake.api_url,
                    "gateway_url": fake.gateway_url,
                    "channel_edits": budget,
                    "channel_window_s": CAP_WINDOW_S,
                },
            )
            async with ParleyApp(settings, speech=False) as app:
                adapter = DiscordAdapter(app.services, guild_ready_timeout=READY_S)
                await adapter.start()
                users = [FakeUser(FIRST_USER_ID + i, f"user{i}") for i in range(channels)]
                started = time.monotonic()
                interactions: dict[int, FakeInteraction] = {}
                for user in users:
                    if mode == "ask":
                        interaction = await fake.interact(
                            "ask", {"prompt": "story"}, user=user, dm=True
                        )
                        interactions[user.id] = interaction
                    else:
                        await fake.post_message(user, "tell me a story", dm=True)
                done = {user.id: 0.0 for user in users}

                def shown(user: FakeUser) -> bool:
                    if mode == "ask":
                        parts = fake.reply_messages(interactions[user.id])
                        return "".join(m.content for m in parts) == reply
                    dm = fake.dm_channel(user)
                    return any(m.content == reply for m in fake.channel_messages(dm, by_bot=True))

                def finished() -> bool:
                    for user in users:
                        if not done[user.id] and shown(user):
                            done[user.id] = time.monotonic() - started
                    return all(done.values())

                async with asyncio.timeout(DEADLINE_S):
                    await fake.wait_until(finished)
                await adapter.stop()
    return _summarise(mode, channels, budget, fake.calls, done)


def _summarise(
    mode: str, channels: int, budget: int, calls: list[Call], done: dict[int, float]
) -> Row:
    writes = [c for c in calls if c.channel_id is not None]
    ok = [c for c in writes if c.status < 300]
    per_channel: dict[int, list[float]] = {}
    for call in ok:
        if call.channel_id is not None:  # always, for a write: narrows the type
            per_channel.setdefault(call.channel_id, []).append(call.at)
    rates = []
    for times in per_channel.values():
        span = times[-1] - times[0]
        rates.append((len(times) - 1) / span if span > 0 else 0.0)
    stamps = sorted(c.at for c in ok)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return Row(
        mode=mode,
        channels=channels,
        budget=budget,
        mean_rate=statistics.fmean(rates) if rates else 0.0,
        peak_window=max(
            (_busiest_window(t, CAP_WINDOW_S) for t in per_channel.values()), default=0
        ),
        overall_rate=(len(stamps) - 1) / span if span > 0 else 0.0,
        limited_writes=sum(1 for c in writes if c.status == 429),
        limited_other=sum(1 for c in calls if c.status == 429 and c.channel_id is None),
        writes=len(ok),
        reply_s=statistics.median(done.values()),
        complete=sum(1 for value in done.values() if value),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--channels", default="1,10,40", help="comma-separated channel counts")
    parser.add_argument("--mode", default="chat,ask", help="comma-separated: chat, ask")
    parser.add_argument(
        "--budget",
        default="5,10",
        help=f"comma-separated discord.channel_edits per {CAP_WINDOW_S:g} s",
    )
    parser.add_argument("--words", type=int, default=120, help="words per reply")
    parser.add_argument("--wps", type=float, default=20.0, help="words per second from the LLM")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    print(
        f"{args.words} words per reply at {args.wps:g} words/s; the fake caps each channel at "
        f"{CAP_WRITES} writes per {CAP_WINDOW_S:g} s ({CAP_WRITES / CAP_WINDOW_S:g}/s) and the bot "
        f"at {GLOBAL_LIMIT[0]} requests/s\n"
    )
    print(
        f"| mode | channels | budget (writes/{CAP_WINDOW_S:g} s) | mean writes/s/channel "
        f"| busiest {CAP_WINDOW_S:g} s/channel | overall writes/s | 429s on writes "
        "| other 429s | writes "
        "| median reply s | complete |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.mode.split(","):
        for budget in (int(n) for n in args.budget.split(",")):
            for channels in (int(n) for n in args.channels.split(",")):
                r = asyncio.run(run(mode, channels, budget, args.words, args.wps))
                print(
                    f"| {r.mode} | {r.channels} | {r.budget:g} | {r.mean_rate:.2f} "
                    f"| {r.peak_window} | {r.overall_rate:.1f} | {r.limited_writes} "
                    f"| {r.limited_other} | {r.writes} "
                    f"| {r.reply_s:.1f} | {r.complete}/{r.channels} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
