"""`parley doctor` against fakes of what lies outside the machine: Telegram, Discord, LLMs."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from edge_tts import communicate

from adapters import platforms as all_platforms
from bot.doctor import Finding, check_tools, run_doctor
from tests.conftest import free_port, make_settings
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_api import FakeTelegramAPI

BAD_TELEGRAM_TOKEN = "999999:not-the-bots-token"
BAD_DISCORD_TOKEN = "not.the.bots.token"
REPO = Path(__file__).resolve().parent.parent
# The small bundled speech models: the checks look at files, nothing is loaded.
SPEECH: dict[str, dict[str, Any]] = {"stt": {"model": "tiny.en"}, "tts": {"backends": ["piper"]}}


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def rows(report: str) -> dict[str, tuple[str, str]]:
    """The table as {check: (STATUS, detail)}; a check with several rows keeps its last."""
    table = report.split("\n\n")[0].splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["CHECK", "STATUS", "DETAIL"]
    parsed = {}
    for line in table[1:]:
        check, status, detail = re.split(r"\s{2,}", line, maxsplit=2)
        parsed[check] = (status, detail)
    return parsed


def platforms(
    telegram: FakeTelegramAPI,
    discord: FakeDiscord,
    *,
    telegram_token: str | None = None,
    discord_token: str | None = None,
) -> dict[str, Any]:
    """Settings sections pointing both platforms at their fakes, with these tokens."""
    return {
        "telegram": {
            "token": telegram_token or telegram.token,
            "api_base_url": telegram.api_base_url,
        },
        "discord": {"token": discord_token or discord.token, "api_base_url": discord.api_url},
    }


async def test_bad_tokens_and_a_dead_backend_fail_without_printing_the_tokens(
    tmp_path: Path,
    telegram: FakeTelegramAPI,
    discord: FakeDiscord,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = dead_url()
    settings = make_settings(
        tmp_path,
        llm={"base_url": dead},
        **platforms(
            telegram, discord, telegram_token=BAD_TELEGRAM_TOKEN, discord_token=BAD_DISCORD_TOKEN
        ),
        **SPEECH,
    )
    assert await run_doctor(settings, all_platforms()) == 1
    out = capsys.readouterr().out
    found = rows(out)
    assert found["telegram"] == ("FAIL", "Telegram rejected the token (HTTP 401)")
    assert found["discord"] == ("FAIL", "Discord rejected the token (HTTP 401)")
    assert found[f"llm {dead}"] == ("FAIL", "cannot connect (Connection refused)")
    assert {found[name][0] for name in ("config", "database", "stt", "tts piper")} == {"OK"}
    assert "3 checks failed" in out
    assert BAD_TELEGRAM_TOKEN not in out
    assert BAD_DISCORD_TOKEN not in out


async def test_everything_reachable_passes(
    tmp_path: Path,
    telegram: FakeTelegramAPI,
    discord: FakeDiscord,
    fake_llm: FakeLLMServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url, "api_key": "sk-local-key"},
        **platforms(telegram, discord),
        **SPEECH,
    )
    assert await run_doctor(settings, all_platforms()) == 0
    out = capsys.readouterr().out
    found = rows(out)
    tg_host, dc_host = (fake.url.removeprefix("http://") for fake in (telegram, discord))
    assert found["telegram"] == ("OK", f"token valid: @ParleyTestBot via {tg_host}")
    bot_name = discord.BOT.payload()["username"]
    assert found["discord"] == ("OK", f"token valid: {bot_name} via {dc_host}")
    assert found[f"llm {fake_llm.url}"] == ("OK", "serves fake")
    assert found["config"] == (
        "OK",
        f"platforms: discord, telegram; LLM: {fake_llm.url}; http: off",
    )
    assert "All checks passed" in out
    for secret in (telegram.token, discord.token, "sk-local-key"):
        assert secret not in out


async def test_each_tool_server_is_started_once_and_reported(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "tok-0d1c3e5f7a9b"
    servers = {
        "clock": {"command": ["mcp-server-time"], "env": {"CLOCK_TOKEN": secret}},
        "missing": {"command": [str(tmp_path / "no-such-server")]},
    }
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, tools={"servers": servers}, **SPEECH
    )
    assert await run_doctor(settings, all_platforms()) == 1
    out = capsys.readouterr().out
    found = rows(out)
    assert found["tools.clock"] == ("OK", "ready, 2 tools (stdio)")
    assert found["tools.missing"][0] == "FAIL"
    assert "tools" not in found  # an instruct model's server: no warning about the model
    assert secret not in out
    # The bundled base model (no server, no model file) is told it cannot call tools.
    bundled = make_settings(tmp_path, tools={"servers": {"missing": servers["missing"]}})
    warning = (await check_tools(bundled))[-1]
    assert (warning.check, warning.status) == ("tools", "warn")
    assert "bundled base model cannot call tools" in warning.detail
    assert await check_tools(make_settings(tmp_path)) == [
        Finding("tools", "skip", "no [tools.servers] configured")
    ]


async def test_a_fallback_backend_is_checked_too(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = dead_url()
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url, "fallback_urls": [dead]}, **SPEECH
    )
    assert await run_doctor(settings, all_platforms()) == 1
    found = rows(capsys.readouterr().out)
    assert found[f"llm {fake_llm.url}"][0] == "OK"
    assert found[f"llm {dead}"][0] == "FAIL"
    assert found["telegram"] == found["discord"] == ("SKIP", "no token set")


async def test_the_servers_of_the_models_a_chat_can_pick_are_checked_too(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = dead_url()
    models = {
        "big": {"url": dead, "api_key": "sk-big-model-key"},
        "same": {"url": dead, "api_key": "sk-big-model-key"},  # the same server: checked once
        "named": {"model": "other"},  # on the default servers
    }
    settings = make_settings(tmp_path, llm={"base_url": fake_llm.url, "models": models}, **SPEECH)
    assert await run_doctor(settings, all_platforms()) == 1
    out = capsys.readouterr().out
    found = rows(out)
    assert found[f"llm {fake_llm.url}"][0] == "OK"
    assert found[f"llm {dead} (/model big)"][0] == "FAIL"
    assert [check for check in found if check.startswith("llm ")] == [
        f"llm {fake_llm.url}",
        f"llm {dead} (/model big)",
    ]
    assert "sk-big-model-key" not in out


# -- the managed llama-server ------------------------------------------------------------------


async def test_managed_server_with_the_bundled_binary_and_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await run_doctor(make_settings(tmp_path, llm={"base_url": ""}, **SPEECH), all_platforms())
        == 0
    )
    found = rows(capsys.readouterr().out)
    assert found["llm server"][0] == "OK"
    assert "version:" in found["llm server"][1]
    assert found["llm model"][0] == "OK"
    assert "gemma-3-270m" in found["llm model"][1]


async def test_managed_server_with_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = {"binary": str(tmp_path / "no-llama-server"), "model_path": str(tmp_path / "no.gguf")}
    settings = make_settings(tmp_path, llm={"base_url": "", "server": server}, **SPEECH)
    assert await run_doctor(settings, all_platforms()) == 1
    found = rows(capsys.readouterr().out)
    assert found["llm server"][0] == "FAIL"
    assert "cannot run" in found["llm server"][1]
    assert found["llm model"] == (
        "FAIL",
        f"llm.server.model_path {tmp_path / 'no.gguf'} is not a file",
    )


# -- database and speech -----------------------------------------------------------------------


async def test_database_newer_than_the_code_fails(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "parley.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    assert (
        await run_doctor(
            make_settings(tmp_path, llm={"base_url": fake_llm.url}, **SPEECH), all_platforms()
        )
        == 1
    )
    status, detail = rows(capsys.readouterr().out)["database"]
    assert status == "FAIL"
    assert "schema version 999 is newer" in detail


async def test_a_file_that_is_no_database_fails(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "parley.db").write_bytes(b"this is not SQLite " * 100)
    assert (
        await run_doctor(
            make_settings(tmp_path, llm={"base_url": fake_llm.url}, **SPEECH), all_platforms()
        )
        == 1
    )
    assert rows(capsys.readouterr().out)["database"][0] == "FAIL"


async def test_the_doctor_creates_no_database(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await run_doctor(
            make_settings(tmp_path, llm={"base_url": fake_llm.url}, **SPEECH), all_platforms()
        )
        == 0
    )
    assert rows(capsys.readouterr().out)["database"][1].endswith("created at the first start")
    assert not (tmp_path / "parley.db").exists()


async def test_missing_stt_model_fails(
    tmp_path: Path, fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        tmp_path,
        llm={"base_url": fake_llm.url},
        stt={"model": str(tmp_path / "no-model")},
        tts={"backends": ["piper"]},
    )
    assert await run_doctor(settings, all_platforms()) == 1
    status, detail = rows(capsys.readouterr().out)["stt"]
    assert status == "FAIL"
    assert "stt.model" in detail


async def test_an_unreachable_online_voice_only_warns_while_piper_works(
    tmp_path: Path,
    fake_llm: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(communicate, "WSS_URL", dead_url().replace("http://", "wss://") + "/tts")
    edge_and_piper = {"backends": ["edge", "piper"]}
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, stt=SPEECH["stt"], tts=edge_and_piper
    )
    assert await run_doctor(settings, all_platforms()) == 0
    found = rows(capsys.readouterr().out)
    assert found["tts edge"][0] == "WARN"
    assert found["tts piper"][0] == "OK"

    only_edge = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, stt=SPEECH["stt"], tts={"backends": ["edge"]}
    )
    assert await run_doctor(only_edge, all_platforms()) == 1
    assert rows(capsys.readouterr().out)["tts edge"][0] == "FAIL"


async def test_a_reachable_online_voice_passes(
    tmp_path: Path,
    fake_llm: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(communicate, "WSS_URL", fake_llm.url.replace("http://", "wss://") + "/x")
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, stt=SPEECH["stt"], tts={"backends": ["edge"]}
    )
    assert await run_doctor(settings, all_platforms()) == 0
    assert rows(capsys.readouterr().out)["tts edge"] == (
        "OK",
        "online voice reachable at 127.0.0.1",
    )


# -- the command -------------------------------------------------------------------------------


def test_parley_doctor_exits_non_zero_on_a_failure(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[llm]\nbase_url = "{dead_url()}"\n'
        f'[storage]\npath = "{tmp_path / "parley.db"}"\n'
        '[stt]\nmodel = "tiny.en"\n[tts]\nbackends = ["piper"]\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config), "doctor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert rows(done.stdout)["database"][0] == "OK"
    assert "cannot connect (Connection refused)" in done.stdout
