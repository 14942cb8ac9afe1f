"""One driver per platform fake, so a test of what every platform does is written once.

A test that takes the `driver` fixture (tests/conftest.py) runs once per platform: through a
`PlatformDriver` it makes people, lets them write in a private chat or in the group, runs
commands and reads what the bot answered there. A driver only drives a loopback fake; the bot
is the real `ParleyApp` with that platform's real adapter (tests/fakes/platform_bots.py).
Platform-specific tests use the fakes directly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from adapters.discord import PLATFORM as DISCORD
from adapters.discord.targets import MESSAGE_FLAG_VOICE
from bot.command_table import find, table
from bot.config import Settings
from tests.fakes.chat_load import ChatLoad, DiscordLoad, TelegramLoad
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeUser, snowflake
from tests.fakes.platform_bots import (
    QUEUE_NOTICE_PREFIX,
    FlakyDiscord,
    Section,
    discord_bot,
    discord_replies,
    discord_settings,
    telegram_bot,
    telegram_replies,
    telegram_settings,
)
from tests.fakes.telegram_api import DEFAULT_TOKEN, FakeTelegramAPI

TELEGRAM_GROUP_ID = -100_900  # the group a Telegram driver's people write in
DISCORD_EDITS = r"/channels/\d+/messages/\d+"  # REST path of a channel message's edits


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who writes to the bot; `id` is what admin, allow and block lists name."""

    id: int
    name: str


