"""Split a Markdown reply into messages that fit a platform's length limit.

A cut prefers a paragraph break, then a line break, then the end of a sentence, then a space; a
word is cut only when the window holds no space at all. A fenced code block cut in two is closed
at the end of the first part and reopened, with its info string (the language), at the start of
the next, so every part renders on its own.

Lengths are counted in code points (`len`), the unit of Discord's limit and of `TargetLimits`.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

# A better kind of boundary wins only if the part it ends is at least this full; otherwise a
# paragraph break near the start of the window would leave a tiny part and one more message.
_MIN_FILL = 0.5

# Fences are recognised leniently: any indentation, because models indent them inside lists.
# A backtick fence's info string cannot hold a backtick (CommonMark), so "```x```" is inline code.
_OPENER = re.compile(r"(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)")
# The end of a reply still streaming: "``" may yet grow into a fence.
_FENCE_GROWING = re.compile(r"[ \t]*(?:`{1,2}|~{1,2})?")

_PARAGRAPH = re.compile(r"\n(?:[ \t]*\n)+|\n(?=#{1,6}[ \t])")  # after blank lines, before a heading
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"[.!?…][)\]\"'»”’*_]*[ \t\n]+")
_SPACE = re.compile(r"\s")
_LOOKAHEAD = 8  # characters past the window a boundary pattern may need to see (heading marks)

# Characters that belong to the one before them: a cut never lands just before one of these.
_ZWJ = "\u200d"
_GLUE = frozenset({_ZWJ, "\ufe0e", "\ufe0f"})


@dataclass(frozen=True, slots=True)
class Cut:
    """The first part of a text that does not fit, and how the rest of the text continues."""

    head: str  # the part, with a code block cut in two closed at its end
    consumed: int  # how many characters of the text the head covers
    reopen: str  # to put before text[consumed:]: the cut code block's opening line, or ""


@dataclass(frozen=True, slots=True)
class _Block:
    """One fenced code block: offsets into the text, and the lines that open and close it."""

    start: int  # the opening line
    body: int  # just after the opening line
    close: int  # the closing line; len(text) when the block is still open
    end: int  # just after the closing line
    opener: str  # the opening line as written
    closer: str  # a line that closes it: the opener's indentation and fence


def split_markdown(text: str, limit: int) -> list[str]:
    """Split into parts of at most `limit` chars at the best boundary; code fences closed/reopened.

    Joining the parts gives back `text` once the fence lines added at the cuts are removed. An
    empty text gives no parts.
    """
    parts: list[str] = []
    while (cut := cut_first(text, limit)) is not None:
        parts.append(cut.head)
        text = cut.reopen + text[cut.consumed :]
    if text:
        parts.append(text)
    return parts


def cut_first(text: str, limit: int) -> Cut | None:
    """The best first part of `text` of at most `limit` chars, or None when all of it fits.

    A code block still open at the end of `text` (a reply being streamed) is left open.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(text) <= limit:
        return None
    # Only the blocks that start within the window matter: one still open there covers the window.
    return _CutFinder(text, limit, _scan_blocks(text, stop=limit)).best()


def _closes(line: str, block: _Block) -> bool:
    """Whether `line` is a closing fence for `block`."""
    fence = block.closer.lstrip(" \t")
    stripped = line.strip(" \t\r")
    return len(stripped) >= len(fence) and stripped == fence[0] * len(stripped)


def _scan_blocks(text: str, *, stop: int) -> list[_Block]:
    """The fenced code blocks of `text` that start on a line starting at or before `stop`.

    A block not closed on such a line is reported as running to the end of the text.
    """
    blocks: list[_Block] = []
    opened: tuple[int, int, str, str] | None = None  # start, body, opener, closer
    pos = 0
    size = len(text)
    while pos <= min(size, stop):
        newline = text.find("\n", pos)
        line_end = size if newline < 0 else newline
        next_pos = size if newline < 0 else newline + 1
        line = text[pos:line_end]
        if opened is None:
            if (closer := _fence_of(line)) is not None:
                opened = (pos, next_pos, line, closer)
        else:
            start, body, opener, closer = opened
            candidate = _Block(start, body, pos, next_pos, opener, closer)
            if _closes(line, candidate):
                blocks.append(candidate)
                opened = None
        if newline < 0:
            break
        pos = next_pos
    if opened is not None:
        start, body, opener, closer = opened
        blocks.append(_Block(start, body, size, size, opener, closer))
    return blocks


