"""Configuration: TOML file, environment overrides, clear errors, secrets kept secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.discord.config import DiscordSettings
from adapters.telegram.config import TelegramSettings
from bot.app import load as load_settings
from bot.config import resolve_config_path
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PARLEY_"):
            monkeypatch.delenv(key)


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    settings = load_settings(None)
    assert settings.llm.base_url == ""
    assert settings.engine.persona == "default"
    assert TelegramSettings.of(settings).max_message_chars == 4096
    assert DiscordSettings.of(settings).max_message_chars == 2000


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "c.toml"
    path.write_text(
        '[llm]\nbase_url = "http://127.0.0.1:9"\ntimeout_s = 30\n'
        '[storage]\npath = "x.db"\n[telegram]\nadmin_ids = [1, 2]\n'
    )
    monkeypatch.setenv("PARLEY_LLM__BASE_URL", "http://127.0.0.1:8")
    monkeypatch.setenv("PARLEY_STORAGE__PATH", "/tmp/y.db")
    settings = load_settings(path)
    assert settings.llm.base_url == "http://127.0.0.1:8"  # env wins over the file
    assert settings.llm.timeout_s == 30  # the file wins over defaults
    assert settings.storage.path == "/tmp/y.db"
    assert TelegramSettings.of(settings).admin_ids == [1, 2]


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, {}) is None
    (tmp_path / "config.toml").write_text("")
    assert resolve_config_path(None, {}) == Path("config.toml")
    assert resolve_config_path(None, {"PARLEY_CONFIG": "/a.toml"}) == Path("/a.toml")
    assert resolve_config_path("/b.toml", {"PARLEY_CONFIG": "/a.toml"}) == Path("/b.toml")


def test_every_problem_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "bad.toml"
    path.write_text(
        '[llm]\nbase_url = "localhost:8080"\n[engine]\ntemperature = 7\nvoice_mode = "loud"\n'
        "[telegarm]\ntoken = 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = caught.value.problems
    assert any(
        p.startswith("config: llm.base_url = 'localhost:8080': must start with") for p in problems
    )
    assert any(p.startswith("config: engine.temperature = 7:") for p in problems)
    assert any("engine.voice_mode = 'loud'" in p and "reply-to-voice" in p for p in problems)
    assert any("telegarm" in p for p in problems)
    assert len(problems) == 4


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[llm\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_secrets_are_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("PARLEY_TELEGRAM__TOKEN", "123:very-secret-token")
    settings = load_settings(None)
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.model_dump())
    assert settings.secrets() == ["123:very-secret-token"]
    # A bad secret value is named in the error but never shown.
    path = tmp_path / "c.toml"
    path.write_text('[discord]\ntoken = ["abc-secret-value"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "abc-secret-value" not in str(caught.value)
    assert "discord.token = <hidden>" in str(caught.value)


def test_cli_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[engine]\nmax_tokens = "many"\n[telegram]\ntoken = "456:another-secret"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(path), "migrate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "config: engine.max_tokens = 'many': Input should be a valid integer, unable to parse "
        "string as an integer"
    )
    assert "another-secret" not in proc.stdout + proc.stderr


def test_example_config_documents_every_key_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clean_env(monkeypatch)
    example = load_settings(ROOT / "config.example.toml").model_dump()
    defaults = load_settings(None).model_dump()

    def compare(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
        assert ours.keys() == theirs.keys(), where
        for key, value in ours.items():
            if isinstance(value, dict):
                compare(value, theirs[key], f"{where}.{key}")
            elif isinstance(value, float):
                assert value == pytest.approx(theirs[key], rel=1e-3), f"{where}.{key}"
            else:
                assert value == theirs[key], f"{where}.{key}"

    compare(example, defaults, "config")


def test_unknown_and_secret_looking_keys_never_echo_their_value(tmp_path: Path) -> None:
    # Reproduced before the fix: `config: telegram.tokn = '777:...': Extra inputs are not
    # permitted` went to stderr, the logs and CI output.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_TELEGRAM__TOKN"] = "777:AAE-secret-token-value"
    env["PARLEY_LLM__FALLBACK_URLS"] = '["http://admin:hunter2@127.0.0.1:9"]'
    (tmp_path / "config.toml").write_text(
        '[llm]\napi_key = 5\n[storage]\nurl = "mysql://root:pa55word@db/parley"\n'
        '[http]\nadmin_passwrd = "letmein-now"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "migrate"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    for secret in ("777:AAE", "secret-token", "hunter2", "pa55word", "letmein"):
        assert secret not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert "config: telegram.tokn: unknown key (did you mean telegram.token?)" in lines
    assert "config: http.admin_passwrd: unknown key" in " ".join(lines)
    assert any(line.startswith("config: llm.api_key = <hidden>:") for line in lines)
    assert any(line.startswith("config: storage.url = <hidden>:") for line in lines)