class PlatformDriver(ABC):
    """What a test does on a platform, whichever it is."""

    name: ClassVar[str]  # as in settings sections and `engine.blocked_users` ("telegram:42")
    debug_log_marker: ClassVar[str]  # a word its library logs at DEBUG for every update

    @abstractmethod
    def settings(
        self,
        tmp_path: Path,
        llm_url: str,
        *,
        engine: Section = None,
        llm: Section = None,
        stt: Section = None,
        **platform: Any,
    ) -> Settings:
        """Settings pointing this platform and the LLM at their fakes; `platform`: its section."""

    @abstractmethod
    def running(
        self, settings: Settings, *, speech: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        """The bot (app and this platform's adapter), running for the block."""

    @abstractmethod
    def person(self, name: str) -> Person:
        """A new user of the platform, with a fresh id."""

    @abstractmethod
    async def say(self, person: Person, text: str, *, group: bool = False) -> None:
        """`person` writes `text` to the bot privately, or in the group (addressed to the bot)."""

    @abstractmethod
    async def chatter(self, person: Person, text: str) -> None:
        """`person` writes `text` in the group without addressing the bot."""

    @abstractmethod
    async def send_picture(
        self, person: Person, data: bytes, *, mime: str = "image/jpeg", caption: str = ""
    ) -> None:
        """`person` sends the bot a picture in their private chat (Telegram: a photo if JPEG,
        else an image file; Discord: an attachment)."""

    @abstractmethod
    def files(self, person: Person | None = None, *, group: bool = False) -> list[bytes]:
        """The files the bot uploaded into the chat (documents, attachments), oldest first."""

    @abstractmethod
    async def send_voice_note(self, person: Person, ogg_opus: bytes, *, duration_s: int) -> None:
        """`person` sends the bot a voice note in their private chat."""

    @abstractmethod
    async def command(self, person: Person, name: str, *args: str, group: bool = False) -> str:
        """`person` runs `/name args` (e.g. "config set", "temperature", "0.2"); its answer."""

    @abstractmethod
    def replies(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        """The bot's text messages in the chat, oldest first, without "in line" notices.

        The chat is `person`'s private one, or the group.
        """

    @abstractmethod
    def shown(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        """Every message of the bot still shown in the chat, oldest first, notices included."""

    @abstractmethod
    def queue_notices(self) -> list[str]:
        """Every "you're #n in line" notice the bot posted, anywhere, as first posted."""

    @abstractmethod
    def typing_shown(self, person: Person | None = None, *, group: bool = False) -> bool:
        """Whether the bot showed the typing indicator in the chat."""

    @abstractmethod
    def downloads(self) -> int:
        """How many files the bot asked the platform for (Telegram: getFile calls)."""

    @abstractmethod
    def rate_limit_next_edit(self) -> None:
        """Answer the bot's next message edit with a 429."""

    @abstractmethod
    def edit_calls(self) -> tuple[int, int]:
        """How many message edits the bot made, and how many the fake answered with a 429."""

    @abstractmethod
    def sent_payloads(self) -> list[str]:
        """Every request body the bot sent the platform, as JSON text."""

    @abstractmethod
    def load(self, chats: int) -> ChatLoad:
        """A load of `chats` private chats at once (tests/fakes/chat_load.py)."""

    @abstractmethod
    async def wait_until(self, predicate: Callable[[], object]) -> None:
        """Wait until `predicate()` holds, re-checked on every change the fake sees.

        Gives up after the fake's own hang guard, so a broken bot fails instead of hanging.
        """

    @abstractmethod
    async def until(self, predicate: Callable[[], object]) -> None:
        """`wait_until` for a caller that sets its own limit (the fake's guard, if it has one,
        still applies)."""


class TelegramDriver(PlatformDriver):
    """Drives `FakeTelegramAPI`: private chats, and one supergroup where the bot is mentioned."""

    name = "telegram"
    debug_log_marker = "getUpdates"

    def __init__(self, api: FakeTelegramAPI) -> None:
        self.api = api
        self.group = api.group_chat(TELEGRAM_GROUP_ID)
        self._ids = itertools.count(5001)

    def settings(
        self,
        tmp_path: Path,
        llm_url: str,
        *,
        engine: Section = None,
        llm: Section = None,
        stt: Section = None,
        **platform: Any,
    ) -> Settings:
        return telegram_settings(
            tmp_path, self.api, llm_url, engine=engine, llm=llm, stt=stt, **platform
        )

    def running(
        self, settings: Settings, *, speech: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        return telegram_bot(settings, speech=speech)

    def person(self, name: str) -> Person:
        return Person(next(self._ids), name)

    def user(self, person: Person) -> dict[str, Any]:
        """The Bot API User object of `person`."""
        return self.api.user(person.id, person.name)

    def _chat(self, person: Person | None, group: bool) -> dict[str, Any]:
        if group:
            return self.group
        assert person is not None, "a private chat is someone's"
        return self.api.private_chat(self.user(person))

    def _chat_id(self, person: Person | None, group: bool) -> int:
        return int(self._chat(person, group)["id"])

    async def say(self, person: Person, text: str, *, group: bool = False) -> None:
        if group:
            text = f"@{self.api.bot_user['username']} {text}"
        self.api.send_text(self._chat(person, group), self.user(person), text)

    async def chatter(self, person: Person, text: str) -> None:
        self.api.send_text(self.group, self.user(person), text)

    async def send_picture(
        self, person: Person, data: bytes, *, mime: str = "image/jpeg", caption: str = ""
    ) -> None:
        chat, user = self._chat(person, False), self.user(person)
        if mime == "image/jpeg":
            self.api.push(self.api.photo_update(chat, user, [data], caption=caption or None))
        else:
            self.api.push(self.api.image_file_update(chat, user, data, mime, caption=caption))

    def files(self, person: Person | None = None, *, group: bool = False) -> list[bytes]:
        chat_id = self._chat_id(person, group)
        return [
            call.files["document"]
            for call in self.api.calls_to("sendDocument", ok=True)
            if call.params.get("chat_id") == chat_id
        ]

    async def send_voice_note(self, person: Person, ogg_opus: bytes, *, duration_s: int) -> None:
        self.api.send_voice(
            self._chat(person, False), self.user(person), ogg_opus, duration=duration_s
        )

    async def command(self, person: Person, name: str, *args: str, group: bool = False) -> str:
        chat_id = self._chat_id(person, group)
        before = {m.message_id for m in self.api.bot_messages(chat_id)}

        def answers() -> list[str]:
            return [m.text for m in self.api.bot_messages(chat_id) if m.message_id not in before]

        self.api.send_text(
            self._chat(person, group), self.user(person), " ".join((f"/{name}", *args))
        )
        await self.wait_until(answers)
        return answers()[0]

    def replies(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        return telegram_replies(self.api, self._chat_id(person, group))

    def shown(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        return [m.text for m in self.api.bot_messages(self._chat_id(person, group))]

    def queue_notices(self) -> list[str]:
        sent = [c.params["text"] for c in self.api.calls_to("sendMessage")]
        return [text for text in sent if text.startswith(QUEUE_NOTICE_PREFIX)]

    def typing_shown(self, person: Person | None = None, *, group: bool = False) -> bool:
        chat_id = self._chat_id(person, group)
        return any(
            c.params["chat_id"] == chat_id and c.params["action"] == "typing"
            for c in self.api.calls_to("sendChatAction")
        )

    def downloads(self) -> int:
        return len(self.api.calls_to("getFile"))

    def rate_limit_next_edit(self) -> None:
        self.api.rate_limit("editMessageText", retry_after=1)

    def edit_calls(self) -> tuple[int, int]:
        edits = self.api.calls_to("editMessageText")
        limited = [c for c in edits if c.error is not None and c.error.status == 429]
        return len(edits), len(limited)

    def sent_payloads(self) -> list[str]:
        return [json.dumps(call.params, ensure_ascii=False) for call in self.api.calls]

    def load(self, chats: int) -> ChatLoad:
        return TelegramLoad(self.api, chats=chats)

    async def wait_until(self, predicate: Callable[[], object]) -> None:
        await self.api.wait_for(lambda _: predicate())

    async def until(self, predicate: Callable[[], object]) -> None:
        await self.api.until(lambda _: predicate())


class DiscordDriver(PlatformDriver):
    """Drives `FakeDiscord`: DMs, and #general of its guild where the bot is mentioned."""

    name = "discord"
    debug_log_marker = "MESSAGE_CREATE"

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._users: dict[int, FakeUser] = {}

    def settings(
        self,
        tmp_path: Path,
        llm_url: str,
        *,
        engine: Section = None,
        llm: Section = None,
        stt: Section = None,
        **platform: Any,
    ) -> Settings:
        return discord_settings(
            tmp_path, self.fake, llm_url, engine=engine, llm=llm, stt=stt, **platform
        )

    def running(
        self, settings: Settings, *, speech: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        return discord_bot(settings, speech=speech)

    def person(self, name: str) -> Person:
        user = FakeUser(snowflake(), name)
        self._users[user.id] = user
        return Person(user.id, name)

    def user(self, person: Person) -> FakeUser:
        """The fake's member who is `person`."""
        return self._users[person.id]

    def _channel(self, person: Person | None, group: bool) -> int:
        if group:
            return self.fake.GENERAL_ID
        assert person is not None, "a DM channel is someone's"
        return self.fake.dm_channel(self.user(person))

    async def say(self, person: Person, text: str, *, group: bool = False) -> None:
        await self.fake.post_message(self.user(person), text, dm=not group, mention_bot=group)

    async def chatter(self, person: Person, text: str) -> None:
        await self.fake.post_message(self.user(person), text, channel_id=self.fake.GENERAL_ID)

    async def send_picture(
        self, person: Person, data: bytes, *, mime: str = "image/jpeg", caption: str = ""
    ) -> None:
        picture = self.fake.add_attachment(data, "picture." + mime.rsplit("/", 1)[-1], mime)
        await self.fake.post_message(self.user(person), caption, dm=True, attachments=[picture])

    def files(self, person: Person | None = None, *, group: bool = False) -> list[bytes]:
        channel = self._channel(person, group)
        return [
            part.data
            for message in self.fake.channel_messages(channel, by_bot=True)
            for part in message.files
        ]

    async def send_voice_note(self, person: Person, ogg_opus: bytes, *, duration_s: int) -> None:
        note = self.fake.add_attachment(
            ogg_opus, "voice-message.ogg", "audio/ogg", duration_s=float(duration_s),
            waveform=bytes(range(0, 250, 5)),
        )  # fmt: skip
        await self.fake.post_message(
            self.user(person), dm=True, attachments=[note], flags=MESSAGE_FLAG_VOICE
        )

    async def command(self, person: Person, name: str, *args: str, group: bool = False) -> str:
        interaction = await self.fake.interact(
            name, _options(name, args), user=self.user(person), dm=not group
        )

        def answer() -> str:
            return "".join(m.content for m in self.fake.reply_messages(interaction))

        await self.wait_until(answer)
        return answer()

    def replies(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        return discord_replies(self.fake, self._channel(person, group))

    def shown(self, person: Person | None = None, *, group: bool = False) -> list[str]:
        channel = self._channel(person, group)
        return [m.content for m in self.fake.channel_messages(channel, by_bot=True)]

    def queue_notices(self) -> list[str]:
        firsts = [m.writes[0] for m in self.fake.messages.values() if m.author.bot and m.writes]
        return [text for text in firsts if text.startswith(QUEUE_NOTICE_PREFIX)]

    def typing_shown(self, person: Person | None = None, *, group: bool = False) -> bool:
        channel = self._channel(person, group)
        return bool(self.fake.calls_to("POST", rf"/channels/{channel}/typing"))

    def downloads(self) -> int:
        return len(self.fake.downloads)

    def rate_limit_next_edit(self) -> None:
        self.fake.rate_limit("PATCH", DISCORD_EDITS)

    def edit_calls(self) -> tuple[int, int]:
        edits = [c for c in self.fake.calls if c.method == "PATCH"]
        limited = [c for c in self.fake.rate_limited if c.method == "PATCH"]
        return len(edits), len(limited)

    def sent_payloads(self) -> list[str]:
        return [json.dumps(call.body, ensure_ascii=False) for call in self.fake.calls]

    def load(self, chats: int) -> ChatLoad:
        return DiscordLoad(self.fake, chats=chats)

    async def wait_until(self, predicate: Callable[[], object]) -> None:
        await self.fake.wait_until(lambda: bool(predicate()))

    async def until(self, predicate: Callable[[], object]) -> None:
        await self.fake.wait_until(lambda: bool(predicate()))  # the fake always has its guard


def _options(name: str, args: tuple[str, ...]) -> dict[str, str]:
    """A slash command's options from `/name args` words, by the command table's parameters.

    The last parameter takes the rest of the words, as a typed command's last argument does.
    """
    words = name.split()
    command = find(table(DISCORD.commands), words[0])
    assert command is not None, f"no command /{words[0]}"
    for sub in words[1:]:
        command = next(c for c in command.subcommands if c.name == sub)
    params = [p.name for p in command.params if p.kind == "text"]
    if not args:
        return {}
    assert 0 < len(params) <= len(args), f"/{name} takes {params}, not {args}"
    *first, last = params
    return {**dict(zip(first, args, strict=False)), last: " ".join(args[len(first) :])}


@contextlib.asynccontextmanager
async def open_driver(
    platform: str, *, token: str | None = None, edit_429_share: float = 0.0, seed: int = 0
) -> AsyncIterator[PlatformDriver]:
    """A driver on a fresh fake of `platform`, which expects `token` (default: its own).

    `edit_429_share` of the message edits (drawn from a `seed`ed generator) are answered 429.
    """
    if platform == "telegram":
        async with FakeTelegramAPI(token=token or DEFAULT_TOKEN) as api:
            if edit_429_share:
                rng = random.Random(seed)
                api.fail(
                    "editMessageText",
                    status=429,
                    description="Too Many Requests: retry after 1",
                    retry_after=1,
                    times=10**6,
                    when=lambda _: rng.random() < edit_429_share,
                )
            yield TelegramDriver(api)
    elif platform == "discord":
        fake_token = token or FakeDiscord.TOKEN
        fake = (
            FlakyDiscord(edit_429_share=edit_429_share, seed=seed, token=fake_token)
            if edit_429_share
            else FakeDiscord(token=fake_token)
        )
        async with fake:
            yield DiscordDriver(fake)
    else:
        raise ValueError(f"no driver for {platform!r}")
