"""The console chat as a user runs it: `parley chat` in a terminal-like pipe."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import parley_env, start_parley

ROOT = Path(__file__).resolve().parent.parent


async def _start(url: str, tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    env = parley_env(PARLEY_LLM__BASE_URL=url, PARLEY_STORAGE__PATH=str(tmp_path / "p.db"))
    return await start_parley("chat", *args, env=env)


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen = ""
    async with asyncio.timeout(60):
        while marker not in seen:
            chunk = await stream.read(256)
            if not chunk:
                break
            seen += chunk.decode()
    return seen


async def test_console_chat_streams_and_runs_commands(tmp_path: Path) -> None:
    async with FakeLLMServer(Behaviour(reply=lambda b: f"echo {last_user_text(b)}")) as llm:
        proc = await _start(llm.url, tmp_path)
        out, err = await asyncio.wait_for(
            proc.communicate(b"hello there\n/persona\n/config set temperature 0.2\n/reset\n"),
            timeout=60,
        )
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "Parley: echo hello there" in text
    assert "Persona: default." in text
    assert "temperature is now 0.2 (was 0.7)" in text  # the console user is the admin
    assert "Conversation cleared (2 messages)" in text


async def test_ctrl_c_cancels_the_reply_not_the_program(tmp_path: Path) -> None:
    slow = Behaviour(reply="tick " * 400, delay_s=0.02)
    async with FakeLLMServer(slow) as llm:
        proc = await _start(llm.url, tmp_path)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"count for me\n")
        await proc.stdin.drain()
        await _read_until(proc.stdout, "tick tick tick")
        proc.send_signal(signal.SIGINT)
        assert "[reply cancelled]" in await _read_until(proc.stdout, "[reply cancelled]")
        llm.behaviour = Behaviour(reply="still here")
        proc.stdin.write(b"are you alive?\n")
        await proc.stdin.drain()
        assert "Parley: still here" in await _read_until(proc.stdout, "still here")
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_console_export_writes_a_file_and_never_over_an_earlier_one(
    tmp_path: Path,
) -> None:
    import io

    from adapters.console import ConsoleChat
    from bot.app import ParleyApp
    from tests.conftest import make_settings

    async with FakeLLMServer(Behaviour(reply=lambda b: f"echo {last_user_text(b)}")) as llm:
        settings = make_settings(tmp_path, llm={"base_url": llm.url})
        async with ParleyApp(settings, speech=False) as app:
            out = io.StringIO()
            chat = ConsoleChat(
                app.services,
                stdin=io.StringIO("plan a picnic\n/session export\n/session export\n"),
                stdout=out,
                file_dir=tmp_path / "files",
            )
            await chat.run()
    first, second = (tmp_path / "files" / name for name in _export_names(out.getvalue()))
    assert second.name == first.name.replace(".md", "-2.md")  # the first one is kept
    assert all("echo plan a picnic" in path.read_text() for path in (first, second))


def _export_names(output: str) -> list[str]:
    return [
        line.rsplit("/", 1)[-1].rstrip("]") for line in output.splitlines() if "[file: " in line
    ]
