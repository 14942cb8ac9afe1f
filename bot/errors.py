"""Typed exceptions, caught where they can be handled."""

from __future__ import annotations

from typing import Literal


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """The configuration is invalid; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# What kind of storage failure, so the user and /healthz hear a reason and logs say it once.
StorageProblem = Literal["full", "read_only", "io", "busy", "unavailable", "error"]


class StorageError(ParleyError):
    """The database cannot be used (newer than this code, full, unreachable...): see `problem`."""

    def __init__(self, message: str, *, problem: StorageProblem = "error") -> None:
        super().__init__(message)
        self.problem: StorageProblem = problem


def storage_trouble(problem: StorageProblem) -> str:
    """What is wrong with the storage, in words for a user."""
    if problem == "full":
        return "the server's storage is full"
    if problem == "read_only":
        return "the server's storage is read-only"
    return "the server's storage is not working right now"


class MessageNotStored(ParleyError):
    """The user's message could not be stored, so it was not answered; tell them `user_message`.

    An adapter whose platform redelivers (Telegram polling) may instead leave the update
    unconfirmed and try again; the others tell the user at once.
    """

    def __init__(self, cause: StorageError) -> None:
        super().__init__(str(cause))
        self.problem: StorageProblem = cause.problem
        trouble = storage_trouble(cause.problem)
        self.user_message = f"I couldn't save your message: {trouble}; please try again later."


class RetryAfter(ParleyError):
    """A platform said 429: wait `retry_after` seconds (for every chat when `is_global`)."""

    def __init__(self, retry_after: float, *, is_global: bool = False) -> None:
        super().__init__(f"rate limited, retry after {retry_after:.2f}s")
        self.retry_after = retry_after
        self.is_global = is_global


# Why a platform refused a call, so callers act on a code rather than the platform's wording.
DeliveryReason = Literal[
    "forbidden",  # the bot may not write here (blocked by the user, kicked, no permission)
    "not_found",  # the chat or the message is gone
    "too_old",  # the message can no longer be edited
    "too_large",  # the text or file is over the platform's limit
    "token_expired",  # a Discord interaction token outlived its 15 minutes
    "bad_request",  # anything else the platform refused as malformed
    "unknown",  # a refusal the adapter could not classify
]


class DeliveryError(ParleyError):
    """A platform refused a send/edit for good; `reason` says why, as a code."""

    def __init__(self, message: str, *, reason: DeliveryReason = "unknown") -> None:
        super().__init__(message)
        self.reason: DeliveryReason = reason


class LLMError(ParleyError):
    """Base of LLM backend failures."""


class LLMUnavailable(LLMError):
    """No backend could be reached (all down, or all answered 5xx) before the first token."""


class LLMRequestRejected(LLMError):
    """The backend answered 4xx (e.g. the prompt exceeds the context): retrying will not help."""


class LLMStreamBroken(LLMError):
    """The stream stopped after some tokens arrived: what came is kept as a partial reply."""


class LLMTimeout(LLMError):
    """The backend accepted the request but did not answer within `llm.timeout_s`."""


class AudioError(ParleyError):
    """A voice note or audio file cannot be used; `user_message` says why, for the user."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class AudioTooLarge(AudioError):
    """The file is over `stt.max_bytes` (or the platform's download limit)."""


class AudioTooLong(AudioError):
    """The audio lasts longer than `stt.max_seconds`."""


class AudioUndecodable(AudioError):
    """The bytes are empty, corrupt, or not audio."""


class NoSpeech(AudioError):
    """The audio decoded but nobody speaks in it."""


class SpeechSynthesisError(ParleyError):
    """Every TTS backend failed; the reply goes out as text."""
