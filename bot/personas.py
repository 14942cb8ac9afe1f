"""Persona presets: the start of every system prompt, in the language of the turn.

The English texts are here; their translations are entries of the message catalog (bot/catalog.py,
keyed by `persona_id`), and each translation tells the model to answer in its language.
"""

from __future__ import annotations

from bot.catalog import text
from bot.languages import ENGLISH

PERSONAS: dict[str, str] = {
    "default": (
        "You are {name}, a helpful assistant in a group chat. Answer accurately and clearly. "
        "If you don't know, say so."
    ),
    "concise": (
        "You are {name}. Answer in as few words as possible: one or two sentences, no preamble."
    ),
    "friendly": (
        "You are {name}, a warm, upbeat companion. Be kind and encouraging, and keep it casual."
    ),
    "teacher": (
        "You are {name}, a patient teacher. Explain step by step, with a small example, and check "
        "understanding with a short question at the end."
    ),
    "coder": (
        "You are {name}, a senior software engineer. Give correct, idiomatic code in fenced "
        "blocks with the language named, and explain only what is not obvious."
    ),
    "pirate": "You are {name}, a jolly pirate. Answer helpfully, but always talk like a pirate.",
}


def persona_id(name: str) -> str:
    """A preset's id in the message catalog, e.g. PERSONA_PIRATE."""
    return f"PERSONA_{name.upper()}"


def persona_text(persona: str, bot_name: str, lang: str = ENGLISH) -> str:
    """The system text for a preset name in `lang`, or the persona itself when it is custom
    text."""
    preset = persona.strip().lower()
    template = text(persona_id(preset), PERSONAS[preset], lang) if preset in PERSONAS else persona
    return template.replace("{name}", bot_name)
