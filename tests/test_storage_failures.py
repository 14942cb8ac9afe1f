"""A database that refuses writes (a full disk): the message waits, nothing acknowledged is lost.

Reproduced before the fix on a full disk: five Telegram messages were dropped with an ERROR
line each and no word to the user, and since python-telegram-bot had already confirmed their
updates, they were gone for good. Then the update was tried four times in a few seconds and
given up with an apology. Now the message waits (bot/hold.py), its update unconfirmed, the chat
hears once that the answer is delayed, and it is answered once the disk has room. The disk here
is a real small filesystem (tmpfs) when the machine lets the tests mount one, else SQLite's own
size cap (max_page_count) stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from adapters.telegram.webhook import SECRET_HEADER
from bot.app import ParleyApp
from bot.messages import Msg, say
from tests.conftest import free_port
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import (
    RunningTelegram,
    echo_reply,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.fakes.waits import eventually

ANN = 801
DELAYED = say(Msg.ANSWER_DELAYED, trouble=Msg.STORAGE_FULL)
DISK_BYTES = 4 * 1024 * 1024


class SmallDisk:
    """A small filesystem that a test fills up and frees again."""

    def __init__(self, root: Path, mounted: bool) -> None:
        self.root = root
        self.mounted = mounted
        self._filler = root / "filler"
        self._app: ParleyApp | None = None

    def attach(self, app: ParleyApp) -> None:
        """Without a real small disk, the app's database gets a size cap instead."""
        self._app = app

    async def fill(self) -> None:
        if self.mounted:
            await asyncio.to_thread(self._fill_up)
            return
        assert self._app is not None
        writer = self._app.store.db._writer  # type: ignore[attr-defined]
        async with writer.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        await writer.execute(f"PRAGMA max_page_count = {row[0]}")

    def _fill_up(self) -> None:
        # Unbuffered: a buffer left with what did not fit would fail again when closed.
        with open(self._filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)

    async def free(self) -> None:
        if self.mounted:
            self._filler.unlink()
            return
        assert self._app is not None
        await self._app.store.db._writer.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[attr-defined]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(root)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield SmallDisk(root, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)


@contextlib.asynccontextmanager
async def bot_on(
    disk: SmallDisk, api: FakeTelegramAPI, llm: FakeLLMServer, tmp_path: Path
) -> AsyncIterator[RunningTelegram]:
    settings = telegram_settings(tmp_path, api, llm.url)
    settings.storage.path = str(disk.root / "p.db")
    async with telegram_bot(settings) as running:
        disk.attach(running.app)
        yield running


async def database_problem(running: RunningTelegram) -> str | None:
    results = {r.name: r.problem for r in await running.app.health_checks().run()}
    return results["database"]


def stored_texts(disk: SmallDisk) -> list[str]:
    db = sqlite3.connect(disk.root / "p.db")
    return [r[0] for r in db.execute("SELECT content FROM messages WHERE role = 'user'")]


async def test_a_message_sent_while_the_disk_is_full_is_answered_once_it_has_room(
    tmp_path: Path, small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        async with bot_on(small_disk, api, llm, tmp_path) as running:
            api.send_text(api.private_chat(ann), ann, "before")
            await api.wait_for(lambda a: "echo before" in telegram_replies(a, ANN))
            await small_disk.fill()
            api.send_text(api.private_chat(ann), ann, "while full")
            # The message waits (Telegram keeps its update unconfirmed), /healthz is red.
            await api.wait_for(lambda a: DELAYED in telegram_replies(a, ANN))
            assert "holding a message of telegram:801" in caplog.text
            assert running.app.engine.hold.status()["messages"] == 1
            problem = await database_problem(running)
            assert problem is not None and "writes fail (full)" in problem
            await small_disk.free()
            await api.wait_for(lambda a: "echo while full" in telegram_replies(a, ANN))
            assert await database_problem(running) is None
            assert running.app.engine.hold.status() == {"messages": 0, "bytes": 0}
    assert telegram_replies(api, ANN) == ["echo before", DELAYED, "echo while full"]
    assert stored_texts(small_disk) == ["before", "while full"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "writes fail (full)" in errors[0].getMessage()  # once per kind
    assert any("writes work again" in r.getMessage() for r in caplog.records)


async def test_a_chat_is_told_once_and_every_waiting_message_is_answered_in_order(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        async with bot_on(small_disk, api, llm, tmp_path) as running:
            api.send_text(api.private_chat(ann), ann, "before")
            await api.wait_for(lambda a: "echo before" in telegram_replies(a, ANN))
            await small_disk.fill()
            for text in ("first while full", "second while full"):
                api.send_text(api.private_chat(ann), ann, text)
            await api.wait_for(lambda a: DELAYED in telegram_replies(a, ANN))
            await eventually(lambda: running.app.engine.hold.status()["messages"] == 2)
            assert all("while full" not in json.dumps(body) for body in llm.requests)
            assert "writes fail (full)" in (await database_problem(running) or "")
            await small_disk.free()
            await api.wait_for(lambda a: "echo second while full" in telegram_replies(a, ANN))
            assert await database_problem(running) is None
            api.send_text(api.private_chat(ann), ann, "after")
            await api.wait_for(lambda a: "echo after" in telegram_replies(a, ANN))
    assert telegram_replies(api, ANN) == [
        "echo before",
        DELAYED,  # once, for both messages
        "echo first while full",
        "echo second while full",
        "echo after",
    ]
    assert len(llm.requests) == 4
    assert stored_texts(small_disk) == [
        "before", "first while full", "second while full", "after"
    ]  # fmt: skip


async def test_a_webhook_update_is_refused_until_it_is_stored(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    # Telegram resends a webhook update that was not answered with 200: that is the retry.
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with FakeTelegramAPI() as api, FakeLLMServer(Behaviour(reply=echo_reply)) as llm:
        ann = api.user(ANN, "Ann")
        settings = telegram_settings(
            tmp_path, api, llm.url, webhook_url=url, webhook_port=port, webhook_secret="s3cret"
        )
        settings.storage.path = str(small_disk.root / "p.db")
        update = api.text_update(api.private_chat(ann), ann, "by webhook")
        headers = {SECRET_HEADER: "s3cret"}
        async with telegram_bot(settings) as running, aiohttp.ClientSession() as http:
            small_disk.attach(running.app)
            await small_disk.fill()
            for _ in range(2):  # the message waits in memory: Telegram must keep the update
                async with http.post(url, json=update, headers=headers) as refused:
                    assert refused.status == 500
            await small_disk.free()
            await api.wait_for(lambda a: "echo by webhook" in telegram_replies(a, ANN))
            async with http.post(url, json=update, headers=headers) as duplicate:
                assert duplicate.status == 200  # handled already: not answered twice
    assert telegram_replies(api, ANN) == [DELAYED, "echo by webhook"]
    assert stored_texts(small_disk) == ["by webhook"]
