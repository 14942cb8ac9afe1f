"""One attachment policy for every platform: the same picture or file, the same words.

Each case goes end to end through the real python-telegram-bot and discord.py against the fakes:
Telegram and Discord must answer with the very same sentences, from the one policy in the core
(bot/attachments.py), and download only what is used, never more than the limit.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.errors import AttachmentTooLarge, AttachmentUnavailable
from bot.messages import Msg, say
from bot.types import Attachment
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
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

ANN = 941
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # a "photo": what matters is its bytes
PDF = b"%PDF-1.4\n" + bytes(600)
MB = 2**20
BOUNDED = 16 * MB  # what a capped download may have pulled through the sockets' buffers
RSS_GROWTH_LIMIT = 50 * MB  # an endless download may raise the bot's memory by this much at most


@dataclass(frozen=True)
class Sent:
    """A file a user sends the bot in a private chat, and how its host treats it."""

    data: bytes
    mime: str
    name: str
    caption: str = ""
    claimed: int | None = None  # the size the platform claims, when it is not the real one
    hosted: bool = True  # False: the download fails (the host answers 404)
    endless: bool = False  # the download streams without end


@dataclass
class Seen:
    """What one platform's bot answered, and what it downloaded."""

    replies: list[str]
    downloads: int
    streamed: int = 0  # bytes an endless download sent before the bot hung up
    images: list[str] | None = None  # the data URLs the LLM got


def image_urls(requests: list[dict[str, Any]]) -> list[str]:
    parts = [p for r in requests for p in r["messages"][-1]["content"] if isinstance(p, dict)]
    return [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]


async def through_telegram(sent: Sent, tmp_path: Path, answers: int, **settings: Any) -> Seen:
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        chat = api.private_chat(ann)
        caption = sent.caption or None
        if sent.mime == "image/jpeg":
            sizes = [sent.claimed] if sent.claimed is not None else None
            update = api.photo_update(chat, ann, [sent.data], caption=caption, file_sizes=sizes)
            file = update["message"]["photo"][0]
        elif sent.mime.startswith("image/"):
            update = api.image_file_update(chat, ann, sent.data, sent.mime, caption=caption)
            file = update["message"]["document"]
        else:
            file = {"file_id": "doc1", "file_unique_id": "udoc1", "file_name": sent.name}
            file |= {"mime_type": sent.mime, "file_size": len(sent.data)}
            update = api.media_update(chat, ann, "document", file, caption=caption)
        if not sent.hosted:
            api.files.pop(file["file_id"])
        if sent.endless:
            api.endless.add(file["file_id"])
        async with telegram_bot(telegram_settings(tmp_path / "tg", api, llm.url, **settings)):
            api.push(update)
            await api.wait_for(lambda a: len(telegram_replies(a, ANN)) >= answers)
        return Seen(
            telegram_replies(api, ANN),
            len(api.calls_to("getFile")),
            sum(api.streamed.values()),
            image_urls(llm.requests),
        )


async def through_discord(sent: Sent, tmp_path: Path, answers: int, **settings: Any) -> Seen:
    async with FakeDiscord() as fake, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        attachment = fake.add_attachment(sent.data, sent.name, sent.mime)
        if sent.claimed is not None:
            attachment["size"] = sent.claimed
        if not sent.hosted:
            del fake.attachments[int(attachment["id"])]
        if sent.endless:
            fake.endless.add(int(attachment["id"]))
        async with discord_bot(discord_settings(tmp_path / "dc", fake, llm.url, **settings)):
            await fake.post_message(fake.ALICE, sent.caption, dm=True, attachments=[attachment])
            channel = fake.dm_channel(fake.ALICE)
            await fake.wait_until(lambda: len(discord_replies(fake, channel)) >= answers)
        return Seen(
            discord_replies(fake, channel),
            len(fake.downloads),
            sum(fake.streamed.values()),
            image_urls(llm.requests),
        )


async def on_both(sent: Sent, tmp_path: Path, answers: int, **settings: Any) -> tuple[Seen, Seen]:
    telegram = await through_telegram(sent, tmp_path, answers, **settings)
    discord = await through_discord(sent, tmp_path, answers, **settings)
    return telegram, discord


VISION = {"llm": {"vision": True}}


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


