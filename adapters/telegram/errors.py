"""python-telegram-bot's errors translated into the ones the core handles, with reason codes.

Telegram tells refusals apart only by their description text, so the matching lives here and
nowhere else: callers read `DeliveryError.reason`.
"""

from __future__ import annotations

import contextlib
import datetime as dtm
import warnings
from collections.abc import Iterator

import telegram.error
from telegram.warnings import PTBDeprecationWarning

from bot.errors import DeliveryError, DeliveryReason, RetryAfter

# Fragments of Telegram's error descriptions (Bot API answers carry no error codes beyond HTTP).
_NOT_MODIFIED = "not modified"
_REASONS: tuple[tuple[str, DeliveryReason], ...] = (
    ("not found", "not_found"),  # "message to edit not found", "chat not found"
    ("can't be edited", "too_old"),
    ("too long", "too_large"),  # "message is too long"
    ("too big", "too_large"),  # "file is too big"
)


def retry_after_seconds(exc: telegram.error.RetryAfter) -> float:
    """The wait PTB parsed from `parameters.retry_after`, in seconds."""
    with warnings.catch_warnings():
        # An int unless PTB_TIMEDELTA is set; PTB warns that it will become a timedelta.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def is_not_modified(exc: telegram.error.TelegramError) -> bool:
    """Telegram's answer to an edit that changes nothing: the message already shows the text."""
    return isinstance(exc, telegram.error.BadRequest) and _NOT_MODIFIED in exc.message.lower()


def reason_of(exc: telegram.error.TelegramError) -> DeliveryReason:
    """The reason code of a refusal."""
    if isinstance(exc, telegram.error.Forbidden):
        return "forbidden"  # blocked by the user, kicked from the group
    if isinstance(exc, telegram.error.ChatMigrated):
        return "not_found"  # the group became a supergroup under another id
    if isinstance(exc, telegram.error.BadRequest):
        text = exc.message.lower()
        return next((reason for fragment, reason in _REASONS if fragment in text), "bad_request")
    return "unknown"


def is_gone(exc: telegram.error.TelegramError) -> bool:
    """The message to edit or delete no longer exists."""
    return isinstance(exc, telegram.error.BadRequest) and reason_of(exc) == "not_found"


@contextlib.contextmanager
def delivery_errors() -> Iterator[None]:
    """Translate PTB's errors into the ones the reply streamer handles.

    429 -> `RetryAfter`; a refusal (bad request, forbidden, chat gone) -> `DeliveryError` with its
    reason; a network failure or timeout -> `ConnectionError`, an `OSError` the streamer retries.
    """
    try:
        yield
    except telegram.error.RetryAfter as exc:
        raise RetryAfter(retry_after_seconds(exc)) from exc
    except telegram.error.BadRequest as exc:
        message = f"Telegram refused the request: {exc.message}"
        raise DeliveryError(message, reason=reason_of(exc)) from exc
    except telegram.error.NetworkError as exc:  # TimedOut too; BadRequest is caught above
        raise ConnectionError(f"Telegram unreachable: {exc.message}") from exc
    except telegram.error.TelegramError as exc:  # Forbidden, ChatMigrated, InvalidToken, ...
        message = f"Telegram refused the request: {exc.message}"
        raise DeliveryError(message, reason=reason_of(exc)) from exc
