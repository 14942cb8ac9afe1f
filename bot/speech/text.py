"""What is read aloud: Markdown stripped, code blocks dropped, streamed text cut in sentences."""

from __future__ import annotations

import re
import unicodedata

FENCES = ("```", "~~~")  # fenced code blocks are shown, never read aloud
SENTENCE_END_CHARS = ".!?:;,…"  # a line already ending in one of these gets no extra period
# "e.g. this" is not the end of a sentence; a single letter before a dot is an initial.
ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "mr", "mrs", "ms", "dr", "prof", "vs"})

_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"<?\bhttps?://[^\s>]+>?")
_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_BOLD = re.compile(r"(\*\*|__)(.+?)\1")
_STAR_EMPHASIS = re.compile(r"\*(\S(?:.*?\S)?)\*")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<!\w)_(\S(?:.*?\S)?)_(?!\w)")
_STRIKE = re.compile(r"~~(.+?)~~")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+|\s+#+\s*$")
_QUOTE = re.compile(r"^\s*(?:>\s?)+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?\s*$")
_STRAY_MARKUP = re.compile(r"\*\*|__|~~|`|(?<!\w)[*_#]+(?!\w)|\|")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r"\s+(?=[.,!?;:…])")
# Sentence punctuation, closing quotes/brackets/markup, then whitespace (needed while streaming:
# "3." may become "3.5").
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)")
# A clause break: a comma, semicolon or colon (not inside a number: "3,5"), then whitespace.
_CLAUSE_END = re.compile(r"[,;:][\"'”’)\]*_]*(?=\s)")
_WORDS = re.compile(r"\w+")
_LAST_WORD = re.compile(r"(\w+(?:\.\w+)*)\W*$")


def is_fence(line: str) -> bool:
    """True if `line` opens or closes a fenced code block."""
    return line.lstrip().startswith(FENCES)


def _speakable_line(line: str) -> str:
    if _RULE.match(line) or _TABLE_RULE.match(line):
        return ""
    line = _HEADING.sub("", line)
    line = _QUOTE.sub("", line)
    line = _LIST_MARKER.sub("", line)
    line = _IMAGE.sub("", line)
    line = _LINK.sub(r"\1", line)
    line = _URL.sub("", line)
    line = _INLINE_CODE.sub(r"\1", line)
    line = _HTML_TAG.sub("", line)
    line = _BOLD.sub(r"\2", line)
    line = _STRIKE.sub(r"\1", line)
    line = _STAR_EMPHASIS.sub(r"\1", line)
    line = _UNDERSCORE_EMPHASIS.sub(r"\1", line)
    line = _STRAY_MARKUP.sub(" ", line)
    # Emoji and other pictographs: voices read their names or choke on them.
    line = "".join(ch for ch in line if unicodedata.category(ch) != "So")
    if not any(ch.isalnum() for ch in line):
        return ""  # "...", ":)" or "—": nothing a voice can say
    return _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", line)).strip()


def speakable_text(markdown: str) -> str:
    """Plain sentences to read aloud: Markdown stripped, code blocks and links' URLs dropped."""
    spoken: list[str] = []
    in_code = False
    for line in markdown.splitlines():
        if is_fence(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        text = _speakable_line(line)
        if not text:
            continue
        # A heading or list item is a sentence of its own: give the voice its pause.
        if text[-1] not in SENTENCE_END_CHARS and text[-1] not in "\"'”’)]":
            text += "."
        spoken.append(text)
    return " ".join(spoken)


def _is_sentence_end(before: str, mark: str) -> bool:
    if not any(ch.isalpha() for ch in before):
        return False  # "1." of a numbered list, "2." of a version
    if not mark.startswith("."):
        return True
    word = _LAST_WORD.search(before)
    if word is None:
        return True
    token = word.group(1).lower()
    return token not in ABBREVIATIONS and not (len(token) == 1 and token.isalpha())


class SentenceSplitter:
    """Cuts streamed Markdown into speakable sentences as soon as each one is complete.

    A sentence ends at ". ", "! ", "? " (not after an abbreviation or a list number) or at the
    end of a line; fenced code blocks are skipped whole, even while they are still streaming.
    With `first_clause_words`, the very first piece may end sooner, at the first clause break
    (", ", "; ", ": ") after at least that many words: a listener hears the reply's start
    before its first sentence is written.
    """

    def __init__(self, *, first_clause_words: int = 0) -> None:
        self._pending = ""
        self._in_code = False
        self._line_start = True
        self._clause_words = first_clause_words  # 0 once the first piece is out

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences it completed, ready to speak."""
        self._pending += delta
        return self._take(final=False)

    def flush(self) -> list[str]:
        """The text ended: return what is left (an unclosed code block stays silent)."""
        sentences = self._take(final=True)
        self._pending = ""
        return sentences

    def _take(self, *, final: bool) -> list[str]:
        sentences: list[str] = []
        while self._pending:
            text = self._pending
            newline = text.find("\n")
            line = text if newline < 0 else text[:newline]
            if self._in_code or self._line_start:
                if newline < 0 and not final and _undecided(line, self._in_code):
                    break
                if self._in_code or is_fence(line):
                    if is_fence(line):
                        self._in_code = not self._in_code
                    self._pending = "" if newline < 0 else text[newline + 1 :]
                    self._line_start = True
                    continue
            cut = self._sentence_cut(line)
            if cut is not None:
                piece, self._pending, self._line_start = text[:cut], text[cut:], False
            elif newline >= 0:
                piece, self._pending, self._line_start = line, text[newline + 1 :], True
            elif final:
                piece, self._pending = text, ""
            else:
                break
            spoken = _speakable_line(piece)
            if spoken:
                sentences.append(spoken)
                self._clause_words = 0
        return sentences

    def _sentence_cut(self, line: str) -> int | None:
        ends = [
            match.end()
            for match in _SENTENCE_END.finditer(line)
            if _is_sentence_end(line[: match.start()], match.group())
        ][:1]
        if self._clause_words:
            ends += [
                match.end()
                for match in _CLAUSE_END.finditer(line)
                if len(_WORDS.findall(line[: match.start()])) >= self._clause_words
            ][:1]
        return min(ends, default=None)


def _undecided(line: str, in_code: bool) -> bool:
    """A partial first line that may still turn out to be a fence: wait for more text."""
    if in_code:
        return True  # code lines are dropped whole, fence or not
    stripped = line.lstrip()
    return any(fence.startswith(stripped) for fence in FENCES) or stripped.startswith(FENCES)
