"""TelegramReplyTarget against the loopback Bot API, through the real python-telegram-bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from telegram import Bot

from adapters.telegram.targets import TYPING_REFRESH_S, TelegramReplyTarget, split_plain
from bot.errors import DeliveryError, RetryAfter
from bot.types import RateBudget, TargetLimits, VoiceClip
from tests.fakes.clock import ManualClock
from tests.fakes.telegram_api import FakeTelegramAPI

USER_ID = 4242
GROUP_ID = -1001234
LIMITS = TargetLimits(
    max_chars=4096,
    chat=RateBudget(rate=1.0, burst=3.0),
    platform=RateBudget(rate=30.0, burst=30.0),
    platform_key="telegram",
)


@pytest.fixture
async def bot(telegram: FakeTelegramAPI) -> AsyncIterator[Bot]:
    """A Bot on the fake, which knows Ann's private chat and a group."""
    telegram.private_chat(telegram.user(USER_ID, "Ann"))
    telegram.group_chat(GROUP_ID)
    api, files = telegram.api_base_url, telegram.file_base_url
    async with Bot(telegram.token, base_url=api, base_file_url=files) as b:
        yield b


def target(bot: Bot, chat_id: int = USER_ID, **kwargs: Any) -> TelegramReplyTarget:
    return TelegramReplyTarget(bot, chat_id=chat_id, limits=LIMITS, **kwargs)


async def test_edit_stream_ends_with_formatted_final_text(
    telegram: FakeTelegramAPI, bot: Bot
) -> None:
    t = target(bot)
    message_id = await t.send("Hello")
    await t.edit(message_id, "Hello **wor")
    final_id = await t.finalize(message_id, "Hello **world**!")
    assert final_id == message_id
    (message,) = telegram.bot_messages(USER_ID)
    assert message.text == "Hello world!"
    assert message.entities == [{"type": "bold", "offset": 6, "length": 5}]
    methods = [c.method for c in telegram.calls if c.method != "getMe"]
    assert methods == ["sendMessage", "editMessageText", "editMessageText"]


async def test_unchanged_text_is_not_an_error(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot)
    message_id = await t.send("Same text")
    await t.edit(message_id, "Same text")  # known to be shown already: no request at all
    assert telegram.calls_to("editMessageText") == []
    # A second target does not know what the message shows: Telegram answers "not modified".
    await target(bot).finalize(message_id, "Same text")
    (call,) = telegram.calls_to("editMessageText")
    assert call.error is not None and "not modified" in call.error.description


async def test_refused_formatting_goes_out_plain(telegram: FakeTelegramAPI, bot: Bot) -> None:
    telegram.fail(
        "sendMessage",
        description="Bad Request: can't parse entities: unsupported start tag",
        when=lambda params: bool(params.get("entities")),
    )
    t = target(bot)
    message_id = await t.send("**bold** start")
    telegram.fail(
        "editMessageText",
        description="Bad Request: can't parse entities: entity out of range",
        when=lambda params: bool(params.get("entities")),
    )
    await t.finalize(message_id, "**bold** start and _more_")
    (message,) = telegram.bot_messages(USER_ID)
    assert message.text == "**bold** start and _more_"  # the same text, nothing lost
    assert message.entities == []


async def test_rate_limit_on_edit_raises_retry_after(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot)
    message_id = await t.send("one")
    telegram.rate_limit("editMessageText", retry_after=7)
    with pytest.raises(RetryAfter) as caught:
        await t.edit(message_id, "one two")
    assert caught.value.retry_after == 7
    await t.finalize(message_id, "one two three")  # the streamer retries later: it lands
    assert telegram.bot_messages(USER_ID)[0].text == "one two three"


async def test_permanent_failure_is_a_delivery_error(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot)
    message_id = await t.send("text")
    telegram.messages[(USER_ID, int(message_id))].deleted = True  # the user deleted it
    with pytest.raises(DeliveryError):
        await t.edit(message_id, "more text")
    await t.delete(message_id)  # already gone: nothing to do


async def test_draft_stream_posts_one_real_message(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot, use_drafts=True)
    draft = await t.send("Thinking about")
    await t.edit(draft, "Thinking about **it**")
    final_id = await t.finalize(draft, "Thinking about **it**: done.")
    drafts = telegram.calls_to("sendMessageDraft", ok=True)
    assert len(drafts) == 2
    assert len({c.params["draft_id"] for c in drafts}) == 1
    assert drafts[1].params["entities"] == [{"type": "bold", "offset": 15, "length": 2}]
    assert telegram.calls_to("editMessageText") == []
    (message,) = telegram.bot_messages(USER_ID)
    assert str(message.message_id) == final_id
    assert message.text == "Thinking about it: done."


