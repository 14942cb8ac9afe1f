"""Telegram forum topics and Discord threads are conversations of their own, answered where they
were asked. The real python-telegram-bot / discord.py against their loopback fakes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from telegram import Bot

from adapters.telegram.targets import TelegramReplyTarget
from bot.messages import Msg, say
from bot.types import OutgoingFile, RateBudget, TargetLimits, VoiceClip
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    QUEUE_NOTICE_PREFIX,
    discord_bot,
    discord_replies,
    discord_settings,
    echo_reply,
    echoed,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN = 1401
FORUM = -100140
PHOTO = [{"file_id": "p1", "file_unique_id": "up1", "width": 90, "height": 90, "file_size": 900}]
MENTION = "@ParleyTestBot"
# Bot API methods that post into a chat (and so must name the topic); edits and deletes name the
# message instead.
POSTING = ("sendmessage", "sendchataction", "sendvoice", "senddocument", "sendmessagedraft")


def posted_topics(api: FakeTelegramAPI, since: int = 0) -> list[object]:
    """The message_thread_id of every call that posted into the forum, from call `since` on."""
    return [
        call.params.get("message_thread_id")
        for call in api.calls[since:]
        if call.method.lower() in POSTING and call.params.get("chat_id") == FORUM
    ]


async def test_forum_topics_have_separate_histories_and_every_reply_lands_in_its_topic(
    tmp_path: Path,
) -> None:
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        forum = api.forum_chat(FORUM)

        async def ask(text: str, topic: int) -> None:
            api.send_text(forum, ann, f"{MENTION} {text}", topic=topic)
            await api.wait_for(lambda a: echoed(text) in telegram_replies(a, FORUM))

        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            await ask("the code word is tulip", topic=7)
            # Everything the bot can post in a topic: a reply (typing first), a notice about a
            # photo its model cannot see, a command's answer, an exported file.
            api.push(api.media_update(forum, ann, "photo", PHOTO, topic=7, caption=MENTION))
            await api.wait_for(lambda a: say(Msg.NO_VISION) in telegram_replies(a, FORUM))
            api.send_text(forum, ann, f"/help@{MENTION[1:]}", topic=7)
            api.send_text(forum, ann, f"/session@{MENTION[1:]} export", topic=7)
            await api.wait_for(lambda a: a.calls_to("sendDocument", ok=True))
            in_topic_7 = posted_topics(api)
            mark = len(api.calls)
            await ask("what is the code word?", topic=9)
            in_topic_9 = posted_topics(api, mark)
            await ask("say the code word again", topic=7)
    assert in_topic_7 and set(in_topic_7) == {7}
    assert {"sendchataction", "sendmessage", "senddocument"} <= {
        c.method.lower() for c in api.calls if c.params.get("message_thread_id") == 7
    }
    assert in_topic_9 and set(in_topic_9) == {9}
    _, other_topic, same_topic = llm.requests
    assert "tulip" not in json.dumps(other_topic)  # topic 9 never heard of it
    assert "the code word is tulip" in json.dumps(same_topic)  # topic 7 remembers
    assert "tulip" in api.calls_to("sendDocument")[0].files["document"].decode()


async def test_a_topic_target_names_its_topic_in_every_call_it_makes(
    telegram: FakeTelegramAPI,
) -> None:
    # The reply target alone, for what a conversation rarely reaches: the queue notice, a
    # voice note (and its file fallback).
    limits = TargetLimits(2000, RateBudget(100, 100), RateBudget(100, 100), "telegram")
    clip = VoiceClip(ogg_opus=b"OggS" + bytes(60), duration_s=1.2, waveform=b"\x01", text="hi")
    telegram.forum_chat(FORUM)
    api, files = telegram.api_base_url, telegram.file_base_url
    async with Bot(telegram.token, base_url=api, base_file_url=files) as bot:
        target = TelegramReplyTarget(bot, chat_id=FORUM, limits=limits, thread_id=7)
        await target.typing()
        await target.queued(2)
        await target.notice("a notice")
        message_id = await target.send("a reply")
        await target.finalize(message_id, "a reply, final")
        await target.send_voice(clip)
        telegram.fail("sendVoice", description="Bad Request: VOICE_MESSAGES_FORBIDDEN")
        await target.send_voice(clip)  # goes as a document instead
        await target.send_file(OutgoingFile("a.md", b"# hi", "text/markdown"))
        await target.close()
    methods = [c.method.lower() for c in telegram.calls if c.method.lower() in POSTING]
    assert methods.count("sendmessage") == 3 and methods.count("senddocument") == 2
    assert {"sendchataction", "sendvoice"} <= set(methods)
    assert set(posted_topics(telegram)) == {7}


async def test_a_discord_thread_is_answered_in_the_thread_with_its_own_history(
    tmp_path: Path,
) -> None:
    async with FakeDiscord() as fake, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        settings = discord_settings(tmp_path, fake, llm.url)
        async with discord_bot(settings):
            general, thread = fake.GENERAL_ID, fake.THREAD_ID
            await fake.post_message(
                fake.ALICE, "the code word is tulip", channel_id=general, mention_bot=True
            )
            await fake.wait_until(lambda: bool(discord_replies(fake, general)))
            asked = await fake.post_message(
                fake.ALICE, "what is the code word?", channel_id=thread, mention_bot=True
            )
            await fake.wait_until(lambda: bool(discord_replies(fake, thread)))
            await fake.post_message(fake.ALICE, "and now?", channel_id=thread, mention_bot=True)
            await fake.wait_until(lambda: len(discord_replies(fake, thread)) == 2)
    assert discord_replies(fake, general) == [echoed("the code word is tulip")]
    assert discord_replies(fake, thread) == [echoed("what is the code word?"), echoed("and now?")]
    (reply, _) = fake.channel_messages(thread, by_bot=True)
    assert reply.reference == asked.id  # answered in the thread, as a reply to the question
    _, in_thread, again = llm.requests
    assert "tulip" not in json.dumps(in_thread)  # the thread has its own history
    assert "what is the code word?" in json.dumps(again)
    assert "tulip" not in json.dumps(again)


def queue_notice(params: dict[str, Any]) -> bool:
    return str(params.get("text", "")).startswith(QUEUE_NOTICE_PREFIX)


async def test_a_queue_notice_lands_in_the_topic_of_the_message_that_waits(
    tmp_path: Path,
) -> None:
    held: list[str] = []

    async def hold_the_first(body: dict[str, Any]) -> None:
        # The first reply streams until the other topic's message was told it waits (one slot).
        held.append(last_user_text(body))
        if len(held) == 1:
            await api.wait_for(
                lambda a: any(queue_notice(c.params) for c in a.calls_to("sendMessage"))
            )

    async with (
        FakeTelegramAPI() as api,
        FakeLLMServer(Behaviour(reply=echo_reply, pause=hold_the_first)) as llm,
    ):
        ann, bob = api.user(ANN, "Ann"), api.user(ANN + 1, "Bob")
        forum = api.forum_chat(FORUM)
        settings = telegram_settings(tmp_path, api, llm.url, llm={"concurrency": 1})
        async with telegram_bot(settings):
            api.send_text(forum, ann, f"{MENTION} question in seven", topic=7)
            api.send_text(forum, bob, f"{MENTION} question in nine", topic=9)
            await api.wait_for(
                lambda a: (
                    {echoed("question in seven"), echoed("question in nine")}
                    <= set(telegram_replies(a, FORUM))
                )
            )
    (notice,) = [c for c in api.calls_to("sendMessage") if queue_notice(c.params)]
    waited = 9 if "seven" in held[0] else 7
    assert notice.params["message_thread_id"] == waited
    assert set(posted_topics(api)) == {7, 9} and None not in posted_topics(api)
