"""The `[api]` settings section (environment: `PARLEY_API__<KEY>`)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from adapters.api.limits import MAX_KEY_NAME_CHARS, MIN_KEY_CHARS
from bot.config import PlatformSettings

# A key's name: one word, as it appears in the chats' keys ("alice:kitchen") and the logs.
KEY_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_KEY_NAME_CHARS - 1}}}$")


def check_key_name(name: str) -> str | None:
    """Why `name` cannot name a key, or None when it can."""
    if KEY_NAME.match(name):
        return None
    return (
        f"a key's name is 1 to {MAX_KEY_NAME_CHARS} letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


class ApiSettings(PlatformSettings):
    """The OpenAI-compatible HTTP API under `/v1/` on the [http] endpoint, with conversations
    Parley keeps. It runs while `http.enabled` is true and a key is set here or was made with
    `parley api-key create NAME`."""

    NAME: ClassVar[str] = "api"

    keys: dict[str, SecretStr] = {}
    """The keys clients send as `Authorization: Bearer KEY`, by name (secrets), e.g.
    `PARLEY_API__KEYS='{"alice": "pk-..."}'`; at least 16 characters each. A name owns its
    sessions."""
    requests_per_minute: int = Field(60, ge=0)
    """Requests per key and minute; more are refused (429 with Retry-After); 0: no limit."""

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        # The base section's `token` means nothing here: clients bring their keys.
        if isinstance(data, dict) and data.get("token"):
            raise ValueError("api has no token: set api.keys, or run `parley api-key create`")
        return data

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # Messages never repeat a key: they are secrets.
        for name, key in keys.items():
            problem = check_key_name(name)
            if problem:
                raise ValueError(f"{name!r}: {problem}")
            if len(key.get_secret_value()) < MIN_KEY_CHARS:
                raise ValueError(f"{name!r}: a key must be at least {MIN_KEY_CHARS} characters")
        values = [key.get_secret_value() for key in keys.values()]
        if len(set(values)) != len(values):
            raise ValueError("two names have the same key: each key must be its own")
        return keys

    @property
    def enabled(self) -> bool:
        """Keys are configured (keys kept in the store count too: see `PLATFORM.runs`)."""
        return bool(self.keys)