CASES: dict[str, tuple[Sent, dict[str, Any], Callable[[Sent], list[str]], int]] = {
    # name: what is sent, the settings, the expected answers, the downloads
    "a picture, for a model that cannot see": (
        Sent(JPEG, "image/jpeg", "cat.jpg"),
        {},
        lambda s: [say(Msg.NO_VISION)],
        0,
    ),
    "a picture and a question, for a model that cannot see": (
        Sent(JPEG, "image/jpeg", "cat.jpg", caption="what is this?"),
        {},
        lambda s: [say(Msg.NO_VISION_TEXT), echoed("what is this?")],
        0,
    ),
    "a file Parley cannot open": (
        Sent(PDF, "application/pdf", "report.pdf"),
        VISION,
        lambda s: [say(Msg.UNREADABLE, kind=Msg.KIND_FILES)],
        0,
    ),
    "a file Parley cannot open, and a question": (
        Sent(PDF, "application/pdf", "report.pdf", caption="summarise it"),
        VISION,
        lambda s: [say(Msg.CAPTION_ONLY, kind=Msg.KIND_FILES), echoed("summarise it")],
        0,
    ),
    "a picture over the size limit": (
        Sent(JPEG, "image/jpeg", "cat.jpg"),
        {"llm": {"vision": True, "max_image_bytes": len(JPEG) - 1}},
        lambda s: [say(Msg.IMAGE_TOO_LARGE, size_mb=len(JPEG) / MB, limit_mb=(len(JPEG) - 1) / MB)],
        0,
    ),
    "a picture larger than it claims": (
        Sent(JPEG, "image/jpeg", "cat.jpg", claimed=100),
        {"llm": {"vision": True, "max_image_bytes": 1000}},
        lambda s: [say(Msg.IMAGE_OVER_LIMIT, limit_mb=1000 / MB)],
        1,
    ),
    "a picture that cannot be downloaded": (
        Sent(JPEG, "image/jpeg", "cat.jpg", hosted=False),
        VISION,
        lambda s: [say(Msg.PICTURE_FAILED)],
        1,
    ),
    "a PNG file and a question, for a model that sees": (
        Sent(JPEG[:300], "image/png", "cat.png", caption="what is this?"),
        VISION,
        lambda s: [echoed("what is this?")],
        1,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_telegram_and_discord_say_the_same_words(tmp_path: Path, case: str) -> None:
    sent, settings, expected, downloads = CASES[case]
    telegram, discord = await on_both(sent, tmp_path, len(expected(sent)), **settings)
    assert telegram.replies == discord.replies == expected(sent)
    assert telegram.downloads == discord.downloads == downloads  # nothing fetched for nothing
    assert telegram.images == discord.images
    if case.endswith("for a model that sees"):
        assert telegram.images == [data_url(sent.data, sent.mime)]


def rss_bytes() -> int:
    """This process's resident set size, read from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRss:
    """The highest RSS of this process while the block runs, sampled by a thread (it keeps
    sampling while the event loop is busy)."""

    EVERY_S = 0.005

    def __init__(self) -> None:
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(self.EVERY_S):
            self.peak = max(self.peak, rss_bytes())


@pytest.mark.platform  # `make test` runs it again on PostgreSQL
async def test_an_endless_download_is_cut_at_the_limit_on_both_platforms(
    tmp_path: Path,
) -> None:
    # It claims a few hundred bytes and never ends (up to 512 MiB): the bot stops reading at
    # the limit, answers "too large", and its memory barely moves. The bot runs in this process.
    limit = 200_000
    sent = Sent(JPEG, "image/jpeg", "cat.jpg", claimed=300, endless=True)
    settings = {"llm": {"vision": True, "max_image_bytes": limit}}
    seen: list[Seen] = []
    grew: list[int] = []
    for through in (through_telegram, through_discord):
        with PeakRss() as rss:
            seen.append(await asyncio.wait_for(through(sent, tmp_path, 1, **settings), 120))
        grew.append(rss.peak - rss.before)
    telegram, discord = seen
    assert telegram.replies == discord.replies == [say(Msg.IMAGE_OVER_LIMIT, limit_mb=limit / MB)]
    assert telegram.downloads == discord.downloads == 1
    assert 0 < telegram.streamed < BOUNDED and 0 < discord.streamed < BOUNDED
    assert max(grew) < RSS_GROWTH_LIMIT, [f"{g / MB:.1f} MiB" for g in grew]


async def test_a_reader_that_does_not_stop_is_still_cut() -> None:
    async def careless(limit: int) -> bytes:
        return bytes(limit * 2)

    async def broken(limit: int) -> bytes:
        raise AttachmentUnavailable("the host is gone")

    with pytest.raises(AttachmentTooLarge):
        await Attachment("picture", size=10, reader=careless).read(100)
    with pytest.raises(AttachmentTooLarge) as claimed:
        await Attachment("picture", size=500, reader=careless, max_bytes=400).read(1000)
    assert (claimed.value.size, claimed.value.limit) == (500, 400)  # the platform's own limit
    with pytest.raises(AttachmentUnavailable):
        await Attachment("picture", size=10, reader=broken).read(100)
    with pytest.raises(AttachmentUnavailable):
        await Attachment("poll").read(100)  # nothing to read
    assert await Attachment.of_bytes("audio", b"abc").read(3) == b"abc"
