"""The Telegram adapter end to end: the real python-telegram-bot, the real engine and storage.

Outside the machine, only Telegram (tests/fakes/telegram_api.py) and the LLM server
(tests/fakes/llm_server.py) are faked, each speaking its real HTTP protocol on loopback.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from adapters.telegram.adapter import MSG_REFUSED, TelegramAdapter
from bot.app import ParleyApp
from bot.config import Settings
from tests import conftest
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.telegram_api import FakeTelegramAPI

ANN, BOB, ADMIN = 1001, 1002, 1003
GROUP = -100555
REPLY = "Nice to meet you, Ann. How can I help today?"
FAST_RATE = 50.0  # messages per second: lets the tests stream without waiting on the budget


@pytest.fixture
async def api() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI() as fake:
        yield fake


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=REPLY)) as server:
        yield server


def make_settings(
    tmp_path: Path,
    api: FakeTelegramAPI,
    llm: FakeLLMServer,
    *,
    engine: dict[str, Any] | None = None,
    **telegram: Any,
) -> Settings:
    tg = {"private_rate": FAST_RATE, "group_rate": FAST_RATE, **telegram}
    return conftest.make_settings(
        tmp_path,
        llm={"base_url": llm.url, "retries": 0},
        engine={"voice_mode": "off", **(engine or {})},
        stt={"model": "tiny.en", "show_transcript": True},
        tts={"backends": ["piper"]},
        telegram={
            "token": api.token,
            "api_base_url": api.api_base_url,
            "file_base_url": api.file_base_url,
            **tg,
        },
    )


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, *, speech: bool = False) -> AsyncIterator[None]:
    """ParleyApp + TelegramAdapter, started and stopped like `parley run` does."""
    async with ParleyApp(settings, speech=speech) as app:
        adapter = TelegramAdapter(app.services, poll_timeout_s=1)
        await adapter.start()
        try:
            yield
        finally:
            await adapter.stop()


def texts(api: FakeTelegramAPI, chat_id: int) -> list[str]:
    return [m.text for m in api.bot_messages(chat_id)]


def shows(chat_id: int, fragment: str) -> Any:
    """A wait_for predicate: one of the bot's messages in the chat contains `fragment`."""
    return lambda api: any(fragment in m.text for m in api.bot_messages(chat_id))


# -- private chats: streaming --------------------------------------------------------------


async def test_dm_streams_by_editing_one_message(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.05  # a dozen chunks over ~half a second: several edits
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm, stream="edit")):
        api.send_text(api.private_chat(ann), ann, "Hi, I'm Ann")
        await api.wait_for(shows(ANN, REPLY))
    assert texts(api, ANN) == [REPLY]
    (first,) = api.calls_to("sendMessage")
    partial = first.params["text"].removesuffix("▌").strip()  # the streamer's "still typing" mark
    assert REPLY.startswith(partial) and partial != REPLY
    assert api.calls_to("editMessageText", ok=True)
    assert api.calls_to("sendChatAction")[0].params["action"] == "typing"
    assert last_user_text(llm.requests[0]) == "Hi, I'm Ann"


async def test_token_never_reaches_the_logs(
    tmp_path: Path,
    api: FakeTelegramAPI,
    llm: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx logs each request URL at INFO; PTB's own DEBUG lines name the URL too, which is why
    # bot.logs redacts secrets in its handler.
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.NOTSET)  # as at startup
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm)):
        api.send_text(api.private_chat(ann), ann, "hello")
        await api.wait_for(shows(ANN, REPLY))
    assert caplog.records
    assert not [r.getMessage() for r in caplog.records if api.token in r.getMessage()]


