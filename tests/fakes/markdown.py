"""Markdown replies for property tests, and checks of split output written apart from the splitter.

The checks follow CommonMark's fence rules (any indentation, as `bot.splitter` accepts) so a
splitter bug cannot hide behind a shared helper.
"""

from __future__ import annotations

import functools
import re

from hypothesis import strategies as st

# What a splitter may add at a cut inside a code block: a closing line at the end of a part and
# the block's opening line at the start of the next.
_ADDED_OPENER = re.compile(r"[ \t]*(?:`{3,}|~{3,})[^\n]*\n")
_ADDED_CLOSER = re.compile(r"\n?[ \t]*(?:`{3,}|~{3,})\Z")
_OPENER = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")


def unclosed_fence(text: str) -> bool:
    """Whether `text` ends inside a fenced code block."""
    fence: str | None = None
    for line in text.split("\n"):
        if fence is None:
            match = _OPENER.fullmatch(line)
            if match and not (match[1][0] == "`" and "`" in match[2]):
                fence = match[1]
        elif re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t\r]*", line):
            fence = None
    return fence is not None


def rejoins(parts: list[str], original: str) -> bool:
    """Whether the parts, with the fence lines added at cuts removed, concatenate to `original`."""

    @functools.cache
    def matches(index: int, position: int, reopened: bool) -> bool:
        if index == len(parts):
            return position == len(original) and not reopened
        part = parts[index]
        if reopened:
            opener = _ADDED_OPENER.match(part)
            if opener is None:
                return False
            part = part[opener.end() :]
        cores = [(part, False)]
        closer = _ADDED_CLOSER.search(part)
        if closer is not None and index < len(parts) - 1:
            cores.append((part[: closer.start()], True))
            if part[closer.start()] == "\n":
                cores.append((part[: closer.start() + 1], True))
        return any(
            original.startswith(core, position) and matches(index + 1, position + len(core), closed)
            for core, closed in cores
        )

    return matches(0, 0, False)


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé", min_size=1, max_size=12)
_inline = st.sampled_from(["`code`", "**bold**", "```x```", "e.g.", "3.14", "🙂"])
sentences = st.lists(st.one_of(words, _inline), min_size=1, max_size=15).map(
    lambda ws: " ".join(ws) + ". "
)
paragraphs = st.lists(sentences, min_size=1, max_size=5).map(lambda ss: "".join(ss).rstrip())
list_items = st.lists(sentences, min_size=1, max_size=4).map(
    lambda ss: "\n".join(f"- {s.rstrip()}" for s in ss)
)
# Lines of code: backticks and tildes inside, but never a line that would itself be a fence.
code_lines = st.lists(
    st.text(alphabet="abc =()[]{}:;'\"`~#. \t", max_size=40).filter(
        lambda line: not re.match(r"[ \t]*(`{3,}|~{3,})", line)
    ),
    min_size=0,
    max_size=12,
)
_fences = st.sampled_from(
    [("```", "```"), ("```python", "```"), ("~~~", "~~~"), ("````md", "````")]
)
_indents = st.sampled_from(["", "  ", "   "])


@st.composite
def code_blocks(draw: st.DrawFn) -> str:
    (opener, closer), indent = draw(_fences), draw(_indents)
    body = "".join(f"{indent}{line}\n" for line in draw(code_lines))
    return f"{indent}{opener}\n{body}{indent}{closer}"


_headings = words.map(lambda w: f"## {w}")
markdown = st.lists(
    st.one_of(paragraphs, list_items, code_blocks(), _headings), min_size=1, max_size=10
).flatmap(
    lambda blocks: st.lists(
        st.sampled_from(["\n\n", "\n", "\n\n\n"]), min_size=len(blocks), max_size=len(blocks)
    ).map(lambda seps: "".join(b + s for b, s in zip(blocks, seps, strict=True)))
)
