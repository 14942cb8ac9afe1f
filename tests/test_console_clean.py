"""The console chat in a real terminal is a clean conversation: the log goes to a file.

Reproduced before the change: start-up INFO lines between the turns, `you> 19:49:44 INFO ...` on
the prompt line, and a WARNING glued to the end of an answer.
"""

from __future__ import annotations

import re
from pathlib import Path

from bot.messages import Msg, say
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import parley_env
from tests.fakes.terminal import Terminal

PROMPT = "you> "
# A log line as bot/logs.py writes it, wherever it starts: "19:49:44 INFO    parley: ...".
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
ECHO = Behaviour(reply=lambda body: f"echo {last_user_text(body)}")


def _env(llm_url: str, data: Path) -> dict[str, str]:
    return parley_env(
        PARLEY_LLM__BASE_URL=llm_url,
        PARLEY_LLM__RETRIES="0",
        PARLEY_STORAGE__PATH=str(data / "parley.db"),
        PARLEY_ENGINE__VOICE_MODE="off",
    )


async def _three_turns(term: Terminal, llm: FakeLLMServer) -> str:
    """A turn, a turn with the LLM down (a WARNING in the log), a turn after it is back."""
    await term.read_until(PROMPT)
    term.type_line("hello there")
    await term.read_until(PROMPT, count=2)
    llm.behaviour = Behaviour(status=503)
    term.type_line("are you there?")
    await term.read_until(PROMPT, count=3)
    llm.behaviour = ECHO
    term.type_line("welcome back")
    await term.read_until(PROMPT, count=4)
    assert await term.end_input() == 0, term.screen
    return term.screen


async def test_the_log_goes_to_a_file_and_the_terminal_shows_the_conversation(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with FakeLLMServer(ECHO) as llm, Terminal(["chat"], env=_env(llm.url, data)) as term:
        screen = await _three_turns(term, llm)
    log_file = data / "parley.log"
    lines = screen.splitlines()
    assert lines[0] == f"Logging to {log_file} (--verbose shows the log here).", screen
    assert lines[1].startswith("Parley console — "), screen
    assert "you> hello there\nParley: echo hello there\n" in screen
    assert f"you> are you there?\n{say(Msg.LLM_DOWN)}" in screen
    assert "you> welcome back\nParley: echo welcome back\n" in screen
    assert not LOG_LINE.search(screen), screen
    log = log_file.read_text(encoding="utf-8")
    assert LOG_LINE.search(log), log  # the start-up lines
    assert re.search(r"WARNING +bot\.reply: no LLM backend answered", log), log


async def test_verbose_shows_the_log_in_the_terminal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with (
        FakeLLMServer(ECHO) as llm,
        Terminal(["chat", "--verbose"], env=_env(llm.url, data)) as term,
    ):
        screen = await _three_turns(term, llm)
    assert "Logging to" not in screen
    assert re.search(r"WARNING +bot\.reply: no LLM backend answered", screen), screen
    assert "you> welcome back\nParley: echo welcome back\n" in screen
    assert not (data / "parley.log").exists()
