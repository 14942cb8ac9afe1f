"""`[tools]`: its defaults, the environment form, server validation, and env values as secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_parley_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PARLEY_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    tools = load_settings(None).tools
    assert (tools.enabled, tools.servers, tools.timeout_s) == (False, {}, 20.0)
    assert (tools.max_rounds, tools.max_result_chars) == (5, 4000)


def test_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TOOLS__SERVERS", '{"clock": {"command": ["mcp-server-time"]}}')
    monkeypatch.setenv("PARLEY_TOOLS__ENABLED", "true")
    tools = load_settings(None).tools
    assert tools.enabled
    assert tools.servers["clock"].command == ["mcp-server-time"]
    assert (tools.servers["clock"].url, tools.servers["clock"].tools) == ("", [])


def test_a_toml_file_with_both_kinds_of_server(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[tools.servers.clock]\n"
        'command = ["mcp-server-time", "--local-timezone", "UTC"]\n'
        'env = {API_TOKEN = "tok-abcdef-123", RETRIES = 3, VERBOSE = true}\n'
        'tools = ["get_current_time"]\n'
        "[tools.servers.search]\n"
        'url = "http://127.0.0.1:8000/mcp"\n'
    )
    settings = load_settings(path)
    clock = settings.tools.servers["clock"]
    env = {key: value.get_secret_value() for key, value in clock.env.items()}
    assert env == {"API_TOKEN": "tok-abcdef-123", "RETRIES": "3", "VERBOSE": "true"}
    assert clock.tools == ["get_current_time"]
    assert settings.tools.servers["search"].url == "http://127.0.0.1:8000/mcp"
    # Env values are secrets: hidden when printed, and known to the log filter.
    assert "tok-abcdef-123" not in repr(settings)
    assert "tok-abcdef-123" in settings.secrets()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("", "set command (a program Parley starts) or url"),
        ('command = ["x"]\nurl = "http://127.0.0.1:1/mcp"\n', "exactly one of them"),
        ('url = "ftp://host/mcp"\n', "must start with http:// or https://"),
        ('url = "http://127.0.0.1:1/mcp"\nenv = {A = "b"}\n', "env is for a command"),
        ('command = ["x", ""]\n', "command has an empty part"),
    ],
)
def test_a_server_is_a_command_or_a_url(tmp_path: Path, table: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[tools.servers.one]\n{table}")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert problem in str(caught.value)


def test_server_names_must_fit_a_function_name(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[tools.servers."my server"]\ncommand = ["x"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "server name 'my server'" in str(caught.value)


def test_a_malformed_env_value_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[tools.servers.one]\ncommand = ["x"]\nenv = {PASSWORD = ["hunter2-secret-value"]}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "PASSWORD: must be a string" in str(caught.value)
    assert "hunter2" not in str(caught.value)
