"""The real llama-server with the bundled base model: the pipeline, not a stand-in."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bot.app import BUNDLED_MODEL_TEMPERATURE, ParleyApp
from tests.conftest import make_settings, message
from tests.fakes.parley_process import parley_env, start_parley
from tests.fakes.targets import RecordingTarget

ROOT = Path(__file__).resolve().parent.parent


async def test_real_model_answers_through_the_engine(llama_server_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        llm={"base_url": llama_server_url, "api": "completion", "prompt_format": "plain"},
        engine={"temperature": 0.0, "max_tokens": 32},
    )
    async with ParleyApp(settings, speech=False) as parley:
        target = RecordingTarget()
        await parley.engine.handle(message("What is the capital of France?"), target)
        assert "Paris" in target.text
        assert len(target.calls) >= 2  # streamed: a send, then edits/finalize
        # A second turn carries the first in its prompt, and still answers.
        follow = RecordingTarget()
        await parley.engine.handle(message("What is the capital of Germany?"), follow)
        assert "Berlin" in follow.text
        stored = await parley.store.history(1, 10**9, 10)
        assert [m.role for m in reversed(stored)] == ["user", "assistant"] * 2
        assert all(m.status == "complete" for m in stored)


async def test_managed_server_starts_answers_and_stops(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, engine={"temperature": 0.0, "max_tokens": 24})
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.server is not None and parley.llm.api == "completion"
        assert parley.engine.queue.slots == settings.llm.server.parallel
        target = RecordingTarget()
        await parley.engine.handle(message("What is the capital of France?"), target)
        assert "Paris" in target.text
        pid = parley.server.pid
    assert pid is not None
    assert (
        not Path(f"/proc/{pid}").exists()
        or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    )


async def test_parley_run_without_a_token_opens_the_console(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine: the console, on the managed bundled model."""
    env = parley_env(PARLEY_STORAGE__PATH=str(tmp_path / "p.db"), PARLEY_ENGINE__TEMPERATURE="0")
    proc = await start_parley("run", env=env)
    out, err = await asyncio.wait_for(
        proc.communicate(b"What is the capital of France?\n"), timeout=180
    )
    assert proc.returncode == 0, err.decode()
    assert "Parley: The capital of France is Paris" in out.decode()


async def test_the_bundled_base_model_answers_greedily_unless_told(tmp_path: Path) -> None:
    async with ParleyApp(make_settings(tmp_path), speech=False) as parley:
        assert parley.settings.engine.temperature == BUNDLED_MODEL_TEMPERATURE == 0.0
    told = make_settings(tmp_path, engine={"temperature": 0.9})
    async with ParleyApp(told, speech=False) as parley:
        assert parley.settings.engine.temperature == 0.9


async def test_sigterm_stops_the_console_and_its_llama_server(tmp_path: Path) -> None:
    env = parley_env(PARLEY_STORAGE__PATH=str(tmp_path / "p.db"))
    proc = await start_parley("chat", "--verbose", env=env)  # the log on stderr
    assert proc.stdin is not None and proc.stderr is not None
    log = b""
    async with asyncio.timeout(120):
        while b"llama-server is ready" not in log:
            log += await proc.stderr.readline()
    server_pids = _children(proc.pid)
    assert server_pids  # the managed llama-server
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0
    assert not [pid for pid in server_pids if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found