async def test_draft_with_refused_formatting_is_drafted_plain(
    telegram: FakeTelegramAPI, bot: Bot
) -> None:
    telegram.fail(
        "sendMessageDraft",
        description="Bad Request: can't parse entities: entity out of range",
        when=lambda params: bool(params.get("entities")),
    )
    t = target(bot, use_drafts=True)
    draft = await t.send("**Hi**")
    assert draft.startswith("draft:")
    assert telegram.calls_to("sendMessageDraft", ok=True)[0].params["text"] == "**Hi**"


async def test_refused_drafts_fall_back_to_edits(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot, chat_id=GROUP_ID, use_drafts=True)  # Telegram allows drafts in DMs only
    message_id = await t.send("part")
    await t.finalize(message_id, "part two")
    assert telegram.calls_to("sendMessageDraft", ok=False)
    assert telegram.bot_messages(GROUP_ID)[0].text == "part two"


async def test_group_reply_quotes_the_question_once(telegram: FakeTelegramAPI, bot: Bot) -> None:
    t = target(bot, chat_id=GROUP_ID, reply_to_message_id=17)
    first = await t.send("first part")
    await t.finalize(first, "first part")
    await t.send("second part")
    sends = telegram.calls_to("sendMessage")
    assert sends[0].params["reply_parameters"]["message_id"] == 17
    assert "reply_parameters" not in sends[1].params


async def test_typing_is_throttled(telegram: FakeTelegramAPI, bot: Bot) -> None:
    clock = ManualClock()
    t = target(bot, clock=clock)
    for _ in range(5):
        await t.typing()
    clock.advance(TYPING_REFRESH_S / 2)
    await t.typing()
    assert len(telegram.calls_to("sendChatAction")) == 1
    clock.advance(TYPING_REFRESH_S)
    await t.typing()
    calls = telegram.calls_to("sendChatAction")
    assert len(calls) == 2 and calls[1].params["action"] == "typing"


async def test_queue_position_is_one_message_removed_when_the_reply_starts(
    telegram: FakeTelegramAPI, bot: Bot
) -> None:
    t = target(bot)
    await t.queued(3)
    await t.queued(3)
    await t.queued(2)  # queued() never waits for the platform: the notice follows
    await telegram.wait_for(lambda api: api.bot_messages(USER_ID))
    (queue_message,) = telegram.bot_messages(USER_ID)
    assert "#2 in line" in queue_message.text
    await t.send("Here is my answer")
    shown = ["Here is my answer"]
    await telegram.wait_for(lambda api: [m.text for m in api.bot_messages(USER_ID)] == shown)


async def test_long_notice_is_split(telegram: FakeTelegramAPI, bot: Bot) -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(100))  # ~10,000 characters
    await target(bot).notice(text)
    parts = [m.text for m in telegram.bot_messages(USER_ID)]
    assert len(parts) == 3
    assert all(len(part) <= LIMITS.max_chars for part in parts)
    assert "\n".join(parts) == text


async def test_notice_waits_out_a_short_rate_limit(telegram: FakeTelegramAPI, bot: Bot) -> None:
    telegram.rate_limit("sendMessage", retry_after=1)
    await target(bot).notice("🎤 “hello there”")
    assert [c.ok for c in telegram.calls_to("sendMessage")] == [False, True]
    assert telegram.bot_messages(USER_ID)[0].text == "🎤 “hello there”"


CLIP = VoiceClip(ogg_opus=b"OggS-fake-opus", duration_s=2.4, waveform=b"", text="Hi there.")


async def test_voice_reply_is_a_voice_message(telegram: FakeTelegramAPI, bot: Bot) -> None:
    await target(bot).send_voice(CLIP)
    (call,) = telegram.calls_to("sendVoice")
    assert call.files["voice"] == CLIP.ogg_opus
    assert call.params["duration"] == 3


async def test_forbidden_voice_goes_as_a_file_with_caption(
    telegram: FakeTelegramAPI, bot: Bot
) -> None:
    telegram.fail("sendVoice", description="Bad Request: VOICE_MESSAGES_FORBIDDEN")
    await target(bot).send_voice(CLIP)
    (call,) = telegram.calls_to("sendDocument")
    assert call.files["document"] == CLIP.ogg_opus
    assert call.params["caption"] == "Hi there."


def test_split_plain_prefers_line_breaks() -> None:
    assert split_plain("aaa bbb\nccc", 8) == ["aaa bbb", "ccc"]
    assert split_plain("aaaa bbbb", 6) == ["aaaa", "bbbb"]
    assert split_plain("abcdefgh", 3) == ["abc", "def", "gh"]
