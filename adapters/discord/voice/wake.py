"""The wake word: an utterance is for the bot when it starts with its name, as Whisper spells it.

Whisper writes a name it does not know with the words of the language it transcribes: in
English "Parley" came back as "Parlay", "Parlee", "Harley"; in French (espeak-ng's and people's
"Parley" through Whisper base) as "Parler", "Parlez", "Parlé", "Parle" and, in two words, "par
le", "par les". So the name is compared without accents to the first word(s) after an optional
greeting of that language, and where Whisper splits it ("fr"), to two words joined.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass

from bot.languages import primary


@dataclass(frozen=True, slots=True)
class WakeRules:
    """How one language's transcripts start when they address the bot."""

    greetings: frozenset[str]  # words before the name that still count as "starting with it"
    split_name: bool = False  # Whisper may write the name as two words ("par le")


# Greetings as Whisper writes them, without accents ("Hé" often comes back as "Et" in French).
RULES: dict[str, WakeRules] = {
    "en": WakeRules(frozenset({"hey", "hi", "hello", "ok", "okay", "oh", "so"})),
    "fr": WakeRules(
        frozenset(
            {"he", "eh", "et", "hey", "salut", "bonjour", "coucou", "dis", "ok", "okay", "oh"}
            | {"allo", "alors"}
        ),
        split_name=True,
    ),
}
# A language without rules of its own (or "auto": whichever Whisper detected) gets them all.
_ANY = WakeRules(frozenset().union(*(r.greetings for r in RULES.values())), split_name=True)
# A word this similar to the name (difflib's ratio, 0..1) is the name.
SIMILARITY = 0.7
_WORD = re.compile(r"[\w']+")
_TRIM = " ,.!?;:-—…"


def wake_word_rest(text: str, name: str, language: str = "en") -> str | None:
    """What follows the bot's `name` at the start of `text` (transcribed in `language`), or
    None if it does not start so.

    "Hey Parley, what time is it?" -> "what time is it?"; "Parley." -> ""; in French
    "Salut, par le, quelle heure est-il ?" -> "quelle heure est-il ?".
    """
    wanted = [_fold(word) for word in _WORD.findall(name)]
    if not wanted:
        return None
    rules = RULES.get(primary(language), _ANY)
    words = list(_WORD.finditer(text))
    start = 1 if words and _fold(words[0][0]) in rules.greetings else 0
    spans = [len(wanted), len(wanted) + 1] if rules.split_name else [len(wanted)]
    for span in spans:
        candidate = words[start : start + span]
        if len(candidate) < span:
            continue
        heard = [_fold(word[0]) for word in candidate]
        joiner = " " if span == len(wanted) else ""  # a split name is compared joined
        similarity = difflib.SequenceMatcher(None, joiner.join(heard), joiner.join(wanted))
        if similarity.ratio() >= SIMILARITY:
            return text[candidate[-1].end() :].lstrip(_TRIM).strip()
    return None


def _fold(word: str) -> str:
    """Lowercase, without accents: "Parlé" -> "parle"."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))
