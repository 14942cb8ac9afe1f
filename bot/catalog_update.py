"""Write the message catalog's template from the code and merge it into every language.

`python -m bot.catalog_update` (`make locales`): bot/locale/parley.pot gets every text Parley
says or tells the model (the `Msg` catalog, the persona presets, a base model's example turns),
each with its id as msgctxt and its English text as msgid; each bot/locale/<lang>/LC_MESSAGES/
parley.po gets the new entries (untranslated), loses the removed ones, and has an entry whose
English changed marked fuzzy (English is said until a translator checks it). The output depends
only on the code and the .po files: no dates, no line numbers.
`python -m bot.catalog_update --init LANG` starts a new language's catalog.
"""

from __future__ import annotations

import argparse
import datetime
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from bot.catalog import DOMAIN, TEMPLATE, po_path, shipped
from bot.languages import ENGLISH
from bot.messages import Msg
from bot.personas import PERSONAS, persona_id
from bot.prompt import PLAIN_EXAMPLES, USER_LABEL

PROJECT = "Parley"
WIDTH = 100  # the repository's line length
# A fixed date in the header: the files change only when their entries do.
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
HEADER = (
    "# Parley's texts: what it says to users, and what it tells the model.\n"
    "# Written by `make locales` (python -m bot.catalog_update); see docs/languages.md.\n"
    "#"
)
MODEL_NOTE = "Said to the model, not shown to users: {what}."

Entry = tuple[str, str | tuple[str, str], str]  # id, English (one or two counting forms), note


def entries() -> Iterator[Entry]:
    """Every translatable text, in a fixed order: messages, personas, example turns."""
    for msg in Msg:
        note = "Counting forms: {count} chooses." if isinstance(msg.value, tuple) else ""
        yield msg.name, msg.value, note
    for name, english in PERSONAS.items():
        what = f"the {name!r} persona's instructions ({{name}} is the bot's name); ask the model "
        what += "to answer in this language"
        yield persona_id(name), english, MODEL_NOTE.format(what=what)
    for example, question, answer in PLAIN_EXAMPLES:
        yield f"{example}_QUESTION", question, MODEL_NOTE.format(what="an example question")
        yield f"{example}_ANSWER", answer, MODEL_NOTE.format(what="the example's answer")
    yield *USER_LABEL, MODEL_NOTE.format(what="the user's label in a base model's transcript")


def template() -> Catalog:
    """The template: every entry, untranslated."""
    catalog = _catalog(None)
    for context, english, note in entries():
        catalog.add(english, context=context, auto_comments=[note] if note else [])
    return catalog


def render(catalog: Catalog) -> str:
    """A catalog as .po text, the same for the same entries (whichever Babel wrote it)."""
    out = io.BytesIO()
    write_po(out, catalog, width=WIDTH, no_location=True, ignore_obsolete=True)
    lines = out.getvalue().decode("utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith('"Generated-By: '))


def updated(language: str, source: str) -> str:
    """`source` (a language's .po text) merged with the current template."""
    catalog = read_po(io.StringIO(source), locale=language, domain=DOMAIN)
    catalog.update(template(), update_creation_date=False)
    return render(catalog)


def new_language(language: str) -> str:
    """A new language's .po text: every entry, none translated yet."""
    catalog = _catalog(language)
    for message in template():
        if message.id:
            catalog.add(message.id, context=message.context, auto_comments=message.auto_comments)
    return render(catalog)


def _catalog(language: str | None) -> Catalog:
    return Catalog(
        locale=language,
        domain=DOMAIN,
        header_comment=HEADER,
        project=PROJECT,
        version="1",
        creation_date=EPOCH,
        revision_date=EPOCH,
        charset="utf-8",
        fuzzy=False,
    )


def write_all() -> list[Path]:
    """Rewrite the template and every language's catalog; the files that changed."""
    changed = []
    outputs = {TEMPLATE: render(template())}
    for folder in shipped().values():
        if folder != ENGLISH:
            path = po_path(folder)
            outputs[path] = updated(folder, path.read_text("utf-8"))
    for path, content in outputs.items():
        if not path.is_file() or path.read_text("utf-8") != content:
            path.write_text(content, "utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Update the catalogs, or start one for a new language (--init LANG)."""
    parser = argparse.ArgumentParser(prog="python -m bot.catalog_update", description=__doc__)
    parser.add_argument("--init", metavar="LANG", help="start a catalog for LANG (e.g. de, pt_BR)")
    args = parser.parse_args(argv)
    if args.init:
        path = po_path(args.init)
        if path.exists():
            print(f"{path} exists already", file=sys.stderr)
            return 1
        path.parent.mkdir(parents=True)
        path.write_text(new_language(args.init), "utf-8")
        shipped.cache_clear()
        print(f"wrote {path}: translate its msgstr lines")
    for path in write_all():
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
