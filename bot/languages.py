"""The language of a turn: the chat's `language` setting unless "auto", else the user's own.

Platforms name languages their own way (Telegram "pt-br", Discord "en-US", a console's LANG
"fr_FR.UTF-8"): `normalize` turns each into one lowercase tag ("pt-br", "en-us", "fr-fr"), and
the catalog, the voices and Whisper each take the most specific part they know of it.
"""

from __future__ import annotations

import re

ENGLISH = "en"  # the language of Parley's own texts, and what an unknown language gets
AUTO = "auto"  # the `language` setting that follows each user's platform language
FOLLOW = "follow"  # the `stt_language` setting that follows the language of the turn
# A language tag as the settings take it: "fr", "pt-BR", "zh_Hant" (BCP 47 / POSIX shapes).
_TAG = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")
_POSIX_NEUTRAL = ("c", "posix")  # LANG values that name no language


def normalize(tag: str) -> str:
    """`tag` as a lowercase BCP 47-like tag ("fr_FR.UTF-8" -> "fr-fr"); "" when it is none."""
    # A POSIX locale: language_TERRITORY.codeset@modifier.
    value = tag.strip().split(".", 1)[0].split("@", 1)[0].replace("_", "-").lower()
    if value in _POSIX_NEUTRAL or not _TAG.match(value):
        return ""
    return value


def is_setting(value: str) -> bool:
    """Whether `value` is a valid `language` setting: "auto" or a language tag."""
    return value == AUTO or bool(normalize(value))


def turn_language(setting: str, user: str) -> str:
    """The language to speak in: `setting` (the chat's, else `engine.language`) unless it is
    "auto", else the user's platform language; English when neither names one."""
    chosen = user if setting in (AUTO, "") else setting
    return normalize(chosen) or ENGLISH


def primary(tag: str) -> str:
    """The language without its region or script: "pt-br" -> "pt"."""
    return normalize(tag).split("-", 1)[0]


def candidates(tag: str) -> list[str]:
    """What to look a language up by, most specific first: "zh-hant-tw" -> zh-hant-tw, zh-hant,
    zh."""
    parts = normalize(tag).split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1) if parts[0]]


def speech_language(setting: str, lang: str) -> str:
    """Whisper's language for a turn in `lang`: the chat's `stt_language`, which by default
    ("follow") is the turn's language."""
    return primary(lang) if setting == FOLLOW else setting
