"""`parley api-key create NAME` and `parley run` serving the HTTP API, as real processes: a key
made on the command line opens the API of a bot started without any key in its configuration,
and that bot runs no console chat."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.parley_process import ROOT, parley_env, start_parley

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL
START_GUARD_S = 60.0  # only a hang gets here


def env_for(tmp_path: Path, **more: str) -> dict[str, str]:
    """A clean environment on this test's database (PostgreSQL's, in the PostgreSQL pass)."""
    kept = {k: v for k, v in os.environ.items() if k == "PARLEY_STORAGE__URL"}
    return parley_env(PARLEY_STORAGE__PATH=str(tmp_path / "p.db"), **kept, **more)


def create(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "api-key", "create", name],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_a_key_is_printed_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    made = create(env, "carol")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("pk-") and "\n" not in key
    assert "shown this once" in made.stderr and key not in made.stderr
    again = create(env, "carol")
    assert again.returncode == 1 and "already" in again.stderr and again.stdout == ""
    bad = create(env, "not a name")
    assert bad.returncode == 1 and "name" in bad.stderr
    if "PARLEY_STORAGE__URL" not in env:
        database = (tmp_path / "p.db").read_bytes()
        for suffix in ("", "-wal"):
            wal = tmp_path / f"p.db{suffix}"
            if wal.exists():
                database += wal.read_bytes()
        assert key.encode() not in database
        rows = sqlite3.connect(tmp_path / "p.db").execute("SELECT name FROM api_keys").fetchall()
        assert rows == [("carol",)]


async def test_parley_run_serves_the_api_with_a_created_key_and_no_console(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    port = free_port()
    env = env_for(
        tmp_path,
        PARLEY_LLM__BASE_URL=fake_llm.url,
        PARLEY_HTTP__ENABLED="true",
        PARLEY_HTTP__PORT=str(port),
        PARLEY_STT__MODEL="tiny.en",
        PARLEY_TTS__BACKENDS='["espeak"]',
    )
    made = await asyncio.to_thread(create, env, "carol")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    proc = await start_parley("run", env=env)  # stdin open: a console chat would read it
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as client:
            answer = None
            async with asyncio.timeout(START_GUARD_S):
                while answer is None:
                    try:
                        answer = await client.chat.completions.create(
                            model="parley", messages=[{"role": "user", "content": "hello"}]
                        )
                    except openai.APIConnectionError:
                        await asyncio.sleep(0.2)
                    except openai.InternalServerError:  # 503 until the adapter has started
                        await asyncio.sleep(0.2)
            assert answer.choices[0].message.content == "Hello from the fake model."
            with pytest.raises(openai.AuthenticationError):
                await client.with_options(api_key="pk-" + "x" * 43).models.list()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), START_GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log[-3000:]
    assert "Parley is running on api" in log
    assert stdout == b""  # no console chat prompt
    assert key not in log
