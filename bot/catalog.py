"""Translations of Parley's texts: gettext catalogs (`bot/locale/<lang>/LC_MESSAGES/parley.po`).

Each entry's msgctxt is its id (a `Msg` name, a persona's), its msgid the English text. The
.po files are read with Babel when a language is first asked for and compiled in memory, so
there is no compiled file to go stale; an entry without a translation (or a fuzzy one) falls
back to English, as a language without a catalog does. `python -m bot.catalog_update` (`make
locales`) writes the template (parley.pot) from the code and merges it into each language.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
from pathlib import Path

from bot.languages import ENGLISH, candidates

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "parley"
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"


def po_path(language: str) -> Path:
    """Where `language`'s catalog lives (its folder named as gettext does: fr, pt_BR)."""
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def shipped() -> dict[str, str]:
    """The languages with a catalog, by normalized tag ("pt-br") -> folder name ("pt_BR");
    English, the language of the texts themselves, first."""
    found = {ENGLISH: ENGLISH}
    for po in sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        folder = po.parent.parent.name
        found[folder.replace("_", "-").lower()] = folder
    return found


@functools.lru_cache(maxsize=1024)  # every say() asks; the platforms' tags are few
def catalog_language(tag: str) -> str:
    """The shipped language that serves `tag` ("fr-ca" -> "fr"); English when none does."""
    languages = shipped()
    return next((found for found in candidates(tag) if found in languages), ENGLISH)


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled catalog of a shipped language (`catalog_language`); English passes through."""
    if language == ENGLISH or language not in shipped():
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    path = po_path(shipped()[language])
    with path.open("rb") as po:
        catalog = read_po(po, locale=shipped()[language], domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)  # fuzzy entries are left out: they fall back to English
    compiled.seek(0)
    log.debug("catalog %s loaded (%d entries)", path, len(catalog))
    return gettext.GNUTranslations(compiled)


def load_translations() -> None:
    """Read every shipped catalog now (blocking: run it in a thread), not at its first use."""
    for language in shipped():
        translations(language)


def text(context: str, english: str, language: str) -> str:
    """The entry `context` in `language` (a tag), or its English text."""
    return translations(catalog_language(language)).pgettext(context, english)


def counted(context: str, one: str, other: str, count: int, language: str) -> str:
    """The counting entry `context` in `language`, in the form its plural rule gives `count`."""
    return translations(catalog_language(language)).npgettext(context, one, other, count)
