"""Named conversations of a chat (/session): their names and the Markdown export."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.languages import ENGLISH
from bot.messages import Msg, say
from bot.types import OutgoingFile

if TYPE_CHECKING:
    from bot.storage import StoredMessage

# Names are typed as one word after /session resume.
SESSION_NAME = re.compile(r"^[\w.-]{1,40}$")
AUTO_NAME = "session-{n}"  # /session new without a name
# An export holds at most this many of the newest messages, and stays under this size: within
# every platform's upload limit (Discord: 10 MiB for a bot in a server without boosts; Telegram's
# sendDocument: 50 MB).
EXPORT_MAX_MESSAGES = 5000
EXPORT_MAX_BYTES = 8 * 1024 * 1024
EXPORT_MIME = "text/markdown"


# Characters that can start or end Markdown formatting inside a line (CommonMark lets any ASCII
# punctuation be escaped with a backslash; these are the ones that change what follows them).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>~|#&!])")


def markdown_text(text: str) -> str:
    """`text` as literal Markdown on one line: line breaks become spaces, formatting characters
    are escaped, so a name cannot end the bold around it or start a heading."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def normalise_name(raw: str) -> str | None:
    """A session name as stored (lowercase), or None if it cannot be one."""
    name = raw.strip().lower()
    return name if SESSION_NAME.match(name) else None


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def export_markdown(
    rows: Sequence[StoredMessage],
    *,
    session: str,
    chat: str,
    bot_name: str,
    now: float | None = None,
    lang: str = ENGLISH,
) -> OutgoingFile:
    """A conversation as a Markdown document (its headings in `lang`), its newest messages kept
    under EXPORT_MAX_BYTES.

    CPU work for a long conversation: call it in a worker thread.
    """
    now = time.time() if now is None else now
    blocks: list[str] = []
    size = 0
    for row in reversed(rows):  # newest first, so a cut drops the oldest
        name = bot_name if row.role == "assistant" else row.author_name
        author = markdown_text(name) or say(Msg.EXPORT_USER, lang=lang)
        status = "" if row.status == "complete" else f" · {row.status}"
        block = f"**{author}** · {_when(row.created_at)}{status}\n\n{row.content}\n"
        size += len(block.encode()) + 1
        if size > EXPORT_MAX_BYTES:
            break
        blocks.append(block)
    blocks.reverse()
    left_out = len(rows) - len(blocks)
    head = [
        say(
            Msg.EXPORT_TITLE,
            lang=lang,
            bot_name=markdown_text(bot_name),
            session=markdown_text(session),
        ),
        "",
        say(
            Msg.EXPORT_ABOUT,
            lang=lang,
            chat=markdown_text(chat),
            when=_when(now),
            messages=len(blocks),
        ),
        "",
    ]
    if left_out:
        head += [say(Msg.EXPORT_LEFT_OUT, lang=lang, messages=left_out), ""]
    text = "\n".join(head) + "\n" + "\n".join(blocks)
    day = time.strftime("%Y%m%d", time.gmtime(now))
    prefix = re.sub(r"[^\w.-]+", "-", bot_name.lower()).strip("-.") or "chat"
    return OutgoingFile(
        name=f"{prefix}-{session}-{day}.md",
        data=text.encode(),
        mime=EXPORT_MIME,
        caption=say(Msg.EXPORT_CAPTION, lang=lang, session=session, messages=len(blocks)),
    )
