"""The Discord adapter end to end: the real discord.py, the real engine and storage.

Outside the machine only Discord (tests/fakes/discord_api.py: REST and the gateway) and the LLM
server (tests/fakes/llm_server.py) are faked, each speaking its real protocol on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import (
    DEVELOPER_PORTAL,
    MSG_NOT_ALLOWED,
    DiscordAdapter,
)
from adapters.discord.targets import MESSAGE_FLAG_VOICE
from bot.app import ParleyApp
from bot.config import Settings
from bot.errors import ConfigError
from bot.streaming import DEFAULT_MARKER
from tests import conftest
from tests.fakes.discord_api import INTERACTION_TOKEN_LIFETIME_S, MAX_MESSAGE_CHARS, FakeDiscord
from tests.fakes.discord_gateway import (
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_PRESENCES,
    INTENT_MESSAGE_CONTENT,
)
from tests.fakes.discord_world import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    ManualClock,
)
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text

REPLY = "Hello Alice, nice to meet you. What would you like to talk about today?"
# Budgets far above what a test sends, so streaming never waits on them (the fake enforces
# Discord's own limits where a test wants them).
FAST = {"channel_edits": 200.0, "channel_window_s": 1.0, "global_rate": 500.0}
READY_S = 0.05  # guild_ready_timeout: the fake sends its only GUILD_CREATE right after READY
COMMANDS = {"ask", "reset", "persona", "voice", "config", "help", "forget"}
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(behaviour=Behaviour(reply=REPLY)) as server:
        yield server


def make_settings(
    tmp_path: Path,
    fake: FakeDiscord,
    llm: FakeLLMServer,
    *,
    engine: dict[str, Any] | None = None,
    stt: dict[str, Any] | None = None,
    **discord: Any,
) -> Settings:
    return conftest.make_settings(
        tmp_path,
        llm={"base_url": llm.url, "retries": 0},
        engine={"voice_mode": "off", **(engine or {})},
        stt={"model": "tiny.en", **(stt or {})},
        tts={"backends": ["piper"]},
        discord={
            "token": fake.token,
            "api_base_url": fake.api_url,
            "gateway_url": fake.gateway_url,
            **FAST,
            **discord,
        },
    )


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings, *, speech: bool = False, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[DiscordAdapter]:
    """ParleyApp + DiscordAdapter, started and stopped as `parley run` does."""
    async with ParleyApp(settings, speech=speech) as app:
        adapter = DiscordAdapter(app.services, guild_ready_timeout=READY_S, clock=clock)
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()


def final_reply(fake: FakeDiscord, interaction: FakeInteraction) -> str:
    return "".join(m.content for m in fake.reply_messages(interaction))


def answered(fake: FakeDiscord, interaction: FakeInteraction, text: str) -> Callable[[], bool]:
    return lambda: final_reply(fake, interaction) == text


def replies_to(fake: FakeDiscord, question: FakeMessage) -> list[FakeMessage]:
    return [
        m
        for m in fake.channel_messages(question.channel_id, by_bot=True)
        if m.reference == question.id
    ]


def reply_shown(fake: FakeDiscord, question: FakeMessage, text: str) -> Callable[[], bool]:
    return lambda: any(m.content == text for m in replies_to(fake, question))


# -- start-up ------------------------------------------------------------------------------


async def test_start_syncs_commands_globally_and_keeps_the_gateway_alive(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    async with running_bot(make_settings(tmp_path, fake, llm)):
        assert fake.api_url == Route.BASE
        await fake.wait_until(lambda: fake.session.acks() >= 1)
    assert saved == (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)  # restored
    assert {c["name"] for c in fake.commands[None]} == COMMANDS
    config = next(c for c in fake.commands[None] if c["name"] == "config")
    assert {o["name"] for o in config["options"]} == {"show", "set"}
    assert not fake.calls_to("PUT", r"/applications/\d+/guilds/\d+/commands")
    intents = fake.session.identify["intents"]  # type: ignore[index]
    assert intents & INTENT_MESSAGE_CONTENT
    assert not intents & (INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES)
    assert fake.session.query["encoding"] == "json"
    assert not fake.unhandled


async def test_guild_ids_sync_instantly_per_guild(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    settings = make_settings(tmp_path, fake, llm, guild_ids=[FakeDiscord.GUILD_ID])
    async with running_bot(settings):
        interaction = await fake.interact("help")
        await fake.wait_until(lambda: "/reset" in final_reply(fake, interaction))
    assert {c["name"] for c in fake.commands[fake.GUILD_ID]} == COMMANDS
    assert None not in fake.commands
    assert fake.messages[interaction.original_id].flags & FLAG_EPHEMERAL  # type: ignore[index]


async def test_refused_message_content_intent_is_a_clear_error(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    async with FakeDiscord(grant_message_content=False) as fake:
        with pytest.raises(ConfigError) as caught:
            async with running_bot(make_settings(tmp_path, fake, llm)):
                pass
    (problem,) = caught.value.problems
    assert "Message Content Intent" in problem and DEVELOPER_PORTAL in problem
    assert "discord.message_content = false" in problem


async def test_without_the_intent_mentions_and_dms_still_work(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    async with FakeDiscord(grant_message_content=False) as fake:
        settings = make_settings(tmp_path, fake, llm, message_content=False)
        async with running_bot(settings):
            question = await fake.post_message(fake.ALICE, "hello there", mention_bot=True)
            await fake.wait_until(reply_shown(fake, question, REPLY))
    assert last_user_text(llm.requests[0]) == "hello there"
    assert not fake.session.identify["intents"] & INTENT_MESSAGE_CONTENT  # type: ignore[index]


async def test_rejected_token_is_a_clear_error(tmp_path: Path, llm: FakeLLMServer) -> None:
    async with FakeDiscord(token="the-real-token") as fake:
        settings = make_settings(tmp_path, fake, llm, token="an-old-token")
        with pytest.raises(ConfigError, match="rejected the bot token"):
            async with running_bot(settings):
                pass


# -- /ask ----------------------------------------------------------------------------------


async def test_ask_streams_by_editing_the_original_response(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.03  # a dozen chunks over ~0.4 s: several edits
    async with running_bot(make_settings(tmp_path, fake, llm)):
        interaction = await fake.interact("ask", {"prompt": "Hi, I'm Alice"})
        await fake.wait_until(answered(fake, interaction, REPLY))
    assert interaction.callback_type == 5 and not interaction.late_callback  # deferred in time
    original = fake.messages[interaction.original_id]  # type: ignore[index]
    assert not original.flags & (FLAG_LOADING | FLAG_EPHEMERAL)
    assert not interaction.followup_ids
    shown = [text.removesuffix(DEFAULT_MARKER) for text in original.writes[1:]]  # after "thinking…"
    assert len(shown) >= 2 and shown[0] != REPLY and shown[-1] == REPLY
    assert all(REPLY.startswith(text) for text in shown)
    assert last_user_text(llm.requests[0]) == "Hi, I'm Alice"


async def test_reply_over_2000_characters_continues_in_followups(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    long_reply = " ".join(f"Sentence number {i} of a long answer." for i in range(110))
    llm.behaviour.reply = long_reply
    llm.behaviour.words_per_chunk = 20
    async with running_bot(make_settings(tmp_path, fake, llm)):
        interaction = await fake.interact("ask", {"prompt": "Tell me everything"})
        await fake.wait_until(answered(fake, interaction, long_reply))
    parts = fake.reply_messages(interaction)
    assert len(long_reply) > 2 * MAX_MESSAGE_CHARS and len(parts) >= 3
    assert parts[0].id == interaction.original_id
    assert [p.id for p in parts[1:]] == interaction.followup_ids
    assert all(0 < len(p.content) <= MAX_MESSAGE_CHARS for p in parts)


async def test_reply_outliving_the_interaction_token_continues_in_the_channel(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    clock = ManualClock()  # shared: the bot and the fake agree on when the token expires
    llm.behaviour.delay_s = 0.05
    async with FakeDiscord(clock=clock) as fake:
        # The first edit after the first part is refused for a second: time for the test to
        # move the clock past the token's 15 minutes while the reply is being written.
        fake.rate_limit("PATCH", ORIGINAL, skip=1, retry_after=1.0)
        async with running_bot(make_settings(tmp_path, fake, llm), clock=clock):
            interaction = await fake.interact("ask", {"prompt": "Take your time"})
            await fake.wait_until(lambda: bool(fake.rate_limited))
            clock.advance(INTERACTION_TOKEN_LIFETIME_S)
            original = fake.messages[interaction.original_id]  # type: ignore[index]

            def rest_in_channel() -> bool:
                # The original keeps its last edit from before the token expired (with the
                # streaming marker); one plain channel message carries the rest of the reply.
                shown = original.content.removesuffix(DEFAULT_MARKER)
                plain = [m for m in fake.channel_messages(fake.GENERAL_ID, by_bot=True)
                         if m.interaction_id is None]  # fmt: skip
                return len(plain) == 1 and plain[0].content == REPLY[len(shown) :].lstrip()

            await fake.wait_until(rest_in_channel)
    shown = original.content.removesuffix(DEFAULT_MARKER)
    assert shown and REPLY.startswith(shown) and shown != REPLY


# -- chat ----------------------------------------------------------------------------------


async def test_server_messages_need_a_mention_or_a_reply(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    async with running_bot(make_settings(tmp_path, fake, llm)):
        await fake.post_message(fake.ALICE, "just chatting with friends")
        question = await fake.post_message(fake.ALICE, "what is a haiku?", mention_bot=True)
        await fake.wait_until(reply_shown(fake, question, REPLY))
        (answer,) = replies_to(fake, question)
        follow_up = await fake.post_message(fake.ALICE, "and a limerick?", reply_to=answer)
        await fake.wait_until(reply_shown(fake, follow_up, REPLY))
        assert len(llm.requests) == 2  # the unaddressed message and the bot's own echoes: none
        in_thread = await fake.post_message(
            fake.ALICE, "new topic", channel_id=fake.THREAD_ID, mention_bot=True
        )
        await fake.wait_until(reply_shown(fake, in_thread, REPLY))
        in_dm = await fake.post_message(fake.BOB, "no mention needed here", dm=True)
        await fake.wait_until(reply_shown(fake, in_dm, REPLY))
    assert len(llm.requests) == 4
    assert last_user_text(llm.requests[0]) == "what is a haiku?"  # the mention is dropped
    assert "what is a haiku?" in str(llm.requests[1])  # same channel: history
    assert "what is a haiku?" not in str(llm.requests[2])  # a thread is its own channel
    assert "what is a haiku?" not in str(llm.requests[3])


async def test_other_bots_are_ignored(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    other_bot = FakeUser(1_300_000_000_000_000_001, "OtherBot", bot=True)
    async with running_bot(make_settings(tmp_path, fake, llm)):
        await fake.post_message(other_bot, "hey bot", mention_bot=True)
        question = await fake.post_message(fake.ALICE, "hey", mention_bot=True)
        await fake.wait_until(reply_shown(fake, question, REPLY))
    assert len(llm.requests) == 1


async def test_edits_over_the_channel_limit_get_429s_and_the_final_text_lands(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.01
    async with FakeDiscord(channel_write_limit=(3, 0.5)) as fake:
        async with running_bot(make_settings(tmp_path, fake, llm)):
            question = await fake.post_message(fake.ALICE, "hi", mention_bot=True)
            await fake.wait_until(reply_shown(fake, question, REPLY))
        assert fake.rate_limited  # the budgets are loose on purpose: Discord said no
        (answer,) = replies_to(fake, question)
        assert answer.content == REPLY


async def test_429_on_interaction_edits_then_the_final_text_lands(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    llm.behaviour.delay_s = 0.02
    fake.rate_limit("PATCH", ORIGINAL, skip=1, times=3, retry_after=0.1)
    async with running_bot(make_settings(tmp_path, fake, llm)):
        interaction = await fake.interact("ask", {"prompt": "hi"})
        await fake.wait_until(answered(fake, interaction, REPLY))
    assert len(fake.rate_limited) == 3


async def test_queue_position_is_shown_then_replaced_by_the_reply(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    llm.behaviour.first_delay_s = 0.5  # the first reply is still thinking when the second comes
    async with running_bot(make_settings(tmp_path, fake, llm)):
        first = await fake.post_message(fake.ALICE, "one", mention_bot=True)
        second = await fake.post_message(fake.BOB, "two", mention_bot=True)
        await fake.wait_until(reply_shown(fake, second, REPLY))
        await fake.wait_until(reply_shown(fake, first, REPLY))
    waiting = [
        m
        for m in fake.messages.values()
        if m.reference == second.id and m.writes[0].startswith("⏳ You're #1 in line")
    ]
    # The "in line" note is deleted when the answer comes, so replies stay in answer order.
    assert len(waiting) == 1 and waiting[0].deleted
    (answer,) = replies_to(fake, second)
    assert answer.content == REPLY
    assert fake.calls_to("POST", rf"/channels/{fake.GENERAL_ID}/typing")


async def test_config_set_needs_manage_server_or_an_admin_listing(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    settings = make_settings(tmp_path, fake, llm, admin_role_ids=[FakeDiscord.HELPER_ROLE_ID])
    replies = {}
    async with running_bot(settings):
        for user, value in ((fake.ALICE, "0.1"), (fake.BOB, "0.2"), (fake.CAROL, "0.3")):
            interaction = await fake.interact(
                "config set", {"key": "temperature", "value": value}, user=user
            )
            await fake.wait_until(lambda i=interaction: bool(final_reply(fake, i)))
            replies[user.name] = final_reply(fake, interaction)
        shown = await fake.interact("config show")
        await fake.wait_until(lambda: "temperature" in final_reply(fake, shown))
    assert "only admins" in replies["Alice"]  # a plain member
    assert replies["Bob"].startswith("temperature is now 0.2")  # Manage Server
    assert replies["Carol"].startswith("temperature is now 0.3")  # a role in admin_role_ids
    assert "temperature = 0.3" in final_reply(fake, shown)


async def test_allowed_channels_limit_where_the_bot_answers(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    settings = make_settings(tmp_path, fake, llm, allowed_channel_ids=[FakeDiscord.THREAD_ID])
    async with running_bot(settings):
        refused = await fake.interact("ask", {"prompt": "hi"})
        await fake.wait_until(answered(fake, refused, MSG_NOT_ALLOWED))
        await fake.post_message(fake.ALICE, "in general", mention_bot=True)
        question = await fake.post_message(
            fake.ALICE, "in the thread", channel_id=fake.THREAD_ID, mention_bot=True
        )
        await fake.wait_until(reply_shown(fake, question, REPLY))
    assert refused.callback_type == 4  # answered at once, privately
    assert fake.messages[refused.original_id].flags & FLAG_EPHEMERAL  # type: ignore[index]
    assert [last_user_text(r) for r in llm.requests] == ["in the thread"]


# -- voice ---------------------------------------------------------------------------------


async def test_audio_over_the_size_limit_is_refused_without_downloading(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    settings = make_settings(tmp_path, fake, llm, stt={"max_bytes": 1000})
    big = fake.add_attachment(b"OggS" + bytes(5000), "voice-message.ogg", "audio/ogg",
                              duration_s=3.0, waveform=b"\x10\x20")  # fmt: skip
    async with running_bot(settings):
        note = await fake.post_message(
            fake.ALICE, dm=True, attachments=[big], flags=MESSAGE_FLAG_VOICE
        )
        await fake.wait_until(lambda: bool(replies_to(fake, note)))
    (notice,) = replies_to(fake, note)
    assert "too large" in notice.content
    assert not fake.downloads and not llm.requests


def voice_messages(fake: FakeDiscord, channel_id: int) -> list[FakeMessage]:
    return [
        m for m in fake.channel_messages(channel_id, by_bot=True) if m.flags & MESSAGE_FLAG_VOICE
    ]


@pytest.mark.speech
async def test_voice_message_is_transcribed_and_answered_with_a_voice_message(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    from tests.fakes.audio_samples import KNOWN_SENTENCE, voice_note, word_error_rate

    settings = make_settings(tmp_path, fake, llm, engine={"voice_mode": "reply-to-voice"})
    note_bytes = voice_note()
    upload = fake.add_attachment(note_bytes, "voice-message.ogg", "audio/ogg",
                                 duration_s=4.0, waveform=bytes(range(0, 250, 5)))  # fmt: skip
    async with running_bot(settings, speech=True):
        dm = fake.dm_channel(fake.ALICE)
        await fake.post_message(fake.ALICE, dm=True, attachments=[upload], flags=MESSAGE_FLAG_VOICE)
        await fake.wait_until(lambda: bool(voice_messages(fake, dm)))
    assert fake.downloads == [int(upload["id"])]
    heard = last_user_text(llm.requests[0])
    assert word_error_rate(KNOWN_SENTENCE, heard) < 0.3
    texts = [m.content for m in fake.channel_messages(dm, by_bot=True)]
    assert texts[0].startswith("🎤") and REPLY in texts
    (voice,) = voice_messages(fake, dm)
    (attachment,) = voice.attachments
    assert voice.content == ""
    assert attachment["content_type"] == "audio/ogg"
    assert attachment["duration_secs"] > 1.0
    assert 1 <= len(base64.b64decode(attachment["waveform"])) <= 256
    assert voice.files[0].data.startswith(b"OggS")


@pytest.mark.speech
async def test_refused_voice_message_falls_back_to_an_audio_file(
    tmp_path: Path, fake: FakeDiscord, llm: FakeLLMServer
) -> None:
    settings = make_settings(tmp_path, fake, llm, engine={"voice_mode": "always"})
    async with running_bot(settings, speech=True):
        dm = fake.dm_channel(fake.ALICE)
        # The text reply's post passes; the voice message is refused (no Send Voice Messages).
        fake.refuse("POST", rf"/channels/{dm}/messages", skip=1)
        await fake.post_message(fake.ALICE, "talk to me", dm=True)
        await fake.wait_until(
            lambda: any(m.attachments for m in fake.channel_messages(dm, by_bot=True))
        )
    audio = [m for m in fake.channel_messages(dm, by_bot=True) if m.attachments]
    (fallback,) = audio
    assert not fallback.flags & MESSAGE_FLAG_VOICE
    assert fallback.attachments[0]["filename"].endswith(".ogg")
    assert fallback.files[0].data.startswith(b"OggS")
