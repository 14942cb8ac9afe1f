"""A discord.py without what Parley patches or relies on stops the start with one clear line.

The internals are taken away the way a new release would drop them (monkeypatching the
installed library); the bot is started as `parley run` starts it, against the loopback fakes.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.metadata
import logging
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import davey
import discord
import discord.gateway
import discord.http
import discord.voice_state
import pytest

from adapters.discord import compat
from bot.errors import ConfigError
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.parley_process import ROOT, parley_env
from tests.fakes.platform_bots import discord_bot, discord_settings

DISCORD_PY = importlib.metadata.version("discord.py")
DAVEY = importlib.metadata.version("davey")
EXIT_CONFIG = 2
# The platform libraries and their pins: each to the minor version the tests ran with.
PLATFORM_LIBRARIES = ("discord.py", "davey", "python-telegram-bot")


def one_line(missing: str, use: str) -> str:
    return (
        f"discord.py {DISCORD_PY} lacks what Parley relies on: {missing} ({use}). "
        f"Parley is tested with discord.py 2.7.x: pip install 'discord.py==2.7.*'"
    )


@pytest.mark.parametrize(
    ("owner", "name", "missing", "use"),
    [
        (discord.http.Route, "BASE", "discord.http.Route.BASE", "endpoint redirection"),
        (
            discord.gateway.DiscordWebSocket,
            "DEFAULT_GATEWAY",
            "discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY",
            "endpoint redirection",
        ),
        (discord.http.HTTPClient, "request", "discord.http.HTTPClient.request", "sharding"),
        (
            discord.Client,  # where AutoShardedClient inherits it from
            "before_identify_hook",
            "discord.AutoShardedClient.before_identify_hook",
            "sharding",
        ),
        (
            discord.VoiceClient,
            "create_connection_state",
            "discord.VoiceClient.create_connection_state",
            "voice channels",
        ),
        (
            discord.VoiceClient,
            "_encrypt_aead_xchacha20_poly1305_rtpsize",
            "discord.VoiceClient._encrypt_aead_xchacha20_poly1305_rtpsize",
            "voice channels",
        ),
        (
            discord.voice_state.VoiceConnectionState,
            "add_socket_listener",
            "discord.voice_state.VoiceConnectionState.add_socket_listener",
            "voice channels",
        ),
        (
            discord.voice_state.SocketReader,
            "_do_run",
            "discord.voice_state.SocketReader._do_run",
            "voice channels",
        ),
    ],
)
async def test_starting_without_a_patched_attribute_stops_with_one_line(
    tmp_path: Path,
    discord: FakeDiscord,
    fake_llm: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    owner: type,
    name: str,
    missing: str,
    use: str,
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(ConfigError) as caught:
        async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
            pass
    assert caught.value.problems == [one_line(missing, use)]
    assert discord.calls == []  # stopped before logging in


async def test_parley_run_stops_with_that_line_and_no_traceback(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    # Here the attribute is gone before Parley imports its adapter, as with a newer release
    # installed: the check runs before the subclasses of discord.py's classes are defined.
    code = (
        "import runpy, discord.http\n"
        "del discord.http.Route.BASE\n"
        "runpy.run_module('bot', run_name='__main__', alter_sys=True)\n"
    )
    env = parley_env(
        PARLEY_STORAGE__PATH=str(tmp_path / "p.db"),
        PARLEY_LLM__BASE_URL=fake_llm.url,
        PARLEY_DISCORD__TOKEN="a-token",
        PARLEY_DISCORD__API_BASE_URL="http://127.0.0.1:9/api/v10",  # never reached
        PYTHONPATH=str(ROOT),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "run",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == EXIT_CONFIG, text
    assert "Traceback" not in text
    assert [line for line in text.splitlines() if "discord.py" in line] == [
        one_line("discord.http.Route.BASE", "endpoint redirection")
    ]


def test_an_attribute_the_constructor_no_longer_sets_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def renamed(self: Any, state: Any, *, start_paused: bool = True) -> None:
        # A release that calls the reader's stop flag something else.
        threading.Thread.__init__(self, daemon=True)
        self.state, self.start_paused, self._callbacks = state, start_paused, []
        self._running, self._stopping = threading.Event(), threading.Event()

    monkeypatch.setattr(discord.voice_state.SocketReader, "__init__", renamed)
    assert compat.problems() == [
        one_line("discord.voice_state.SocketReader._end", "voice channels")
    ]


def test_each_library_gets_its_own_line_with_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(discord.http.Route, "BASE")
    monkeypatch.setattr(davey, "MediaType", enum.Enum("MediaType", ["video"]))
    assert compat.problems() == [
        one_line("discord.http.Route.BASE", "endpoint redirection"),
        f"davey {DAVEY} lacks what Parley relies on: davey.MediaType.audio (voice channels). "
        "Parley is tested with davey 0.1.x: pip install 'davey==0.1.*'",
    ]


def test_a_missing_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "discord.voice_state", None)  # importing it fails
    (line,) = compat.problems()
    assert "discord.voice_state.SocketReader (voice channels)" in line
    assert "discord.voice_state.VoiceConnectionState (voice channels)" in line


def test_the_installed_libraries_have_everything_and_match_the_tested_versions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.require_libraries()
    assert compat.problems() == []
    assert caplog.records == []


def test_an_untested_version_with_everything_there_starts_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compat, "installed_version", lambda library: "2.8.0")
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.require_libraries()
    assert "discord.py 2.8.0: Parley is tested with 2.7.x" in caplog.messages


def test_the_platform_libraries_are_pinned_to_the_minor_version_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("~=")
        pins[name.split("[")[0].strip()] = version
    for library in PLATFORM_LIBRARIES:
        pinned = pins.get(library, "")
        # "~=X.Y.Z" allows X.Y.Z and later patch releases, no other minor version.
        assert pinned.count(".") == 2, f"{library} is not pinned to a minor version: {pinned!r}"
        minor = pinned.rsplit(".", 1)[0]
        installed = importlib.metadata.version(library)
        assert installed.split(".")[:2] == minor.split("."), (library, installed, pinned)
        if library in compat.TESTED:
            assert compat.TESTED[library] == minor
