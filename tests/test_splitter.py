"""The Markdown-aware splitter: parts fit, rejoin to the original, and keep code fences balanced."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.splitter import cut_first, split_markdown
from tests.fakes.markdown import (
    code_lines,
    list_items,
    markdown,
    paragraphs,
    rejoins,
    unclosed_fence,
)

# Text made of the characters that matter to the splitter, in any order.
chaos = st.text(alphabet="ab é`~ \n.!#\t\u0301", max_size=300)


def cut_positions(parts: list[str]) -> list[int]:
    """Where the original text was cut, for parts that concatenate to it exactly."""
    positions, total = [], 0
    for part in parts[:-1]:
        total += len(part)
        positions.append(total)
    return positions


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=chaos, limit=st.integers(min_value=1, max_value=60))
def test_any_text_fits_and_rejoins(text: str, limit: int) -> None:
    parts = split_markdown(text, limit)
    assert all(0 < len(part) <= limit for part in parts)
    assert rejoins(parts, text)


@settings(max_examples=200, deadline=None)
@given(text=markdown, limit=st.integers(min_value=24, max_value=400))
def test_markdown_parts_fit_rejoin_and_keep_fences_balanced(text: str, limit: int) -> None:
    assert not unclosed_fence(text)
    parts = split_markdown(text, limit)
    assert all(0 < len(part) <= limit for part in parts)
    assert rejoins(parts, text)
    assert [part for part in parts if unclosed_fence(part)] == []


@settings(max_examples=200, deadline=None)
@given(text=markdown, tail=code_lines, limit=st.integers(min_value=24, max_value=200))
def test_a_reply_ending_inside_a_block_stays_open_only_in_its_last_part(
    text: str, tail: list[str], limit: int
) -> None:
    text = text + "```js\n" + "\n".join(tail)
    parts = split_markdown(text, limit)
    assert rejoins(parts, text)
    assert [unclosed_fence(part) for part in parts] == [False] * (len(parts) - 1) + [True]


@settings(max_examples=200, deadline=None)
@given(prose=st.lists(st.one_of(paragraphs, list_items), min_size=1, max_size=12))
def test_prose_is_never_cut_inside_a_word(prose: list[str]) -> None:
    text = "\n\n".join(prose)
    parts = split_markdown(text, 60)  # words are at most 12 chars: a space is always in reach
    assert "".join(parts) == text  # no code blocks: nothing is added
    assert all(text[position - 1].isspace() for position in cut_positions(parts))


# --- boundaries -------------------------------------------------------------------------------


def test_text_that_fits_is_one_part_and_empty_text_none() -> None:
    assert split_markdown("short", 5) == ["short"]
    assert split_markdown("", 5) == []
    assert cut_first("short", 5) is None


def test_a_paragraph_break_beats_a_later_line_break() -> None:
    text = "a" * 30 + "\n\n" + "b" * 20 + "\n" + "c" * 20
    assert split_markdown(text, 60)[0] == "a" * 30 + "\n\n"


def test_a_line_break_beats_a_later_sentence_end() -> None:
    text = "a" * 30 + "\n" + "Bb. " * 5 + "x" * 20
    assert split_markdown(text, 60)[0] == "a" * 30 + "\n"


def test_a_sentence_end_beats_a_later_space() -> None:
    text = "First sentence is here. Then words and more words and yet more words"
    assert split_markdown(text, 40)[0] == "First sentence is here. "


def test_a_break_too_early_loses_to_a_fuller_part() -> None:
    text = "Hi.\n\n" + "word " * 20
    first = split_markdown(text, 50)[0]
    assert len(first) > 25
    assert first.endswith(" ")


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    assert split_markdown("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_a_letter_keeps_its_combining_accent() -> None:
    text = "e\u0301" * 10
    parts = split_markdown(text, 5)
    assert all(not part.startswith("\u0301") for part in parts)
    assert "".join(parts) == text


def test_a_cut_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "".join(f"line_{i} = {i}\n" for i in range(12))
    text = f"Look:\n\n```python\n{code}```\n\nDone."
    parts = split_markdown(text, 80)
    assert len(parts) > 2
    assert parts[0].startswith("Look:\n\n```python\n")
    for part in parts[:-1]:
        assert part.endswith("\n```")
    for part in parts[1:]:
        assert part.startswith("```python\n")
    assert all(len(part) <= 80 for part in parts)
    assert not any(unclosed_fence(part) for part in parts)
    assert rejoins(parts, text)


def test_a_longer_fence_keeps_an_inner_fence_as_code() -> None:
    inner = "```\nprint(1)\n```\n" * 6
    text = f"````md\n{inner}````"
    parts = split_markdown(text, 50)
    assert all(part.startswith("````md\n") and part.endswith("````") for part in parts)
    assert rejoins(parts, text)


def test_a_short_block_moves_whole_to_the_next_part() -> None:
    text = "a " * 20 + "\n```sh\nls -la\n```\nb"
    parts = split_markdown(text, 50)
    assert parts[1].startswith("```sh\nls -la\n```")


def test_inline_triple_backticks_are_not_a_fence() -> None:
    text = "Use ```x``` inline. " * 8
    parts = split_markdown(text, 50)
    assert "".join(parts) == text


def test_a_cut_never_leaves_a_fragment_that_may_grow_into_a_fence() -> None:
    # While streaming, "``" may become "```python" with the next token.
    cut = cut_first("aaaa bbbb ``", 11)
    assert cut is not None
    assert cut.head == "aaaa "  # not "aaaa bbbb ", which would leave "``" to start a part


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_markdown("text", 0)