class _CutFinder:
    """Chooses where to cut one text for one limit."""

    def __init__(self, text: str, limit: int, blocks: list[_Block]) -> None:
        self.text = text
        self.limit = limit
        self.blocks = blocks
        self.starts = [block.start for block in blocks]
        self.window = min(limit, len(text) - 1)

    def best(self) -> Cut:
        min_fill = self.limit * _MIN_FILL
        for candidates in (self._paragraphs(), self._matches(_LINE), self._matches(_SENTENCE)):
            for position in reversed(candidates):
                if position < min_fill:
                    break
                if (cut := self._cut_at(position)) is not None:
                    return cut
        for position in reversed(self._matches(_SPACE)):
            if (cut := self._cut_at(position)) is not None:
                return cut
        for position in range(self.window, 0, -1):
            if not self._glued(position) and (cut := self._cut_at(position)) is not None:
                return cut
        # Only fence lines longer than the limit get here: cut through them as plain text.
        return Cut(self.text[: self.window], self.window, "")

    def _matches(self, pattern: re.Pattern[str]) -> list[int]:
        """End positions of `pattern` within the window, in order."""
        stop = min(len(self.text), self.window + _LOOKAHEAD)
        ends = (match.end() for match in pattern.finditer(self.text, 0, stop))
        return [end for end in ends if 0 < end <= self.window]

    def _paragraphs(self) -> list[int]:
        """Paragraph breaks, headings, and the edges of code blocks."""
        edges = [
            edge
            for block in self.blocks
            for edge in (block.start, block.end)
            if 0 < edge <= self.window and self.text[edge - 1] == "\n"
        ]
        return sorted({*self._matches(_PARAGRAPH), *edges})

    def _glued(self, position: int) -> bool:
        """Whether a cut at `position` would split a character from its combining marks."""
        after = self.text[position]
        return (
            after in _GLUE
            or self.text[position - 1] == _ZWJ
            or unicodedata.combining(after) != 0
            or (self.text[position - 1] == "\r" and after == "\n")
        )

    def _block_around(self, position: int) -> _Block | None:
        """The code block whose lines surround `position`, if any."""
        index = bisect.bisect_left(self.starts, position) - 1
        if index >= 0 and position < self.blocks[index].end:
            return self.blocks[index]
        return None

    def _cut_at(self, position: int) -> Cut | None:
        """The part ending at `position`, or None when a cut there is not allowed."""
        text = self.text
        if text[position - 1] != "\n" and self._splits_fence_like_line(position):
            return None
        block = self._block_around(position)
        if block is None:
            return Cut(text[:position], position, "")
        if position <= block.body or position >= block.close:
            return None  # inside the opening or closing line, or an empty block either side
        head = text[:position]
        closing = block.closer if head.endswith("\n") else "\n" + block.closer
        reopen = self._reopen_line(block)
        if reopen is None:  # the fence lines alone leave no room: treat the code as text
            return Cut(head, position, "")
        if len(head) + len(closing) > self.limit:
            return None
        return Cut(head + closing, position, reopen)

    def _reopen_line(self, block: _Block) -> str | None:
        """The line that reopens `block` in the next part, if it leaves room for code there."""
        # The next part must hold the reopening line, one character of code and a closing line.
        line = block.opener + "\n"
        return line if len(line) + 1 + len(block.closer) + 1 <= self.limit else None

    def _splits_fence_like_line(self, position: int) -> bool:
        """Whether cutting this line at `position` could turn a piece of it into a fence line."""
        text = self.text
        line_start = text.rfind("\n", 0, position) + 1
        line_end = text.find("\n", position)
        if line_end < 0:  # the last line of a reply being streamed may still grow
            if _FENCE_GROWING.fullmatch(text, position):
                return True
            line_end = len(text)
        pieces = (text[line_start:position], text[position:line_end])
        return any(_fence_of(piece) is not None for piece in pieces)


def _fence_of(line: str) -> str | None:
    """The indentation and fence of a line that opens a code block (or closes one), else None."""
    match = _OPENER.fullmatch(line)
    if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
        return None
    return match["indent"] + match["fence"]
