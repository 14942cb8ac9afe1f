"""Parley in each user's language, end to end through python-telegram-bot and discord.py.

Telegram tells the bot each user's `language_code`, Discord each interaction's `locale`: the
notices, /help and the command menus follow them, a chat's `/config set language` overrides
them, and a French voice note is transcribed in French and answered with a French voice.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import not_installed
from tests.fakes.audio_samples import espeak_voice_note
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_world import FakeInteraction
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import (
    discord_bot,
    discord_settings,
    telegram_bot,
    telegram_settings,
    telegram_shows,
)
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

ANN, BOB, ADMIN = 2501, 2502, 2503  # Ann's Telegram is in French, Bob's and the admin's in English
GROUP = -100_2500
FRENCH_HELP = "Bonjour, je suis Parley. Parlez-moi par écrit ou par message vocal."
ENGLISH_HELP = "Hi, I'm Parley. Talk to me by text or voice note."
LONG = "Voici un message bien trop long pour ce bot de test, vraiment."  # over 40 characters
FRENCH_TOO_LONG = f"Votre message est trop long ({len(LONG)} caractères ; la limite est de 40)."
ENGLISH_TOO_LONG = f"Your message is too long ({len(LONG)} characters; the limit is 40)."


def texts(telegram: FakeTelegramAPI, chat_id: int) -> list[str]:
    return [m.text for m in telegram.bot_messages(chat_id)]


# -- Telegram ------------------------------------------------------------------------------


async def test_telegram_speaks_each_users_language_and_a_chat_setting_overrides_it(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    ann = telegram.user(ANN, "Ann", language_code="fr")
    bob = telegram.user(BOB, "Bob", language_code="en")
    admin = telegram.user(ADMIN, "Root", language_code="en")
    group = telegram.group_chat(GROUP)
    settings = telegram_settings(
        tmp_path, telegram, fake_llm.url, admin_ids=[ADMIN], engine={"max_input_chars": 40}
    )
    async with telegram_bot(settings):
        # One command menu per language Parley speaks: English by default, French for "fr".
        default = {c["command"]: c["description"] for c in telegram.commands}
        french = {c["command"]: c["description"] for c in telegram.menus["fr"]}
        assert list(default) == list(french)
        assert default["reset"] == "Forget this conversation"
        assert french["reset"] == "Oublier cette conversation"
        assert french["voice"].startswith("Voir ou changer quand je réponds à voix haute : off")

        for user in (ann, bob):
            private = telegram.private_chat(user)
            telegram.send_text(private, user, "/help")
            telegram.send_text(private, user, LONG)
        await telegram.wait_for(telegram_shows(ANN, FRENCH_TOO_LONG))
        await telegram.wait_for(telegram_shows(BOB, ENGLISH_TOO_LONG))
        await telegram.wait_for(telegram_shows(ANN, FRENCH_HELP))
        await telegram.wait_for(telegram_shows(BOB, ENGLISH_HELP))
        # A command and a message are answered each on its own: in either order.
        assert any("/reset — oublier cette conversation" in t for t in texts(telegram, ANN))

        # The group's admin sets its language: Ann gets English there (and French in private).
        telegram.send_text(group, ann, "/help")
        await telegram.wait_for(telegram_shows(GROUP, FRENCH_HELP))
        telegram.send_text(group, admin, "/config set language en")
        await telegram.wait_for(telegram_shows(GROUP, "language is now en (was auto)"))
        telegram.send_text(group, ann, "/help")
        await telegram.wait_for(telegram_shows(GROUP, ENGLISH_HELP))
        telegram.send_text(group, ann, f"@ParleyTestBot {LONG}")
        await telegram.wait_for(telegram_shows(GROUP, "Your message is too long"))
    assert [t for t in texts(telegram, GROUP) if "trop long" in t] == []
    assert fake_llm.requests == []  # every message here was a command or refused


async def test_a_telegram_user_without_a_translation_gets_english(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    carla = telegram.user(ANN, "Carla", language_code="it")
    async with telegram_bot(telegram_settings(tmp_path, telegram, fake_llm.url)):
        telegram.send_text(telegram.private_chat(carla), carla, "/help")
        await telegram.wait_for(telegram_shows(ANN, ENGLISH_HELP))


async def test_a_fixed_engine_language_is_everyones_menu(
    tmp_path: Path, telegram: FakeTelegramAPI, fake_llm: FakeLLMServer
) -> None:
    telegram.menus["fr"] = [{"command": "stale", "description": "from an earlier run"}]
    settings = telegram_settings(tmp_path, telegram, fake_llm.url, engine={"language": "fr"})
    bob = telegram.user(BOB, "Bob", language_code="en")
    async with telegram_bot(settings):
        assert next(c for c in telegram.commands if c["command"] == "reset") == {
            "command": "reset",
            "description": "Oublier cette conversation",
        }
        assert "fr" not in telegram.menus  # deleted: the default menu is French now
        telegram.send_text(telegram.private_chat(bob), bob, "/help")
        await telegram.wait_for(telegram_shows(BOB, FRENCH_HELP))


# -- Discord -------------------------------------------------------------------------------


def final_reply(discord: FakeDiscord, interaction: FakeInteraction) -> str:
    return "".join(m.content for m in discord.reply_messages(interaction))


def replied(discord: FakeDiscord, interaction: FakeInteraction) -> Callable[[], bool]:
    return lambda: bool(final_reply(discord, interaction))


async def test_discord_commands_carry_french_descriptions_and_answer_in_the_locale(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url)
    async with discord_bot(settings):
        french_help = await discord.interact("help", locale="fr")
        english_help = await discord.interact("help", locale="en-US")
        shown = await discord.interact("config show", locale="fr", user=discord.BOB)
        refused = await discord.interact(
            "config set", {"key": "temperature", "value": "0.2"}, locale="fr"
        )
        for interaction in (french_help, english_help, shown, refused):
            await discord.wait_until(replied(discord, interaction))
    # The commands as Discord keeps them (the fake checks the locales and the lengths).
    synced = {c["name"]: c for c in discord.commands[None]}
    assert synced["reset"]["description"] == "Forget this conversation"
    assert synced["reset"]["description_localizations"] == {"fr": "Oublier cette conversation"}
    assert synced["reset"]["name_localizations"] == {}  # names stay English everywhere
    ask = synced["ask"]
    assert ask["description_localizations"]["fr"].startswith("Posez-moi une question")
    prompt = next(o for o in ask["options"] if o["name"] == "prompt")
    assert prompt["description_localizations"] == {"fr": "votre message"}
    config_set = next(o for o in synced["config"]["options"] if o["name"] == "set")
    assert config_set["description_localizations"] == {
        "fr": "Changer un réglage (Gérer le serveur, ou admin du bot)"
    }
    # Answers in the interaction's locale.
    assert final_reply(discord, french_help).startswith(FRENCH_HELP)
    assert final_reply(discord, english_help).startswith(ENGLISH_HELP)
    assert final_reply(discord, shown).startswith("Réglages de ce chat :")
    assert final_reply(discord, refused) == "Désolé, seuls les admins peuvent changer les réglages."


async def test_a_fixed_engine_language_describes_discords_commands_for_everyone(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    settings = discord_settings(tmp_path, discord, fake_llm.url, engine={"language": "fr"})
    async with discord_bot(settings):
        english_client = await discord.interact("help", locale="en-US")
        await discord.wait_until(replied(discord, english_client))
    reset = next(c for c in discord.commands[None] if c["name"] == "reset")
    assert reset["description"] == "Oublier cette conversation"
    assert reset["description_localizations"] == {}
    assert final_reply(discord, english_client).startswith(FRENCH_HELP)


async def test_a_discord_server_message_follows_the_servers_preferred_locale(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    discord.preferred_locale = "fr"
    settings = discord_settings(tmp_path, discord, fake_llm.url, engine={"max_input_chars": 40})
    async with discord_bot(settings):
        question = await discord.post_message(discord.ALICE, LONG, mention_bot=True)
        await discord.wait_until(
            lambda: any(
                FRENCH_TOO_LONG in m.content
                for m in discord.channel_messages(question.channel_id, by_bot=True)
            )
        )


# -- a French voice note -------------------------------------------------------------------

QUESTION = "Bonjour, quelle est la capitale de l'Italie ?"
ANSWER = "La capitale de l'Italie est Rome."


@pytest.mark.speech
async def test_a_french_voice_note_is_heard_in_french_and_answered_in_a_french_voice(
    tmp_path: Path,
    telegram: FakeTelegramAPI,
    fake_llm: FakeLLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if shutil.which("espeak-ng") is None:
        not_installed("espeak-ng is not installed (scripts/setup.sh installs it)")
    fake_llm.behaviour = Behaviour(reply=ANSWER)
    ann = telegram.user(ANN, "Ann", language_code="fr")
    settings = telegram_settings(
        tmp_path,
        telegram,
        fake_llm.url,
        engine={"voice_mode": "reply-to-voice"},
        stt={"model": "base"},  # multilingual Whisper; tiny.en knows English only
        tts={"backends": ["piper", "espeak"]},  # piper's bundled voice is English: passed over
    )
    caplog.set_level(logging.DEBUG, logger="bot.speech.tts")
    async with telegram_bot(settings, speech=True) as bot:
        telegram.send_voice(telegram.private_chat(ann), ann, espeak_voice_note(QUESTION, "fr"))
        await telegram.wait_for(lambda a: a.calls_to("sendVoice", ok=True))
        (upload,) = telegram.calls_to("sendVoice")
        transcriber = bot.app.engine.transcriber
        assert transcriber is not None
        heard_reply = await transcriber.transcribe(
            upload.files["voice"], "audio/ogg", language="fr"
        )
    # Heard in French: the transcript notice (French quotes) and what the model was asked.
    transcript = next(t for t in texts(telegram, ANN) if t.startswith("🎤"))
    assert transcript.startswith("🎤 « ") and transcript.endswith(" »"), transcript
    asked = last_user_text(fake_llm.requests[0]).lower()
    assert "capitale" in asked and "italie" in asked, asked
    system = fake_llm.requests[0]["messages"][0]["content"]
    assert "Réponds en français" in system
    # Answered by the French voice: espeak-ng's "fr", heard back as French words.
    spoke = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speech: ")]
    assert any(line.startswith("speech: espeak (fr) spoke") for line in spoke), spoke
    assert not any(line.startswith("speech: piper") for line in spoke), spoke
    words = heard_reply.lower()
    assert "capitale" in words and "italie" in words, heard_reply
