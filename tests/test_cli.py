"""The `parley` command as users run it: a real process, real clients, loopback fakes."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest

from bot.cli import main
from tests.fakes.audio_samples import voice_note
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import parley_env, start_parley
from tests.fakes.telegram_api import FakeTelegramAPI

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return parley_env(PARLEY_STORAGE__PATH=str(tmp_path / "p.db"), **extra)


async def test_parley_run_serves_telegram_until_sigterm(
    tmp_path: Path, telegram: FakeTelegramAPI
) -> None:
    async with FakeLLMServer(Behaviour(reply=lambda b: f"echo: {last_user_text(b)}")) as llm:
        env = _env(
            tmp_path,
            PARLEY_LLM__BASE_URL=llm.url,
            PARLEY_TELEGRAM__TOKEN=telegram.token,
            PARLEY_TELEGRAM__API_BASE_URL=telegram.api_base_url,
            PARLEY_TELEGRAM__FILE_BASE_URL=telegram.file_base_url,
        )
        proc = await start_parley("run", env=env, stdin=asyncio.subprocess.DEVNULL)
        user = telegram.user(42, "Ada")
        chat = telegram.private_chat(user)
        telegram.send_text(chat, user, "hello bot")
        await telegram.wait_for(
            lambda a: any(m.text == "echo: hello bot" for m in a.bot_messages(chat["id"]))
        )
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert telegram.token not in (out + err).decode()
    assert "Parley is running on telegram" in err.decode()


async def test_a_refused_token_is_a_clear_error(
    tmp_path: Path, fake_llm: FakeLLMServer, telegram: FakeTelegramAPI
) -> None:
    env = _env(
        tmp_path,
        PARLEY_LLM__BASE_URL=fake_llm.url,
        PARLEY_TELEGRAM__TOKEN="123456:not-the-right-token",
        PARLEY_TELEGRAM__API_BASE_URL=telegram.api_base_url,
        PARLEY_TELEGRAM__FILE_BASE_URL=telegram.file_base_url,
    )
    proc = await start_parley("run", env=env, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "Traceback" not in err.decode()
    assert "config: telegram.token: Telegram does not accept it" in err.decode()
    assert "not-the-right-token" not in (out + err).decode()


async def test_console_voice_note_is_transcribed_and_answered_with_voice(tmp_path: Path) -> None:
    note = tmp_path / "note.ogg"
    note.write_bytes(voice_note())
    async with FakeLLMServer(Behaviour(reply="Nice to hear you.")) as llm:
        env = _env(
            tmp_path,
            PARLEY_LLM__BASE_URL=llm.url,
            PARLEY_STT__MODEL="tiny.en",
            PARLEY_TTS__BACKENDS='["piper"]',
        )
        proc = await start_parley(
            "chat",
            "--voice",
            str(note),
            env=env,
            cwd=tmp_path,  # voice replies go to ./voice-replies
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "🎤 “The quick brown fox" in text
    assert "Parley: Nice to hear you." in text
    replies = list((tmp_path / "voice-replies").glob("*.ogg"))
    assert len(replies) == 1 and f"[voice reply: voice-replies/{replies[0].name}" in text
    with av.open(str(replies[0])) as container:
        assert container.streams.audio[0].codec_context.name == "opus"


# Developer text: a module path or dotted module name, or the words of the code's own comments.
_DEVELOPER_TEXT = re.compile(r"\.py\b|\b(bot|adapters|tests)[./]\w|composition root", re.I)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _commands(help_text: str) -> list[str]:
    """The command names a help page lists under "commands:"."""
    section = help_text.split("\ncommands:\n", 1)[1]
    return re.findall(r"^    (\S+)", section.split("\n\n", 1)[0], flags=re.M)


def test_every_help_page_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "bot", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    pages = {"parley": shown}
    for command in _commands(shown):
        pages[command] = _help([command], capsys)
        if "\ncommands:\n" in pages[command]:
            for sub in _commands(pages[command]):
                pages[f"{command} {sub}"] = _help([command, sub], capsys)
    assert {"run", "chat", "migrate", "doctor", "healthcheck", "admin set-password"} <= set(pages)
    for name, page in pages.items():
        assert not _DEVELOPER_TEXT.search(page), f"`parley {name} --help`:\n{page}"
        description = page.split("\n\n")[1]  # the paragraph after the usage line
        assert description[0].isupper() and description.rstrip().endswith("."), page
    assert "--verbose" in pages["run"] and "--verbose" in pages["chat"]


async def test_the_start_up_log_gives_the_admin_consoles_url(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    for admin, expected in (("true", True), ("false", False)):
        env = _env(tmp_path, PARLEY_LLM__BASE_URL=fake_llm.url, PARLEY_HTTP__ENABLED="true",
                   PARLEY_HTTP__PORT="0", PARLEY_HTTP__ADMIN=admin)  # fmt: skip
        proc = await start_parley("chat", "--verbose", env=env)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.close()  # the chat ends at once: the start-up is what is looked at
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        log = err.decode()
        assert proc.returncode == 0, log
        found = re.search(r"health and metrics on (http://127\.0\.0\.1:\d+)/healthz", log)
        assert found, log
        assert (f"admin console on {found.group(1)}/admin" in log) == expected, log
