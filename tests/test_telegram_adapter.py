"""The Telegram adapter end to end: the real python-telegram-bot, the real engine and storage.

Outside the machine, only Telegram (tests/fakes/telegram_api.py) and the LLM server
(tests/fakes/llm_server.py) are faked, each speaking its real HTTP protocol on loopback.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import aiohttp
import av
import pytest

from bot.messages import Msg, say
from tests.conftest import free_port
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import telegram_bot, telegram_settings, telegram_shows
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB, ADMIN = 1001, 1002, 1003
GROUP = -100555
REPLY = "Nice to meet you, Ann. How can I help today?"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=REPLY)


def texts(telegram: FakeTelegramAPI, chat_id: int) -> list[str]:
    return [m.text for m in telegram.bot_messages(chat_id)]


# -- private chats: streaming --------------------------------------------------------------


async def test_dm_streams_by_editing_one_message(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.05  # a dozen chunks over ~half a second: several edits
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url, stream="edit")):
        telegram.send_text(telegram.private_chat(ann), ann, "Hi, I'm Ann")
        await telegram.wait_for(telegram_shows(ANN, REPLY))
    assert texts(telegram, ANN) == [REPLY]
    (first,) = telegram.calls_to("sendMessage")
    partial = first.params["text"].removesuffix("▌").strip()  # the streamer's "still typing" mark
    assert REPLY.startswith(partial) and partial != REPLY
    assert telegram.calls_to("editMessageText", ok=True)
    assert telegram.calls_to("sendChatAction")[0].params["action"] == "typing"
    assert last_user_text(fake_llm.requests[0]) == "Hi, I'm Ann"


async def test_token_never_reaches_the_logs(
    tmp_path: Path,
    telegram: FakeTelegramAPI,
    fake_llm: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx logs each request URL at INFO; PTB's own DEBUG lines name the URL too, which is why
    # bot.logs redacts secrets in its handler.
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.NOTSET)  # as at startup
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(telegram.private_chat(ann), ann, "hello")
        await telegram.wait_for(telegram_shows(ANN, REPLY))
    assert caplog.records
    assert not [r.getMessage() for r in caplog.records if telegram.token in r.getMessage()]


async def test_dm_streams_by_drafts_then_sends_the_final_message(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.05
    fake_llm.behaviour.reply = "**Hello** Ann, here is `code`."
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url, stream="draft")):
        telegram.send_text(telegram.private_chat(ann), ann, "hello")
        await telegram.wait_for(telegram_shows(ANN, "Hello Ann, here is code."))
    drafts = telegram.calls_to("sendMessageDraft", ok=True)
    assert drafts and len({c.params["draft_id"] for c in drafts}) == 1
    assert telegram.calls_to("editMessageText") == []
    (final,) = telegram.bot_messages(ANN)
    assert final.text == "Hello Ann, here is code."
    assert {e["type"] for e in final.entities} == {"bold", "code"}


async def test_rate_limited_edit_still_lands_the_final_text(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.05
    telegram.rate_limit("editMessageText", retry_after=1)
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(telegram.private_chat(ann), ann, "hello")
        await telegram.wait_for(telegram_shows(ANN, REPLY))
    refused = telegram.calls_to("editMessageText", ok=False)[0].error
    assert refused is not None and refused.status == 429
    assert texts(telegram, ANN) == [REPLY]


async def test_reply_over_the_limit_continues_in_new_messages(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    long_reply = " ".join(f"word{i}" for i in range(1300))  # 10,589 characters: three parts
    fake_llm.behaviour.reply = long_reply
    fake_llm.behaviour.words_per_chunk = 100
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(telegram.private_chat(ann), ann, "talk a lot")
        await telegram.wait_for(telegram_shows(ANN, "word1299"))
    parts = texts(telegram, ANN)
    assert len(parts) == 3
    assert all(len(part) <= 4096 for part in parts)
    assert " ".join(parts).split() == long_reply.split()


# -- groups --------------------------------------------------------------------------------


async def test_group_answers_mentions_replies_and_commands_only(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    group, ann = telegram.group_chat(GROUP), telegram.user(ANN, "Ann")
    earlier = telegram.bot_said(group, "An earlier answer")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(group, ann, "just chatting among humans")
        telegram.send_text(group, ann, "@ParleyTestBot what is 2+2?")
        await telegram.wait_for(
            lambda a: len(fake_llm.requests) == 1 and telegram_shows(GROUP, REPLY)(a)
        )
        telegram.send_text(group, ann, "and 3+3?", reply_to=earlier)
        await telegram.wait_for(lambda a: texts(a, GROUP).count(REPLY) == 2)
        telegram.send_text(group, ann, "/help")
        await telegram.wait_for(telegram_shows(GROUP, "/reset"))
    asked = [last_user_text(body) for body in fake_llm.requests]
    assert asked == ["what is 2+2?", "and 3+3?"]  # the chatter was ignored, the mention removed
    replies = [
        c for c in telegram.calls_to("sendMessage") if c.params["text"] != "An earlier answer"
    ]
    assert all("reply_parameters" in c.params for c in replies)  # each quotes its question


# -- commands and access -------------------------------------------------------------------


async def test_commands_are_registered_and_config_set_is_for_admins(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann, admin = telegram.user(ANN, "Ann"), telegram.user(ADMIN, "Root")
    group = telegram.group_chat(GROUP)
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url, admin_ids=[ADMIN])):
        assert [c["command"] for c in telegram.commands] == [
            "start", "help", "ask", "reset", "persona", "voice", "config", "forget", "remember",
            "memory", "model", "tools", "session",
        ]  # fmt: skip
        telegram.send_text(group, ann, "/config set temperature 0.2")
        await telegram.wait_for(telegram_shows(GROUP, "only admins"))
        telegram.send_text(group, admin, "/config@ParleyTestBot set temperature 0.2")
        await telegram.wait_for(telegram_shows(GROUP, "temperature is now 0.2"))
        telegram.send_text(group, ann, "/config@SomeOtherBot show")
        telegram.send_text(group, ann, "/config")
        await telegram.wait_for(telegram_shows(GROUP, "Settings for this chat"))
    assert len(texts(telegram, GROUP)) == 3  # the command for another bot got no answer


async def test_users_outside_the_allow_list_get_a_polite_refusal(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    bob = telegram.user(BOB, "Bob")
    async with telegram_bot(
        telegram_settings(tmp_path, telegram, fake_llm.url, allowed_user_ids=[ANN])
    ):
        telegram.send_text(telegram.private_chat(bob), bob, "hello?")
        await telegram.wait_for(telegram_shows(BOB, say(Msg.REFUSED)))
    assert fake_llm.requests == []


# -- voice ---------------------------------------------------------------------------------


async def test_oversized_recording_is_refused_without_downloading(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_voice(
            telegram.private_chat(ann), ann, b"", kind="audio", file_size=25 * 1024 * 1024
        )
        await telegram.wait_for(telegram_shows(ANN, "too large"))
    assert telegram.calls_to("getFile") == []
    assert fake_llm.requests == []


@pytest.mark.speech
async def test_voice_reply_is_uploaded_as_ogg_opus(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann")
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, engine={"voice_mode": "always"})
    async with telegram_bot(settings, speech=True):
        telegram.send_text(telegram.private_chat(ann), ann, "say something")
        await telegram.wait_for(lambda a: a.calls_to("sendVoice", ok=True))
    (upload,) = telegram.calls_to("sendVoice")
    with av.open(io.BytesIO(upload.files["voice"]), mode="r") as container:
        (stream,) = container.streams.audio
        assert container.format.name == "ogg" and stream.codec_context.name == "opus"
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples > 48_000 * 0.5  # at least half a second of speech
    assert upload.params["duration"] >= 1


# -- lifecycle -----------------------------------------------------------------------------


async def test_webhook_mode_accepts_only_telegrams_posts(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    settings = telegram_settings(
        tmp_path,
        telegram,
        fake_llm.url,
        webhook_url=url,
        webhook_port=port,
        webhook_secret="s3cret",
    )
    ann = telegram.user(ANN, "Ann")
    update = telegram.text_update(telegram.private_chat(ann), ann, "hello by webhook")
    async with telegram_bot(settings), aiohttp.ClientSession() as http:
        assert telegram.webhook["url"] == url and telegram.webhook["secret_token"] == "s3cret"
        forged = await http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
        assert forged.status == 403
        real = await http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        )
        assert real.status == 200
        await telegram.wait_for(telegram_shows(ANN, REPLY))
    assert telegram.polls == 0  # no getUpdates in webhook mode
    assert [last_user_text(body) for body in fake_llm.requests] == ["hello by webhook"]


async def test_webhook_answers_400_to_a_body_it_cannot_decode(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    """Telegram resends what gets a 5xx: a body that can never be read gets a 400 instead."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    settings = telegram_settings(
        tmp_path, telegram, fake_llm.url, webhook_url=url, webhook_port=port, webhook_secret="s3"
    )
    ann = telegram.user(ANN, "Ann")
    update = telegram.text_update(telegram.private_chat(ann), ann, "hello after the junk")
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3", "Content-Type": "application/json"}
    bodies = [
        b'{"update_id": 7, "message": {"text": "\xff\xfe not UTF-8"}}',
        b"\xc3\x28",  # an invalid two-byte sequence
        b"this is not JSON",
        b'{"update_id": 8, "message": ',  # cut short
        b"",
    ]
    async with telegram_bot(settings), aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 400, body
        async with http.post(url, json=update, headers=headers) as resp:
            assert resp.status == 200
        await telegram.wait_for(telegram_shows(ANN, REPLY))
    assert [last_user_text(body) for body in fake_llm.requests] == ["hello after the junk"]


async def test_commands_from_other_bots_are_ignored_like_their_messages(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    """Two bots answering each other would never stop: another bot gets no answer at all."""
    group, ann = telegram.group_chat(GROUP), telegram.user(ANN, "Ann")
    helper = {**telegram.user(2001, "Helper", "helper_bot"), "is_bot": True}
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        for text in (
            "/help",
            "/help@ParleyTestBot",
            "/ask@ParleyTestBot what now?",
            "/memory@ParleyTestBot forget all",
            "/persona@ParleyTestBot pirate",
            "/nonsense@ParleyTestBot",
            "@ParleyTestBot hello",
        ):
            telegram.send_text(group, helper, text)
        telegram.send_text(group, ann, "/ask@ParleyTestBot and Ann asks")
        await telegram.wait_for(telegram_shows(GROUP, REPLY))
        telegram.send_text(group, ann, "/persona@ParleyTestBot")
        await telegram.wait_for(telegram_shows(GROUP, "Persona: default"))
    assert [last_user_text(body) for body in fake_llm.requests] == ["and Ann asks"]
    assert len(texts(telegram, GROUP)) == 2  # Ann's two answers, nothing for the other bot
