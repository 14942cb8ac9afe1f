"""The translations: every text Parley says or tells the model, in every shipped language, with
the English text's placeholders; and a template that is up to date with the code."""

from __future__ import annotations

import io
import string

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.pofile import read_po

from bot.catalog import TEMPLATE, po_path, shipped
from bot.catalog_update import entries, new_language, render, template, updated
from bot.messages import Msg
from bot.personas import PERSONAS, persona_text

# Every language Parley ships besides English (the language of the texts themselves).
LANGUAGES = [folder for folder in shipped().values() if folder != "en"]
IDS = [context for context, _, _ in entries()]


def placeholders(text: str) -> list[tuple[str, str, str]]:
    """A text's `{fields}`: name, conversion and format, sorted (their order may change)."""
    return sorted(
        (name, conversion or "", spec or "")
        for _, name, spec, conversion in string.Formatter().parse(text)
        if name is not None
    )


def read(language: str) -> Catalog:
    return read_po(io.StringIO(po_path(language).read_text("utf-8")), locale=language)


def english(context: str) -> tuple[str, ...]:
    value = next(value for found, value, _ in entries() if found == context)
    return value if isinstance(value, tuple) else (value,)


def test_french_is_shipped() -> None:
    assert "fr" in LANGUAGES


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_has_a_translation_with_the_english_placeholders(language: str) -> None:
    catalog = read(language)
    assert catalog.num_plurals >= 1 and catalog.plural_forms
    found: dict[str, Message] = {m.context: m for m in catalog if m.id and m.context}
    problems = []
    for context in IDS:
        source = english(context)
        message = found.get(context)
        if message is None:
            problems.append(f"{context}: missing")
            continue
        if message.fuzzy:
            problems.append(f"{context}: fuzzy (its English changed: check the translation)")
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        if ids != source:
            problems.append(f"{context}: its English is not the code's (run make locales)")
        string = message.string
        forms = [string] if isinstance(string, str) else list(string or [""])
        if len(source) == 2 and len(forms) != catalog.num_plurals:
            problems.append(f"{context}: {len(forms)} counting forms, not {catalog.num_plurals}")
        for form in forms:
            if not form.strip():
                problems.append(f"{context}: not translated")
            elif placeholders(form) != placeholders(source[0]):
                problems.append(f"{context}: {placeholders(form)} != {placeholders(source[0])}")
    assert problems == []
    assert sorted(found) == sorted(IDS)  # nothing left over from removed texts


def test_every_message_and_persona_is_in_the_template() -> None:
    assert IDS[: len(Msg)] == [msg.name for msg in Msg]
    assert {f"PERSONA_{name.upper()}" for name in PERSONAS} <= set(IDS)
    assert len(set(IDS)) == len(IDS)


def test_the_template_and_the_catalogs_are_up_to_date_with_the_code() -> None:
    """A text added or changed in the code without `make locales` fails here."""
    assert TEMPLATE.read_text("utf-8") == render(template())
    for language in LANGUAGES:
        current = po_path(language).read_text("utf-8")
        assert updated(language, current) == current, f"{language}: run make locales"


def test_extraction_is_deterministic() -> None:
    assert render(template()) == render(template())
    assert "POT-Creation-Date: 2026-01-01" in render(template())  # no date of the day
    assert "#:" not in render(template())  # no source locations to drift


def test_a_catalog_merged_with_changed_english_marks_the_translation_to_check() -> None:
    """Here the catalog has an older wording of NOT_ALLOWED_HERE, and lacks DONE."""
    current = po_path("fr").read_text("utf-8")
    edited = current.replace("Sorry, I'm not available here.", "Sorry, not available here.")
    edited = edited.replace('msgctxt "DONE"', 'msgctxt "DONE_BEFORE"')
    merged = read_po(io.StringIO(updated("fr", edited)), locale="fr")
    changed = merged.get("Sorry, I'm not available here.", context="NOT_ALLOWED_HERE")
    assert changed is not None and changed.fuzzy  # said in English until a translator checks it
    assert changed.string == "Désolé, je ne suis pas disponible ici."
    added = merged.get("Done.", context="DONE")  # untranslated, or a guess marked fuzzy
    assert added is not None and (added.fuzzy or not added.string)
    assert merged.get("Done.", context="DONE_BEFORE") is None


def test_a_new_language_starts_with_every_entry_to_translate() -> None:
    started = read_po(io.StringIO(new_language("de")), locale="de")
    assert started.plural_forms == "nplurals=2; plural=(n != 1);"
    assert sorted(str(m.context) for m in started if m.id) == sorted(IDS)
    assert all(not m.string or m.string == ("", "") for m in started if m.id)
    assert updated("de", new_language("de")) == new_language("de")


def test_the_personas_speak_the_language_of_the_turn() -> None:
    assert persona_text("default", "Parley") == (
        "You are Parley, a helpful assistant in a group chat. Answer accurately and clearly. "
        "If you don't know, say so."
    )
    french = persona_text("concise", "Parley", "fr")
    assert french.startswith("Tu es Parley.") and "Réponds en français" in french
    assert persona_text("A custom persona.", "Parley", "fr") == "A custom persona."
