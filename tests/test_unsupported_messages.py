"""Every kind of message gets an answer or a deliberate silence: photos, files, stickers, polls...

Reproduced before the fix: a Telegram photo, document or sticker in a private chat, with or
without a caption, got silence and nothing was logged; the caption's question was ignored.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from adapters.telegram.adapter import TelegramAdapter
from bot.app import ParleyApp
from bot.messages import Msg, say
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    discord_bot,
    discord_replies,
    discord_settings,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN = 901
GROUP = -100900
PHOTO = [{"file_id": "p1", "file_unique_id": "up1", "width": 90, "height": 90, "file_size": 900}]
KINDS: dict[str, tuple[str, Any]] = {
    "photos": ("photo", PHOTO),
    "files": ("document", {"file_id": "d1", "file_unique_id": "ud1", "file_name": "a.pdf"}),
    "stickers": (
        "sticker",
        {
            "file_id": "s1",
            "file_unique_id": "us1",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        },
    ),
    "locations": ("location", {"latitude": 48.85, "longitude": 2.35}),
    "polls": (
        "poll",
        {
            "id": "1",
            "question": "Tea or coffee?",
            "options": [
                {"persistent_id": "a", "text": "Tea", "voter_count": 0},
                {"persistent_id": "b", "text": "Coffee", "voter_count": 0},
            ],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
            "allows_revoting": True,
            "members_only": False,
        },
    ),
    "contacts": ("contact", {"phone_number": "+100", "first_name": "Bob"}),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_telegram_says_what_it_cannot_open(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    field, payload = KINDS[kind]
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            api.push(api.media_update(api.private_chat(ann), ann, field, payload))
            await api.wait_for(lambda a: telegram_replies(a, ANN))
    if kind == "photos":  # a picture, for a model that does not take images
        assert telegram_replies(api, ANN) == [say(Msg.NO_VISION)]
    else:
        assert telegram_replies(api, ANN) == [say(Msg.UNREADABLE, kind=kind)]
        assert f"{kind} in chat {ANN} cannot be read" in caplog.text
    assert llm.requests == []


async def test_telegram_answers_a_caption_and_says_the_photo_was_not_seen(
    tmp_path: Path,
) -> None:
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        group = api.group_chat(GROUP)
        async with telegram_bot(telegram_settings(tmp_path, api, llm.url)):
            chat = api.private_chat(ann)
            api.push(api.media_update(chat, ann, "photo", PHOTO, caption="what is 2+2"))
            await api.wait_for(lambda a: "echo what is 2+2" in telegram_replies(a, ANN))
            # In a group: a photo nobody addressed to the bot is group chatter (silence); one
            # whose caption mentions the bot is answered.
            api.push(api.media_update(group, ann, "photo", PHOTO, caption="look at my cat"))
            api.push(api.media_update(group, ann, "photo", PHOTO, caption="@ParleyTestBot cute?"))
            await api.wait_for(lambda a: "echo cute?" in telegram_replies(a, GROUP))
    assert telegram_replies(api, ANN) == [say(Msg.NO_VISION_TEXT), "echo what is 2+2"]
    assert telegram_replies(api, GROUP) == [say(Msg.NO_VISION_TEXT), "echo cute?"]
    assert [last_user_text(body) for body in llm.requests] == ["what is 2+2", "cute?"]


def silent_video() -> bytes:
    """An MP4 of a few black frames and no sound track."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


async def test_a_video_without_a_sound_track_gets_a_clear_answer(tmp_path: Path) -> None:
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        settings = telegram_settings(tmp_path, api, llm.url)
        settings.stt.model = "tiny.en"
        async with ParleyApp(settings, speech=True) as app:
            adapter = TelegramAdapter(app.services, poll_timeout_s=1)
            await adapter.start()
            try:
                api.push(api.voice_update(api.private_chat(ann), ann, silent_video(), kind="video"))
                await api.wait_for(lambda a: telegram_replies(a, ANN))
            finally:
                await adapter.stop()
    assert telegram_replies(api, ANN) == [say(Msg.NO_AUDIO_TRACK)]
    assert llm.requests == []


async def test_discord_says_what_it_cannot_open(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        image = fake.add_attachment(b"\x89PNG...", "cat.png", "image/png")
        async with discord_bot(discord_settings(tmp_path, fake, llm.url)):
            await fake.post_message(fake.ALICE, "", dm=True, attachments=[image])
            channel = fake.dm_channel(fake.ALICE)
            await fake.wait_until(lambda: bool(discord_replies(fake, channel)))
            await fake.post_message(fake.ALICE, "is it cute?", dm=True, attachments=[image])
            await fake.wait_until(lambda: "echo is it cute?" in discord_replies(fake, channel))
    assert discord_replies(fake, channel) == [
        say(Msg.NO_VISION),
        say(Msg.NO_VISION_TEXT),
        "echo is it cute?",
    ]
