"""The Discord adapter end to end: the real discord.py, the real engine and storage.

Outside the machine only Discord (tests/fakes/discord_api.py: REST and the gateway) and the LLM
server (tests/fakes/llm_server.py) are faked, each speaking its real protocol on loopback.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import DEVELOPER_PORTAL
from adapters.discord.targets import MESSAGE_FLAG_VOICE
from bot.delivery.stream import DEFAULT_MARKER
from bot.errors import ConfigError
from bot.messages import Msg, say
from tests.fakes.clock import ManualClock
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
)
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import discord_bot, discord_settings

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

REPLY = "Hello Alice, nice to meet you. What would you like to talk about today?"
COMMANDS = {
    "ask",
    "reset",
    "persona",
    "voice",
    "config",
    "help",
    "forget",
    "remember",
    "memory",
    "model",
    "tools",
    "session",
    "join",
    "leave",
}
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=REPLY)


def final_reply(discord: FakeDiscord, interaction: FakeInteraction) -> str:
    return "".join(m.content for m in discord.reply_messages(interaction))


def answered(discord: FakeDiscord, interaction: FakeInteraction, text: str) -> Callable[[], bool]:
    return lambda: final_reply(discord, interaction) == text


def replied(discord: FakeDiscord, interaction: FakeInteraction) -> Callable[[], bool]:
    return lambda: bool(final_reply(discord, interaction))


def identified_intents(discord: FakeDiscord) -> int:
    """The gateway intents the bot asked for in its last IDENTIFY."""
    identify = discord.session.identify
    assert identify is not None, "the bot never identified"
    return int(identify["intents"])


def replies_to(discord: FakeDiscord, question: FakeMessage) -> list[FakeMessage]:
    return [
        m
        for m in discord.channel_messages(question.channel_id, by_bot=True)
        if m.reference == question.id
    ]


def reply_shown(discord: FakeDiscord, question: FakeMessage, text: str) -> Callable[[], bool]:
    return lambda: any(m.content == text for m in replies_to(discord, question))


# -- start-up ------------------------------------------------------------------------------


async def test_start_syncs_commands_globally_and_keeps_the_gateway_alive(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        assert discord.api_url == Route.BASE
        await discord.wait_until(lambda: discord.session.acks() >= 1)
    assert saved == (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)  # restored
    assert {c["name"] for c in discord.commands[None]} == COMMANDS
    config = next(c for c in discord.commands[None] if c["name"] == "config")
    assert {o["name"] for o in config["options"]} == {"show", "set"}
    assert not discord.calls_to("PUT", r"/applications/\d+/guilds/\d+/commands")
    intents = identified_intents(discord)
    assert intents & INTENT_MESSAGE_CONTENT
    assert not intents & (INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES)
    assert discord.session.query["encoding"] == "json"
    assert not discord.unhandled


async def test_guild_ids_sync_instantly_per_guild(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url, guild_ids=[FakeDiscord.GUILD_ID])
    async with discord_bot(settings):
        interaction = await discord.interact("help")
        await discord.wait_until(lambda: "/reset" in final_reply(discord, interaction))
    assert {c["name"] for c in discord.commands[discord.GUILD_ID]} == COMMANDS
    assert None not in discord.commands
    assert discord.original_response(interaction).flags & FLAG_EPHEMERAL


async def test_refused_message_content_intent_is_a_clear_error(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    async with FakeDiscord(grant_message_content=False) as discord:
        with pytest.raises(ConfigError) as caught:
            async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
                pass
    (problem,) = caught.value.problems
    assert "Message Content Intent" in problem and DEVELOPER_PORTAL in problem
    assert "discord.message_content = false" in problem


async def test_without_the_intent_mentions_and_dms_still_work(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    async with FakeDiscord(grant_message_content=False) as discord:
        settings = discord_settings(tmp_path, discord, fake_llm.url, message_content=False)
        async with discord_bot(settings):
            question = await discord.post_message(discord.ALICE, "hello there", mention_bot=True)
            await discord.wait_until(reply_shown(discord, question, REPLY))
    assert last_user_text(fake_llm.requests[0]) == "hello there"
    assert not identified_intents(discord) & INTENT_MESSAGE_CONTENT


async def test_rejected_token_is_a_clear_error(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    async with FakeDiscord(token="the-real-token") as discord:
        settings = discord_settings(tmp_path, discord, fake_llm.url, token="an-old-token")
        with pytest.raises(ConfigError, match="rejected the bot token"):
            async with discord_bot(settings):
                pass


# -- /ask ----------------------------------------------------------------------------------


async def test_ask_streams_by_editing_the_original_response(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.03  # a dozen chunks over ~0.4 s: several edits
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        interaction = await discord.interact("ask", {"prompt": "Hi, I'm Alice"})
        await discord.wait_until(answered(discord, interaction, REPLY))
    assert interaction.callback_type == 5 and not interaction.late_callback  # deferred in time
    original = discord.original_response(interaction)
    assert not original.flags & (FLAG_LOADING | FLAG_EPHEMERAL)
    assert not interaction.followup_ids
    shown = [text.removesuffix(DEFAULT_MARKER) for text in original.writes[1:]]  # after "thinking…"
    assert len(shown) >= 2 and shown[0] != REPLY and shown[-1] == REPLY
    assert all(REPLY.startswith(text) for text in shown)
    assert last_user_text(fake_llm.requests[0]) == "Hi, I'm Alice"


async def test_reply_over_2000_characters_continues_in_followups(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    long_reply = " ".join(f"Sentence number {i} of a long answer." for i in range(110))
    fake_llm.behaviour.reply = long_reply
    fake_llm.behaviour.words_per_chunk = 20
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        interaction = await discord.interact("ask", {"prompt": "Tell me everything"})
        await discord.wait_until(answered(discord, interaction, long_reply))
    parts = discord.reply_messages(interaction)
    assert len(long_reply) > 2 * MAX_MESSAGE_CHARS and len(parts) >= 3
    assert parts[0].id == interaction.original_id
    assert [p.id for p in parts[1:]] == interaction.followup_ids
    assert all(0 < len(p.content) <= MAX_MESSAGE_CHARS for p in parts)


async def test_reply_outliving_the_interaction_token_continues_in_the_channel(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    clock = ManualClock()  # shared: the bot and the fake agree on when the token expires
    fake_llm.behaviour.delay_s = 0.05
    async with FakeDiscord(clock=clock) as discord:
        # The first edit after the first part is refused for a second: time for the test to
        # move the clock past the token's 15 minutes while the reply is being written.
        discord.rate_limit("PATCH", ORIGINAL, skip=1, retry_after=1.0)
        async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url), clock=clock):
            interaction = await discord.interact("ask", {"prompt": "Take your time"})
            await discord.wait_until(lambda: bool(discord.rate_limited))
            clock.advance(INTERACTION_TOKEN_LIFETIME_S)
            original = discord.original_response(interaction)

            def rest_in_channel() -> bool:
                # The original keeps its last edit from before the token expired (with the
                # streaming marker); one plain channel message carries the rest of the reply.
                shown = original.content.removesuffix(DEFAULT_MARKER)
                plain = [m for m in discord.channel_messages(discord.GENERAL_ID, by_bot=True)
                         if m.interaction_id is None]  # fmt: skip
                return len(plain) == 1 and plain[0].content == REPLY[len(shown) :].lstrip()

            await discord.wait_until(rest_in_channel)
    shown = original.content.removesuffix(DEFAULT_MARKER)
    assert shown and REPLY.startswith(shown) and shown != REPLY


# -- chat ----------------------------------------------------------------------------------


async def test_server_messages_need_a_mention_or_a_reply(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        await discord.post_message(discord.ALICE, "just chatting with friends")
        question = await discord.post_message(discord.ALICE, "what is a haiku?", mention_bot=True)
        await discord.wait_until(reply_shown(discord, question, REPLY))
        (answer,) = replies_to(discord, question)
        follow_up = await discord.post_message(discord.ALICE, "and a limerick?", reply_to=answer)
        await discord.wait_until(reply_shown(discord, follow_up, REPLY))
        assert len(fake_llm.requests) == 2  # the unaddressed message and the bot's own echoes: none
        in_thread = await discord.post_message(
            discord.ALICE, "new topic", channel_id=discord.THREAD_ID, mention_bot=True
        )
        await discord.wait_until(reply_shown(discord, in_thread, REPLY))
        in_dm = await discord.post_message(discord.BOB, "no mention needed here", dm=True)
        await discord.wait_until(reply_shown(discord, in_dm, REPLY))
    assert len(fake_llm.requests) == 4
    assert last_user_text(fake_llm.requests[0]) == "what is a haiku?"  # the mention is dropped
    assert "what is a haiku?" in str(fake_llm.requests[1])  # same channel: history
    assert "what is a haiku?" not in str(fake_llm.requests[2])  # a thread is its own channel
    assert "what is a haiku?" not in str(fake_llm.requests[3])


async def test_other_bots_are_ignored(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    other_bot = FakeUser(1_300_000_000_000_000_001, "OtherBot", bot=True)
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        await discord.post_message(other_bot, "hey bot", mention_bot=True)
        question = await discord.post_message(discord.ALICE, "hey", mention_bot=True)
        await discord.wait_until(reply_shown(discord, question, REPLY))
    assert len(fake_llm.requests) == 1


async def test_edits_over_the_channel_limit_get_429s_and_the_final_text_lands(
    tmp_path: Path, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.01
    async with FakeDiscord(channel_write_limit=(3, 0.5)) as discord:
        async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
            question = await discord.post_message(discord.ALICE, "hi", mention_bot=True)
            await discord.wait_until(reply_shown(discord, question, REPLY))
        assert discord.rate_limited  # the budgets are loose on purpose: Discord said no
        (answer,) = replies_to(discord, question)
        assert answer.content == REPLY


async def test_429_on_interaction_edits_then_the_final_text_lands(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.delay_s = 0.02
    discord.rate_limit("PATCH", ORIGINAL, skip=1, times=3, retry_after=0.1)
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        interaction = await discord.interact("ask", {"prompt": "hi"})
        await discord.wait_until(answered(discord, interaction, REPLY))
    assert len(discord.rate_limited) == 3


async def test_queue_position_is_shown_then_replaced_by_the_reply(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour.first_delay_s = 0.5  # the first reply still thinks when the second comes
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        first = await discord.post_message(discord.ALICE, "one", mention_bot=True)
        second = await discord.post_message(discord.BOB, "two", mention_bot=True)
        await discord.wait_until(reply_shown(discord, second, REPLY))
        await discord.wait_until(reply_shown(discord, first, REPLY))
    waiting = [
        m
        for m in discord.messages.values()
        if m.reference == second.id and m.writes[0].startswith("⏳ You're #1 in line")
    ]
    # The "in line" note is deleted when the answer comes, so replies stay in answer order.
    assert len(waiting) == 1 and waiting[0].deleted
    (answer,) = replies_to(discord, second)
    assert answer.content == REPLY
    assert discord.calls_to("POST", rf"/channels/{discord.GENERAL_ID}/typing")


async def test_config_set_needs_manage_server_or_an_admin_listing(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(
        tmp_path, discord, fake_llm.url, admin_role_ids=[FakeDiscord.HELPER_ROLE_ID]
    )
    replies = {}
    async with discord_bot(settings):
        for user, value in ((discord.ALICE, "0.1"), (discord.BOB, "0.2"), (discord.CAROL, "0.3")):
            interaction = await discord.interact(
                "config set", {"key": "temperature", "value": value}, user=user
            )
            await discord.wait_until(replied(discord, interaction))
            replies[user.name] = final_reply(discord, interaction)
        shown = await discord.interact("config show")
        await discord.wait_until(lambda: "temperature" in final_reply(discord, shown))
    assert "only admins" in replies["Alice"]  # a plain member
    assert replies["Bob"].startswith("temperature is now 0.2")  # Manage Server
    assert replies["Carol"].startswith("temperature is now 0.3")  # a role in admin_role_ids
    assert "temperature = 0.3" in final_reply(discord, shown)


async def test_allowed_channels_limit_where_the_bot_answers(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(
        tmp_path, discord, fake_llm.url, allowed_channel_ids=[FakeDiscord.THREAD_ID]
    )
    async with discord_bot(settings):
        refused = await discord.interact("ask", {"prompt": "hi"})
        await discord.wait_until(answered(discord, refused, say(Msg.NOT_ALLOWED_HERE)))
        await discord.post_message(discord.ALICE, "in general", mention_bot=True)
        question = await discord.post_message(
            discord.ALICE, "in the thread", channel_id=discord.THREAD_ID, mention_bot=True
        )
        await discord.wait_until(reply_shown(discord, question, REPLY))
    assert refused.callback_type == 4  # answered at once, privately
    assert discord.original_response(refused).flags & FLAG_EPHEMERAL
    assert [last_user_text(r) for r in fake_llm.requests] == ["in the thread"]


# -- voice ---------------------------------------------------------------------------------


async def test_audio_over_the_size_limit_is_refused_without_downloading(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url, stt={"max_bytes": 1000})
    big = discord.add_attachment(b"OggS" + bytes(5000), "voice-message.ogg", "audio/ogg",
                              duration_s=3.0, waveform=b"\x10\x20")  # fmt: skip
    async with discord_bot(settings):
        note = await discord.post_message(
            discord.ALICE, dm=True, attachments=[big], flags=MESSAGE_FLAG_VOICE
        )
        await discord.wait_until(lambda: bool(replies_to(discord, note)))
    (notice,) = replies_to(discord, note)
    assert "too large" in notice.content
    assert not discord.downloads and not fake_llm.requests


def voice_messages(discord: FakeDiscord, channel_id: int) -> list[FakeMessage]:
    return [
        m for m in discord.channel_messages(channel_id, by_bot=True) if m.flags & MESSAGE_FLAG_VOICE
    ]


@pytest.mark.speech
async def test_voice_message_is_transcribed_and_answered_with_a_voice_message(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    from tests.fakes.audio_samples import KNOWN_SENTENCE, voice_note, word_error_rate

    settings = discord_settings(
        tmp_path, discord, fake_llm.url, engine={"voice_mode": "reply-to-voice"}
    )
    note_bytes = voice_note()
    upload = discord.add_attachment(note_bytes, "voice-message.ogg", "audio/ogg",
                                 duration_s=4.0, waveform=bytes(range(0, 250, 5)))  # fmt: skip
    async with discord_bot(settings, speech=True):
        dm = discord.dm_channel(discord.ALICE)
        await discord.post_message(
            discord.ALICE, dm=True, attachments=[upload], flags=MESSAGE_FLAG_VOICE
        )
        await discord.wait_until(lambda: bool(voice_messages(discord, dm)))
    assert discord.downloads == [int(upload["id"])]
    heard = last_user_text(fake_llm.requests[0])
    assert word_error_rate(KNOWN_SENTENCE, heard) < 0.3
    texts = [m.content for m in discord.channel_messages(dm, by_bot=True)]
    assert texts[0].startswith("🎤") and REPLY in texts
    (voice,) = voice_messages(discord, dm)
    (attachment,) = voice.attachments
    assert voice.content == ""
    assert attachment["content_type"] == "audio/ogg"
    assert attachment["duration_secs"] > 1.0
    assert 1 <= len(base64.b64decode(attachment["waveform"])) <= 256
    assert voice.files[0].data.startswith(b"OggS")


@pytest.mark.speech
async def test_refused_voice_message_falls_back_to_an_audio_file(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url, engine={"voice_mode": "always"})
    async with discord_bot(settings, speech=True):
        dm = discord.dm_channel(discord.ALICE)
        # The text reply's post passes; the voice message is refused (no Send Voice Messages).
        discord.refuse("POST", rf"/channels/{dm}/messages", skip=1)
        await discord.post_message(discord.ALICE, "talk to me", dm=True)
        await discord.wait_until(
            lambda: any(m.attachments for m in discord.channel_messages(dm, by_bot=True))
        )
    audio = [m for m in discord.channel_messages(dm, by_bot=True) if m.attachments]
    (fallback,) = audio
    assert not fallback.flags & MESSAGE_FLAG_VOICE
    assert fallback.attachments[0]["filename"].endswith(".ogg")
    assert fallback.files[0].data.startswith(b"OggS")
