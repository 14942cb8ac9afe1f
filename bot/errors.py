"""Typed exceptions, caught where they can be handled."""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """The configuration is invalid; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StorageError(ParleyError):
    """The database cannot be used (e.g. it is newer than this code)."""


class RetryAfter(ParleyError):
    """A platform said 429: wait `retry_after` seconds (for every chat when `is_global`)."""

    def __init__(self, retry_after: float, *, is_global: bool = False) -> None:
        super().__init__(f"rate limited, retry after {retry_after:.2f}s")
        self.retry_after = retry_after
        self.is_global = is_global


class DeliveryError(ParleyError):
    """A platform refused a send/edit for good (bad request, forbidden, message gone)."""


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
