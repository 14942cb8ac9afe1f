"""The language of a turn: the chat's setting, else the user's platform language, else English;
what follows it (Parley's words, /help, the persona, Whisper, the voice, the wake word)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.console import ConsoleChat, console_language
from adapters.discord.voice.wake import wake_word_rest
from bot.app import ParleyApp
from bot.config import EngineSettings, TTSSettings
from bot.languages import normalize, speech_language, turn_language
from tests.conftest import message
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.targets import RecordingTarget

FRENCH_HELP = "Bonjour, je suis Parley. Parlez-moi par écrit ou par message vocal."


@pytest.mark.parametrize(
    ("tag", "normalized"),
    [
        ("fr", "fr"),
        ("fr_FR.UTF-8", "fr-fr"),  # a console's LANG
        ("pt-BR", "pt-br"),  # Discord's locales, Telegram's language codes
        ("en_US@euro", "en-us"),
        ("C.UTF-8", ""),
        ("POSIX", ""),
        ("", ""),
        ("not a language", ""),
    ],
)
def test_platform_language_tags_are_normalized(tag: str, normalized: str) -> None:
    assert normalize(tag) == normalized


def test_the_chat_setting_wins_over_the_user_and_english_is_the_fallback() -> None:
    assert turn_language("auto", "fr-FR") == "fr-fr"
    assert turn_language("en", "fr") == "en"
    assert turn_language("auto", "") == "en"
    assert turn_language("auto", "C") == "en"
    assert speech_language("follow", "fr-ca") == "fr"  # Whisper takes the bare language
    assert speech_language("de", "fr") == "de"
    assert speech_language("auto", "fr") == "auto"


def test_engine_language_is_auto_or_a_language_code() -> None:
    assert EngineSettings().language == "auto"
    assert EngineSettings(language="fr_FR").language == "fr-fr"
    with pytest.raises(ValidationError, match="language code"):
        EngineSettings(language="français!")


def test_each_backend_takes_its_own_voice_of_the_language() -> None:
    tts = TTSSettings(
        voices={"fr": ["fr-FR-HenriNeural", "/voices/fr_FR-siwis.onnx"], "de": "de"},
        edge_voice="en-GB-SoniaNeural",
        espeak_voice="en-us",
    )
    assert tts.voice("edge", "fr-CA") == "fr-FR-HenriNeural"
    assert tts.voice("piper", "fr") == "/voices/fr_FR-siwis.onnx"
    assert tts.voice("espeak", "fr") == "fr"  # espeak-ng knows the language by its code
    assert tts.voice("edge", "de") is None  # no German edge voice: the next backend speaks
    assert tts.voice("espeak", "de") == "de"
    # A language not listed (English here) uses the voices of the settings above.
    assert (tts.voice("edge", "en"), tts.voice("piper", "it"), tts.voice("espeak", "en")) == (
        "en-GB-SoniaNeural",
        "",
        "en-us",
    )
    assert TTSSettings().voice("edge", "fr") == "fr-FR-DeniseNeural"  # French out of the box
    assert TTSSettings().voice("piper", "fr") is None  # the bundled voice speaks English only
    with pytest.raises(ValidationError, match="at most one voice per backend"):
        TTSSettings(voices={"fr": ["fr", "fr-be"]})
    with pytest.raises(ValidationError, match="not a language code"):
        TTSSettings(voices={"French!": "fr"})


@pytest.mark.parametrize(
    ("heard", "language", "rest"),
    [
        # Whisper base's spellings of espeak-ng's French "Parley" (measured), and people's.
        ("Parler, quelle heure est-il ?", "fr", "quelle heure est-il ?"),
        (
            "Par le, quelle est la capitale de la France ?",
            "fr",
            "quelle est la capitale de la France ?",
        ),
        ("Et par les, raconte-moi une blague.", "fr", "raconte-moi une blague."),
        ("Salut Parlé, ça va ?", "fr", "ça va ?"),
        ("Parlez.", "fr", ""),
        ("Quelle heure est-il, Parley ?", "fr", None),
        ("Bonjour tout le monde.", "fr", None),
        # English keeps its own rules: no greeting "salut", no name split in two.
        ("Salut Parley, hi.", "en", None),
        ("Par le way, hello.", "en", None),
        ("Hey Parley, tell me a story.", "en", "tell me a story."),
        # A language detected by Whisper ("auto") or without rules of its own: all of them.
        ("Salut Parley, ça va ?", "auto", "ça va ?"),
    ],
)
def test_the_wake_word_is_matched_in_the_spellings_of_the_language(
    heard: str, language: str, rest: str | None
) -> None:
    assert wake_word_rest(heard, "Parley", language) == rest


def test_the_console_reads_its_language_from_the_locale_variables() -> None:
    assert console_language({"LANG": "fr_FR.UTF-8"}) == "fr_FR.UTF-8"
    assert console_language({"LANG": "fr_FR.UTF-8", "LC_ALL": "de_DE.UTF-8"}) == "de_DE.UTF-8"
    assert console_language({}) == ""


# -- through the engine and the commands ---------------------------------------------------


async def test_a_french_user_gets_french_help_and_the_chat_setting_overrides_it(
    app: ParleyApp,
) -> None:
    french = message(language="fr-FR")
    assert (await app.commands.run(french, "help")).startswith(FRENCH_HELP)
    assert "/reset — oublier cette conversation" in await app.commands.run(french, "help")
    assert (await app.commands.run(message(), "help")).startswith("Hi, I'm Parley.")
    admin = message(language="fr", is_admin=True)
    changed = await app.commands.run(admin, "config", "set language en")
    assert changed == "language is now en (was auto). It applies from the next message."
    assert (await app.commands.run(french, "help")).startswith("Hi, I'm Parley.")
    # Said in the chat's new language.
    changed = await app.commands.run(message(is_admin=True), "config", "set language fr")
    assert changed.startswith("language vaut maintenant fr (avant : en).")
    assert (await app.commands.run(message(language="en"), "config")).startswith(
        "Réglages de ce chat :"
    )


async def test_the_language_setting_takes_codes_and_says_when_one_is_untranslated(
    app: ParleyApp,
) -> None:
    admin = message(is_admin=True)
    refused = await app.commands.run(admin, "config", "set language klingon!")
    assert refused.startswith("Can't set language: 'klingon!' is not a language code")
    german = await app.commands.run(admin, "config", "set language de")
    assert german.splitlines() == [
        "language is now de (was auto). It applies from the next message.",
        "My own messages are not translated into de yet: they stay in English.",
    ]
    assert "stt_language is now follow" in await app.commands.run(
        admin, "config", "set stt_language follow"
    )


async def test_a_turn_speaks_the_users_language_to_them_and_tells_the_model(
    app: ParleyApp, fake_llm: FakeLLMServer
) -> None:
    target = RecordingTarget()
    await app.engine.handle(message("x" * 5000, language="fr"), target)
    assert target.notices == [
        "Votre message est trop long (5000 caractères ; la limite est de 4000). "
        "Raccourcissez-le, s'il vous plaît."
    ]
    await app.engine.handle(message("Bonjour !", language="fr"), RecordingTarget())
    system = fake_llm.requests[-1]["messages"][0]["content"]
    assert system.startswith("Tu es Parley,") and "Réponds en français" in system
    await app.engine.handle(message("Hello!", user="u2", channel="c2"), RecordingTarget())
    assert fake_llm.requests[-1]["messages"][0]["content"].startswith("You are Parley,")


async def test_the_queue_notice_is_said_in_the_language_of_each_waiting_turn(
    app: ParleyApp, fake_llm: FakeLLMServer
) -> None:
    release = asyncio.Event()

    async def hold(body: dict[str, Any]) -> None:
        await release.wait()

    fake_llm.behaviour = Behaviour(reply="ok", pause=hold)
    app.engine.queue.resize(1)
    first, second = RecordingTarget(), RecordingTarget()
    busy = asyncio.create_task(app.engine.handle(message("one", channel="a"), first))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(
        app.engine.handle(message("deux", channel="b", language="fr"), second)
    )
    while not second.positions:
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(busy, waiting)
    assert second.position_languages[0] == "fr"


async def test_the_console_speaks_the_terminals_language(
    app: ParleyApp, fake_llm: FakeLLMServer
) -> None:
    out = io.StringIO()
    chat = ConsoleChat(
        app.services,
        stdin=io.StringIO("/help\n" + "x" * 5000 + "\n"),
        stdout=out,
        environ={"LANG": "fr_FR.UTF-8"},
    )
    await chat.run()
    assert FRENCH_HELP in out.getvalue()
    assert "Votre message est trop long (5000 caractères" in out.getvalue()
