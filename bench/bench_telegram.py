"""Telegram streaming under load: N private chats streaming at once through the loopback fake.

The fake Bot API enforces flood control like Telegram's (per private chat ~1 message/s with a
small burst, 30/s for the whole bot) and answers 429 with retry_after when it is exceeded.
Prints a Markdown table: write rate per chat against the configured cap, overall rate, 429s.

    .venv/bin/python bench/bench_telegram.py --chats 1,10,40 --mode edit,draft
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

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.config import TelegramSettings
from bot.app import ParleyApp, full_settings_class
from bot.config import Settings
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.telegram_api import ApiCall, FakeTelegramAPI, FloodControl

WRITES = {"sendmessage", "editmessagetext", "sendmessagedraft"}
FIRST_USER_ID = 10_000
DEADLINE_S = 300.0  # the whole run gives up after this


@dataclass
class Row:
    mode: str
    chats: int
    cap: float
    mean_rate: float
    peak_rate: float
    overall_rate: float
    rate_limited: int
    writes: int
    reply_s: float
    complete: int


def _peak_per_second(times: list[float]) -> int:
    """The most writes within any one-second window."""
    best, start = 0, 0
    for end, stamp in enumerate(times):
        while stamp - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(mode: str, chats: int, words: int, words_per_s: float) -> Row:
    reply = " ".join(f"word{i}" for i in range(words))
    behaviour = Behaviour(reply=reply, delay_s=1 / words_per_s)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeLLMServer(behaviour=behaviour) as llm,
            FakeTelegramAPI(flood=FloodControl()) as api,
        ):
            settings = full_settings_class()(
                llm={"base_url": llm.url, "concurrency": chats},
                engine={"voice_mode": "off"},
                storage={"path": str(Path(tmp) / "bench.db")},
                telegram={
                    "token": api.token,
                    "api_base_url": api.api_base_url,
                    "file_base_url": api.file_base_url,
                    "stream": mode,
                },
            )
            async with ParleyApp(settings, speech=False) as app:
                adapter = TelegramAdapter(app.services, poll_timeout_s=1)
                await adapter.start()
                users = [api.user(FIRST_USER_ID + i, f"user{i}") for i in range(chats)]
                started = time.monotonic()
                for user in users:
                    api.send_text(api.private_chat(user), user, "tell me a story")
                done = {u["id"]: 0.0 for u in users}

                def finished(fake: FakeTelegramAPI) -> bool:
                    for user_id, at in done.items():
                        if not at and any(
                            m.text.endswith(f"word{words - 1}") for m in fake.bot_messages(user_id)
                        ):
                            done[user_id] = time.monotonic() - started
                    return all(done.values())

                async with asyncio.timeout(DEADLINE_S):
                    await api.until(finished)
                await adapter.stop()
    return _summarise(mode, chats, settings, api.calls, done)


def _summarise(
    mode: str, chats: int, settings: Settings, calls: list[ApiCall], done: dict[int, float]
) -> Row:
    writes = [c for c in calls if c.method.lower() in WRITES]
    per_chat: dict[int, list[float]] = {}
    for call in writes:
        if call.ok:
            per_chat.setdefault(call.params["chat_id"], []).append(call.at)
    rates, peaks = [], []
    for times in per_chat.values():
        span = times[-1] - times[0]
        rates.append((len(times) - 1) / span if span > 0 else 0.0)
        peaks.append(_peak_per_second(times))
    ok = sorted(c.at for c in writes if c.ok)
    span = ok[-1] - ok[0] if len(ok) > 1 else 0.0
    return Row(
        mode=mode,
        chats=chats,
        cap=TelegramSettings.of(settings).private_rate,
        mean_rate=statistics.fmean(rates) if rates else 0.0,
        peak_rate=max(peaks, default=0),
        overall_rate=(len(ok) - 1) / span if span > 0 else 0.0,
        rate_limited=sum(1 for c in writes if c.error is not None and c.error.status == 429),
        writes=len(ok),
        reply_s=statistics.median(done.values()),
        complete=sum(1 for value in done.values() if value),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chats", default="1,10,40", help="comma-separated chat counts")
    parser.add_argument("--mode", default="edit,draft", help="comma-separated: edit, draft")
    parser.add_argument("--words", type=int, default=120, help="words per reply")
    parser.add_argument("--wps", type=float, default=20.0, help="words per second from the LLM")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("PTB_TIMEDELTA", "1")
    print(f"{args.words} words per reply at {args.wps:g} words/s; fake flood control on\n")
    print(
        "| mode | chats | cap/chat (msg/s) | mean writes/s/chat | peak writes in 1 s/chat "
        "| overall writes/s | 429s | writes | median reply s | complete |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.mode.split(","):
        for chats in (int(n) for n in args.chats.split(",")):
            r = asyncio.run(run(mode, chats, args.words, args.wps))
            print(
                f"| {r.mode} | {r.chats} | {r.cap:g} | {r.mean_rate:.2f} | {r.peak_rate} "
                f"| {r.overall_rate:.1f} | {r.rate_limited} | {r.writes} | {r.reply_s:.1f} "
                f"| {r.complete}/{r.chats} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
