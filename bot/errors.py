"""Typed exceptions, caught where they can be handled."""

from __future__ import annotations

from typing import Literal

from bot.messages import Msg, Phrase, phrase, say


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


_TROUBLES: dict[StorageProblem, Msg] = {
    "full": Msg.STORAGE_FULL,
    "read_only": Msg.STORAGE_READ_ONLY,
}


def storage_trouble(problem: StorageProblem) -> Msg:
    """What is wrong with the storage, as a message for a user."""
    return _TROUBLES.get(problem, Msg.STORAGE_BROKEN)


class MessageNotStored(ParleyError):
    """The user's message could not be stored, so it was not answered; tell them `phrase`.

    Unless `final`: then a platform that redelivers (Telegram) may leave the update unconfirmed
    and try again later; a `final` one (the platform would not keep it any longer, or the
    database refuses it for good) is told at once.
    """

    def __init__(self, cause: StorageError, *, final: bool = True) -> None:
        super().__init__(str(cause))
        self.problem: StorageProblem = cause.problem
        self.final = final
        self.phrase = phrase(Msg.NOT_STORED, trouble=storage_trouble(cause.problem))

    @property
    def user_message(self) -> str:
        """What the user is told, in English."""
        return say(self.phrase)


class AlreadyHandled(ParleyError):
    """A platform delivered a message again that was handled already: it is not answered twice."""


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
    """A voice note or audio file cannot be used; `phrase` says why, for the user."""

    def __init__(self, why: Phrase) -> None:
        super().__init__(say(why))
        self.phrase = why

    @property
    def user_message(self) -> str:
        """Why, in English."""
        return say(self.phrase)


class AudioTooLarge(AudioError):
    """The file is over `stt.max_bytes` (or the platform's download limit)."""


class AudioTooLong(AudioError):
    """The audio lasts longer than `stt.max_seconds`."""


class AudioUndecodable(AudioError):
    """The bytes are empty, corrupt, or not audio."""


class NoSpeech(AudioError):
    """The audio decoded but nobody speaks in it."""


class AttachmentTooLarge(ParleyError):
    """An attachment is over the size Parley takes (`limit` bytes); `size` when it is known."""

    def __init__(self, limit: int, *, size: int | None = None) -> None:
        told = f"{size} bytes, " if size is not None else ""
        super().__init__(f"{told}over the limit of {limit} bytes")
        self.limit = limit
        self.size = size


class AttachmentUnavailable(ParleyError):
    """An attachment could not be downloaded (the platform refused, the network failed)."""


class SpeechSynthesisError(ParleyError):
    """Every TTS backend failed; the reply goes out as text."""
