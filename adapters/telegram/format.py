"""The model's Markdown as Telegram text + MessageEntity pairs.

Entities instead of MarkdownV2 mean nothing needs escaping: telegramify-markdown parses the Markdown
(CommonMark, with pyromark) and returns plain text plus entity offsets in UTF-16 code units.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyromark
from telegram import MessageEntity
from telegramify_markdown import convert
from telegramify_markdown.converter import STANDARD_OPTIONS

# Link targets Telegram accepts in a text_link entity; any other target is dropped (its text stays).
_LINK_SCHEMES = ("http://", "https://", "tg://")
# CommonMark drops raw HTML from the rendered text; escaping it keeps "Vec<u8>" or "<br>" visible.
_HTML_EVENTS = ("InlineHtml", "Html")
_MAX_ESCAPE_PASSES = 3
_LT = ord("<")


@dataclass(frozen=True, slots=True)
class Rendered:
    """Text ready for sendMessage/editMessageText: the body and its entities."""

    text: str
    entities: tuple[MessageEntity, ...] = ()


def render_markdown(markdown: str, max_chars: int) -> Rendered:
    """Render Markdown for Telegram; the plain source when rendering cannot be shown as is.

    The plain source is used when the rendering is blank or longer than `max_chars`, so the
    caller never has to send an empty or oversized message because of formatting.
    """
    text, entities = convert(_escape_html(markdown), latex_escape=False)
    text = text.rstrip()
    size = len(text.encode("utf-16-le")) // 2
    kept = tuple(
        MessageEntity(
            type=e.type,
            offset=e.offset,
            length=min(e.length, size - e.offset),
            url=e.url,
            language=e.language,
            custom_emoji_id=e.custom_emoji_id,
        )
        for e in entities
        if e.offset < size and (e.type != "text_link" or (e.url or "").startswith(_LINK_SCHEMES))
    )
    if not text or len(text) > max_chars:
        return Rendered(markdown)
    return Rendered(text, kept)


def _escape_html(markdown: str) -> str:
    """Backslash-escape the `<` of raw HTML so CommonMark shows it as text."""
    for _ in range(_MAX_ESCAPE_PASSES):
        positions = _html_brackets(markdown) if "<" in markdown else []
        if not positions:
            break
        source = markdown.encode()
        for position in reversed(positions):
            source = source[:position] + b"\\" + source[position:]
        markdown = source.decode()
    return markdown


def _html_brackets(markdown: str) -> list[int]:
    """UTF-8 byte offsets of every `<` inside raw HTML (never inside code), in order."""
    source = markdown.encode()
    positions: list[int] = []
    for payload, span in pyromark.events_with_range(markdown, options=STANDARD_OPTIONS):
        if isinstance(payload, dict) and any(kind in payload for kind in _HTML_EVENTS):
            start, end = span["start"], span["end"]
            positions.extend(start + i for i, byte in enumerate(source[start:end]) if byte == _LT)
    return sorted(set(positions))
