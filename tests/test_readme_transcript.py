"""The README's console transcript is what a newcomer gets, word for word, from the bundled model.

The bundled base model answers greedily by default, so the same questions get the same answers at
every run: the test types the README's questions into `parley run` on a terminal, exactly as
`make run` starts it in a fresh checkout, and compares the whole screen with the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.prompt import PromptTurn, render_raw
from tests.fakes.parley_process import ROOT, parley_env
from tests.fakes.terminal import Terminal

README = ROOT / "README.md"
PROMPT = "you> "
_BLOCK = re.compile(r"```\n\$ make run\n(.*?)```", re.DOTALL)


def _transcript() -> str:
    """The README's `make run` block, without its `$ make run` line."""
    found = _BLOCK.search(README.read_text(encoding="utf-8"))
    assert found, "README.md has no ```-block starting with `$ make run`"
    return found.group(1)


def _questions(text: str) -> list[str]:
    return [line.removeprefix(PROMPT) for line in text.splitlines() if line.startswith(PROMPT)]


def _normal(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", question).lower().split())


def test_the_transcript_asks_questions_and_shows_answers() -> None:
    text = _transcript()
    assert len(_questions(text)) >= 2
    assert text.count("Parley: ") == len(_questions(text))


def test_the_base_models_example_turns_are_not_questions_the_docs_show() -> None:
    """Examples in the prompt would give their answers away when a reader asks them."""
    prompt, _ = render_raw("plain", "SYSTEM", [PromptTurn("user", "QUESTION")], "Parley")
    examples = {_normal(line.removeprefix("User: ")) for line in prompt.splitlines()}
    examples.discard(_normal("QUESTION"))
    assert examples, "the plain prompt has example turns"
    shown: set[str] = set()
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        shown |= {_normal(q) for q in _questions(page.read_text(encoding="utf-8"))}
    assert shown, "no questions found in the docs"
    assert examples.isdisjoint(shown), examples & shown


@pytest.mark.llama
async def test_the_bundled_model_answers_the_readme_questions_as_printed(tmp_path: Path) -> None:
    expected = _transcript()
    questions = _questions(expected)
    # A fresh folder: the database and the log go to its ./data, as in a fresh checkout.
    env = parley_env()
    async with Terminal(["run"], env=env, cwd=tmp_path) as term:
        for number, question in enumerate(questions, start=1):
            await term.read_until(PROMPT, count=number, timeout=180)
            term.type_line(question)
        await term.read_until(PROMPT, count=len(questions) + 1, timeout=180)
        assert await term.end_input() == 0, term.screen
    seen = term.screen.removesuffix(PROMPT).rstrip("\n") + "\n"
    assert seen == expected.rstrip("\n") + "\n"
    assert (tmp_path / "data" / "parley.db").is_file()
