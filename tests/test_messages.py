"""The message catalog: every sentence Parley says is one id with an English text."""

from __future__ import annotations

import ast
import string
from pathlib import Path
from typing import Any

import pytest

from bot.errors import MessageNotStored, StorageError
from bot.messages import COUNT, Msg, phrase, queue_text, say

ROOT = Path(__file__).resolve().parent.parent


def fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def texts(msg: Msg) -> tuple[str, ...]:
    value = msg.value
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("msg", list(Msg), ids=lambda m: m.name)
def test_every_message_says_itself_with_its_fields(msg: Msg) -> None:
    names = set().union(*(fields_of(text) for text in texts(msg)))
    fields: dict[str, Any] = dict.fromkeys(names, 1)
    said = say(msg, **fields)
    assert said and "{" not in said.replace("{'", "")
    if isinstance(msg.value, tuple):
        one, other = msg.value
        assert fields_of(one) == fields_of(other) and COUNT in fields_of(one)


def test_a_counting_message_picks_its_form() -> None:
    assert say(Msg.FACTS, count=1) == "1 fact"
    assert say(Msg.FACTS, count=3) == "3 facts"
    assert say(Msg.MESSAGES, count=0) == "0 messages"


def test_a_phrase_is_said_later_with_its_nested_messages() -> None:
    too_long = phrase(
        Msg.AUDIO_TOO_LONG,
        length=phrase(Msg.SECONDS, count=8),
        limit=phrase(Msg.MINUTES, count=1),
    )
    assert say(too_long) == "That recording is too long (8 seconds): I transcribe up to 1 minute."
    not_stored = MessageNotStored(StorageError("disk", problem="full"))
    assert not_stored.user_message == (
        "I couldn't save your message: the server's storage is full; please try again later."
    )
    assert say(Msg.UNREADABLE, kind=Msg.KIND_STICKERS).endswith("can't open stickers yet.")


def test_a_language_is_said_from_its_catalog_and_any_other_gets_english() -> None:
    assert say(Msg.DONE) == say(Msg.DONE, lang="de") == say(Msg.DONE, lang="") == "Done."
    assert say(Msg.DONE, lang="fr") == say(Msg.DONE, lang="fr-CA") == "C'est fait."
    # French counts 0 and 1 alike (gettext's plural rule for fr: n > 1).
    assert say(Msg.FACTS, lang="fr", count=0) == "0 fait"
    assert say(Msg.FACTS, lang="fr", count=2) == "2 faits"
    assert say(Msg.MESSAGES, lang="en", count=0) == "0 messages"
    nested = phrase(Msg.FORGET_DONE_FACTS, deleted=3, facts=phrase(Msg.FACTS, count=2))
    assert say(nested, lang="fr").endswith("les 2 faits que vous m'aviez demandé de retenir.")
    assert queue_text(2, 3, "fr").startswith("⏳ Vous êtes n° 2 dans la file (3 messages")


def test_queue_notices() -> None:
    assert queue_text(1, 1).startswith("⏳ You're #1 in line")
    assert "(3 messages waiting)" in queue_text(2, 3)


def test_the_core_and_the_adapters_keep_no_sentences_of_their_own() -> None:
    """No `MSG_*` constant is left outside the catalog (operator-facing errors aside)."""
    operators = {"MSG_INTENT_REFUSED", "MSG_TOKEN_REFUSED"}  # `parley` start-up errors
    found = []
    for folder in ("bot", "adapters"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        name = getattr(target, "id", "")
                        if name.startswith("MSG_") and name not in operators:
                            found.append(f"{path.relative_to(ROOT)}: {name}")
    assert found == []
