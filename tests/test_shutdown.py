"""SIGTERM ends `parley run` within its shutdown budget, even with nothing reachable, and says so.

Reproduced before the fix: with Telegram unreachable, shutdown took 10-20 s of retry noise (a
reply's final edit retried until its 60 s deadline while the adapter waited for it).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bot.cli import SHUTDOWN_BUDGET_S
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.parley_process import parley_env, start_parley
from tests.fakes.tcp_proxy import TcpProxy, port_of
from tests.fakes.telegram_api import FakeTelegramAPI

ANN = 1101
HANG_GUARD_S = 60.0  # only a hang gets here; the budget itself is checked from the bot's log


async def test_sigterm_with_the_platform_and_the_llm_unreachable(tmp_path: Path) -> None:
    async with (
        FakeTelegramAPI() as api,
        TcpProxy(port_of(api.url)) as proxy,
        FakeLLMServer(Behaviour(reply="word " * 2000, delay_s=0.05)) as llm,
        TcpProxy(port_of(llm.url)) as llm_proxy,
    ):
        env = parley_env(
            PARLEY_TELEGRAM__TOKEN=api.token,
            PARLEY_TELEGRAM__API_BASE_URL=f"{proxy.url}/bot",
            PARLEY_TELEGRAM__FILE_BASE_URL=f"{proxy.url}/file/bot",
            PARLEY_LLM__BASE_URL=llm_proxy.url,
            PARLEY_STORAGE__PATH=str(tmp_path / "p.db"),
            PARLEY_STT__MODEL="tiny.en",
        )
        proc = await start_parley("run", env=env, stdin=asyncio.subprocess.DEVNULL)
        try:
            ann = api.user(ANN, "Ann")
            await api.wait_for(lambda a: a.calls_to("setMyCommands"))
            api.send_text(api.private_chat(ann), ann, "tell me a long story")
            await api.wait_for(lambda a: a.calls_to("editMessageText"))  # mid-reply
            # Neither Telegram nor the LLM can be reached any more, then SIGTERM.
            async with proxy.outage(), llm_proxy.outage():
                proc.send_signal(signal.SIGTERM)
                _, stderr = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log[-3000:]
    assert "shutting down" in log.lower()
    # The bot reports its own shutdown time, and it kept to the budget.
    line = next(line for line in log.splitlines() if "stopped in" in line)
    reported = float(line.split("stopped in ")[1].split(" s")[0])
    assert reported <= SHUTDOWN_BUDGET_S, line
    # It says what it could not do, once, instead of retrying until a deadline.
    assert log.count("Traceback") == 0, log[-3000:]
