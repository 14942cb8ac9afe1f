"""Whether a transcript reads as a whole sentence: an early answer is heard at once after one.

Whisper ends whatever it hears with a full stop ("tell me a story about."), so punctuation alone
cannot tell a finished sentence from a thought cut by a pause: a last word a sentence of that
language does not end on (an article, a preposition, a conjunction, a filler) marks it open.
A question may end on a preposition ("what is it about?"): taking it for an open thought only
waits for `voice_pause_ms`, while the other mistake speaks over the speaker.
"""

from __future__ import annotations

import re

from bot.languages import primary

_OPEN_WORDS = {
    "en": (
        "a an the my your our their every "
        "about above across after against along among around as at before behind below between "
        "by during for from in into like near of off on onto out over past since than through to "
        "toward towards under until upon via with within without "
        "and but or nor so yet because if unless while whereas although though whether "
        "um uh er erm"
    ),
    "fr": (
        "le la les l' un une des du de d' au aux mon ma mes ton ta tes son sa ses notre nos "
        "votre vos leur leurs ce cet cette ces "
        "à a avec chez dans depuis derrière devant en entre par pour sans sous sur vers "
        "et ou mais donc or ni car que qu' qui si parce quand comme lorsque puisque "
        "euh ben bah hum"
    ),
}
OPEN_ENDINGS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split()) for lang, words in _OPEN_WORDS.items()
}
# A language without a list of its own (or "auto": whichever Whisper detected) gets them all.
_ANY = frozenset().union(*OPEN_ENDINGS.values())
_WORD = re.compile(r"[\w']+")


def sounds_finished(text: str, language: str = "en") -> bool:
    """Whether `text` reads as a whole sentence or question: it ends with ".", "!" or "?" (not
    "..."), and not on a word that leaves the thought open in `language`."""
    stripped = text.rstrip(" \"'”’)»")
    if not stripped.endswith((".", "!", "?")) or stripped.endswith(("..", "…")):
        return False
    words = _WORD.findall(stripped)
    return bool(words) and words[-1].lower() not in OPEN_ENDINGS.get(primary(language), _ANY)