async def test_dm_streams_by_drafts_then_sends_the_final_message(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.05
    llm.behaviour.reply = "**Hello** Ann, here is `code`."
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm, stream="draft")):
        api.send_text(api.private_chat(ann), ann, "hello")
        await api.wait_for(shows(ANN, "Hello Ann, here is code."))
    drafts = api.calls_to("sendMessageDraft", ok=True)
    assert drafts and len({c.params["draft_id"] for c in drafts}) == 1
    assert api.calls_to("editMessageText") == []
    (final,) = api.bot_messages(ANN)
    assert final.text == "Hello Ann, here is code."
    assert {e["type"] for e in final.entities} == {"bold", "code"}


async def test_rate_limited_edit_still_lands_the_final_text(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.05
    api.rate_limit("editMessageText", retry_after=1)
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm)):
        api.send_text(api.private_chat(ann), ann, "hello")
        await api.wait_for(shows(ANN, REPLY))
    assert api.calls_to("editMessageText", ok=False)[0].error.status == 429  # type: ignore[union-attr]
    assert texts(api, ANN) == [REPLY]


async def test_reply_over_the_limit_continues_in_new_messages(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    long_reply = " ".join(f"word{i}" for i in range(1300))  # 10,589 characters: three parts
    llm.behaviour.reply = long_reply
    llm.behaviour.words_per_chunk = 100
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm)):
        api.send_text(api.private_chat(ann), ann, "talk a lot")
        await api.wait_for(shows(ANN, "word1299"))
    parts = texts(api, ANN)
    assert len(parts) == 3
    assert all(len(part) <= 4096 for part in parts)
    assert " ".join(parts).split() == long_reply.split()


