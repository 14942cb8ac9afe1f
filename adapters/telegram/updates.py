"""Updates python-telegram-bot cannot decode are dropped one by one, not retried forever.

PTB decodes a getUpdates batch in one go. If one update in it fails to decode, the whole batch
fails, the offset is not confirmed and the updater fetches the same batch again at once: the
bot answers nobody and spins. A webhook POST that fails to decode gets a 500, which Telegram
redelivers. And PTB decodes without checking types: an update whose chat id is, say, a JSON
object decodes fine, but after a handler ran, PTB puts that id in a set and the TypeError ends
its update loop for good. `decodable` checks one update and swaps one that fails either way for
a bare `{"update_id": N}`; PTB confirms that like any other update and no handler acts on it.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.request import HTTPXRequest

log = logging.getLogger(__name__)

# What decoding untrusted JSON into PTB objects raises: missing keys, wrong types, dates out of
# range (OverflowError, OSError from the C time functions), impossible enum or int values.
DECODE_ERRORS = (
    AttributeError,
    IndexError,
    KeyError,
    OSError,
    OverflowError,
    TypeError,
    ValueError,
)


def decodable(raw: Any) -> dict[str, Any] | None:
    """`raw` if PTB can decode it, a bare update with its id if not, None without a usable id."""
    update_id = raw.get("update_id") if isinstance(raw, dict) else None
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        log.warning("Telegram: dropped an update without an update_id")
        return None
    try:
        update = Update.de_json(raw, None)
    except DECODE_ERRORS as exc:
        problem = repr(exc)
    else:
        if _ids_are_ints(update):
            return raw
        problem = "a chat, user or message id is not an integer"
    # The content is the user's; only the id and what went wrong are logged.
    log.warning("Telegram: update %d cannot be read, skipped (%s)", update_id, problem)
    return {"update_id": update_id}


def _ids_are_ints(update: Update) -> bool:
    """PTB keeps chat and user ids in sets: anything but an int may not even be hashable."""
    message = update.effective_message
    ids = [
        update.effective_chat.id if update.effective_chat else 0,
        update.effective_user.id if update.effective_user else 0,
        message.message_id if message else 0,
    ]
    return all(type(value) is int for value in ids)


class TolerantUpdatesRequest(HTTPXRequest):
    """The getUpdates HTTP client: each update of a batch is checked with `decodable`."""

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        """Decode the response, then replace updates PTB would fail on."""
        data = HTTPXRequest.parse_json_payload(payload)
        updates = data.get("result") if data.get("ok") else None
        if isinstance(updates, list):
            data["result"] = [u for u in map(decodable, updates) if u is not None]
        return data
