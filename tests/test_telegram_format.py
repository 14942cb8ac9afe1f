"""Markdown rendering for Telegram and the addressing/access rules (no network)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from telegram import Message

from adapters.telegram.config import TelegramSettings
from adapters.telegram.format import render_markdown
from adapters.telegram.rules import is_addressed, may_use, parse_command, strip_mention
from tests.fakes.telegram_api import FakeTelegramAPI, utf16_len

BOT_ID = 777000111
BOT_NAME = "ParleyTestBot"


def test_markdown_becomes_entities_not_markup() -> None:
    rendered = render_markdown("Say **hi** to `code` and [docs](https://example.org).", 4096)
    assert rendered.text == "Say hi to code and docs."
    kinds = {(e.type, rendered.text[e.offset : e.offset + e.length]) for e in rendered.entities}
    assert kinds == {("bold", "hi"), ("code", "code"), ("text_link", "docs")}


def test_raw_html_stays_visible_as_text() -> None:
    rendered = render_markdown("Use Vec<u8> here.\n\n<div>\nblock\n</div>\n\nand `<b>`", 4096)
    assert "Vec<u8>" in rendered.text
    assert "<div>" in rendered.text and "</div>" in rendered.text
    assert "<b>" in rendered.text  # inside code: shown as written, no backslash


def test_link_telegram_would_refuse_keeps_its_text() -> None:
    rendered = render_markdown("see [this](javascript:alert(1)) now", 4096)
    assert rendered.text == "see this now"
    assert rendered.entities == ()


def test_blank_or_oversized_rendering_falls_back_to_the_source() -> None:
    assert render_markdown("```", 4096).text == "```"
    long_table = "| a | b |\n|---|---|\n" + "| 1 | 2 |\n" * 10
    rendered = render_markdown(long_table, 40)
    assert rendered.text == long_table and rendered.entities == ()


def test_entity_offsets_count_utf16_units() -> None:
    rendered = render_markdown("😀 **b**", 4096)
    (bold,) = rendered.entities
    assert (bold.offset, bold.length) == (utf16_len("😀 "), 1)


@given(st.text(alphabet=st.sampled_from("ab *_`#<>[]()\n-|😀>!~"), max_size=200))
def test_rendering_is_always_sendable(markdown: str) -> None:
    """Whatever the model writes, the result fits and its entities lie inside the text."""
    rendered = render_markdown(markdown, 4096)
    if markdown.strip():
        assert rendered.text.strip()
    assert len(rendered.text) <= max(4096, len(markdown))
    size = utf16_len(rendered.text)
    for entity in rendered.entities:
        assert entity.offset >= 0 and entity.length > 0
        assert entity.offset + entity.length <= size


# -- who the bot answers -------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeTelegramAPI:
    """Only its update builders are used here: no server runs."""
    return FakeTelegramAPI(bot_id=BOT_ID, bot_username=BOT_NAME)


def _message(update: dict[str, Any]) -> Message:
    return Message.de_json(update["message"], None)


def test_private_chat_every_message_is_a_turn(fake: FakeTelegramAPI) -> None:
    ann = fake.user(1, "Ann")
    update = fake.text_update(fake.private_chat(ann), ann, "hello")
    assert is_addressed(_message(update), BOT_ID, BOT_NAME)


def test_group_needs_a_mention_or_a_reply(fake: FakeTelegramAPI) -> None:
    ann = fake.user(1, "Ann")
    group = fake.group_chat(-100)
    chatter = fake.text_update(group, ann, "just chatting @someone")
    mention = fake.text_update(group, ann, "hey @parleytestbot what's up")
    bot_message = fake.bot_said(group, "earlier answer")
    reply = fake.text_update(group, ann, "thanks", reply_to=bot_message)
    other = fake.text_update(group, ann, "hm", reply_to=fake.messages[(-100, 1)])
    assert not is_addressed(_message(chatter), BOT_ID, BOT_NAME)
    assert is_addressed(_message(mention), BOT_ID, BOT_NAME)
    assert is_addressed(_message(reply), BOT_ID, BOT_NAME)
    assert not is_addressed(_message(other), BOT_ID, BOT_NAME)


def test_voice_caption_mention_addresses_the_bot(fake: FakeTelegramAPI) -> None:
    ann = fake.user(1, "Ann")
    update = fake.voice_update(fake.group_chat(-5), ann, b"x", caption="@ParleyTestBot listen")
    assert is_addressed(_message(update), BOT_ID, BOT_NAME)


def test_mention_is_stripped_from_the_question() -> None:
    assert strip_mention("@ParleyTestBot  what is 2+2?", BOT_NAME) == "what is 2+2?"
    assert strip_mention("ask @parleytestbot now", BOT_NAME) == "ask now"
    assert strip_mention("mail x@ParleyTestBotnet", BOT_NAME) == "mail x@ParleyTestBotnet"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/reset", ("reset", "", False)),
        (
            "/persona  You are a pirate.\nTalk like one.",
            ("persona", "You are a pirate.\nTalk like one.", False),
        ),
        ("/Config@ParleyTestBot set temperature 0.2", ("config", "set temperature 0.2", True)),
        ("/voice\nalways", ("voice", "always", False)),
        ("/start@OtherBot", None),
        ("hello /start", None),
        ("/", None),
    ],
)
def test_commands_parse(text: str, expected: tuple[str, str, bool] | None) -> None:
    command = parse_command(text, BOT_NAME)
    got = None if command is None else (command.name, command.args, command.addressed)
    assert got == expected


def test_access_lists() -> None:
    open_bot = TelegramSettings()
    assert may_use(open_bot, 5, 5)
    users_only = TelegramSettings(allowed_user_ids=[5], admin_ids=[9])
    assert may_use(users_only, 5, -100)
    assert not may_use(users_only, 6, 6)
    assert may_use(users_only, 9, 9)  # admins are never locked out
    chats_only = TelegramSettings(allowed_chat_ids=[-100])
    assert may_use(chats_only, 6, -100)
    assert not may_use(chats_only, 6, 6)