async def test_waiting_chat_is_told_its_place_in_line(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    llm.behaviour.first_delay_s = 0.5
    settings = make_settings(tmp_path, api, llm)
    settings.llm.concurrency = 1
    ann, bob = api.user(ANN, "Ann"), api.user(BOB, "Bob")
    async with running_bot(settings):
        api.send_text(api.private_chat(ann), ann, "first")
        api.send_text(api.private_chat(bob), bob, "second")
        await api.wait_for(lambda a: texts(a, ANN) == [REPLY] and texts(a, BOB) == [REPLY])
    in_line = [c for c in api.calls_to("sendMessage") if "in line" in c.params["text"]]
    assert len(in_line) == 1  # whoever came second waited, and the notice is gone now
    assert "#1 in line" in in_line[0].params["text"]  # next in line


# -- groups --------------------------------------------------------------------------------


async def test_group_answers_mentions_replies_and_commands_only(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    group, ann = api.group_chat(GROUP), api.user(ANN, "Ann")
    earlier = api.bot_said(group, "An earlier answer")
    async with running_bot(make_settings(tmp_path, api, llm)):
        api.send_text(group, ann, "just chatting among humans")
        api.send_text(group, ann, "@ParleyTestBot what is 2+2?")
        await api.wait_for(lambda a: len(llm.requests) == 1 and shows(GROUP, REPLY)(a))
        api.send_text(group, ann, "and 3+3?", reply_to=earlier)
        await api.wait_for(lambda a: texts(a, GROUP).count(REPLY) == 2)
        api.send_text(group, ann, "/help")
        await api.wait_for(shows(GROUP, "/reset"))
    asked = [last_user_text(body) for body in llm.requests]
    assert asked == ["what is 2+2?", "and 3+3?"]  # the chatter was ignored, the mention removed
    replies = [c for c in api.calls_to("sendMessage") if c.params["text"] != "An earlier answer"]
    assert all("reply_parameters" in c.params for c in replies)  # each quotes its question


# -- commands and access -------------------------------------------------------------------


async def test_commands_are_registered_and_config_set_is_for_admins(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann, admin = api.user(ANN, "Ann"), api.user(ADMIN, "Root")
    group = api.group_chat(GROUP)
    async with running_bot(make_settings(tmp_path, api, llm, admin_ids=[ADMIN])):
        assert [c["command"] for c in api.commands] == [
            "start", "help", "ask", "reset", "persona", "voice", "config", "forget"
        ]  # fmt: skip
        api.send_text(group, ann, "/config set temperature 0.2")
        await api.wait_for(shows(GROUP, "only admins"))
        api.send_text(group, admin, "/config@ParleyTestBot set temperature 0.2")
        await api.wait_for(shows(GROUP, "temperature is now 0.2"))
        api.send_text(group, ann, "/config@SomeOtherBot show")
        api.send_text(group, ann, "/config")
        await api.wait_for(shows(GROUP, "Settings for this chat"))
    assert len(texts(api, GROUP)) == 3  # the command for another bot got no answer


async def test_users_outside_the_allow_list_get_a_polite_refusal(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    bob = api.user(BOB, "Bob")
    async with running_bot(make_settings(tmp_path, api, llm, allowed_user_ids=[ANN])):
        api.send_text(api.private_chat(bob), bob, "hello?")
        await api.wait_for(shows(BOB, MSG_REFUSED))
    assert llm.requests == []


# -- voice ---------------------------------------------------------------------------------


async def test_oversized_recording_is_refused_without_downloading(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm)):
        api.send_voice(api.private_chat(ann), ann, b"", kind="audio", file_size=25 * 1024 * 1024)
        await api.wait_for(shows(ANN, "too large"))
    assert api.calls_to("getFile") == []
    assert llm.requests == []


@pytest.mark.speech
async def test_voice_note_is_transcribed_and_answered(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    from tests.fakes.audio_samples import voice_note

    ann = api.user(ANN, "Ann")
    async with running_bot(make_settings(tmp_path, api, llm), speech=True):
        api.send_voice(api.private_chat(ann), ann, voice_note(), duration=4)
        await api.wait_for(shows(ANN, REPLY))
    transcript, answer = texts(api, ANN)
    assert transcript.startswith("🎤") and "lazy dog" in transcript.lower()
    assert answer == REPLY
    assert "brown fox" in last_user_text(llm.requests[0]).lower()


@pytest.mark.speech
async def test_voice_reply_is_uploaded_as_ogg_opus(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann = api.user(ANN, "Ann")
    settings = make_settings(tmp_path, api, llm, engine={"voice_mode": "always"})
    async with running_bot(settings, speech=True):
        api.send_text(api.private_chat(ann), ann, "say something")
        await api.wait_for(lambda a: a.calls_to("sendVoice", ok=True))
    (upload,) = api.calls_to("sendVoice")
    with av.open(io.BytesIO(upload.files["voice"])) as container:
        (stream,) = container.streams.audio
        assert container.format.name == "ogg" and stream.codec_context.name == "opus"
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples > 48_000 * 0.5  # at least half a second of speech
    assert upload.params["duration"] >= 1


# -- lifecycle -----------------------------------------------------------------------------


async def test_restart_mid_conversation_keeps_the_history(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    ann = api.user(ANN, "Ann")
    chat = api.private_chat(ann)
    settings = make_settings(tmp_path, api, llm)
    async with running_bot(settings):
        api.send_text(chat, ann, "My name is Ann and I like sailing.")
        await api.wait_for(shows(ANN, REPLY))
    async with running_bot(settings):
        api.send_text(chat, ann, "What do I like?")
        await api.wait_for(lambda a: texts(a, ANN).count(REPLY) == 2)
    assert "I like sailing" in json.dumps(llm.requests[1])


async def test_webhook_mode_accepts_only_telegrams_posts(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    settings = make_settings(
        tmp_path, api, llm, webhook_url=url, webhook_port=port, webhook_secret="s3cret"
    )
    ann = api.user(ANN, "Ann")
    update = api.text_update(api.private_chat(ann), ann, "hello by webhook")
    async with running_bot(settings), aiohttp.ClientSession() as http:
        assert api.webhook["url"] == url and api.webhook["secret_token"] == "s3cret"
        forged = await http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
        assert forged.status == 403
        real = await http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        )
        assert real.status == 200
        await api.wait_for(shows(ANN, REPLY))
    assert api.polls == 0  # no getUpdates in webhook mode
    assert [last_user_text(body) for body in llm.requests] == ["hello by webhook"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
