"""The global settings, read-only, each with where its value came from; secrets masked.

Sources follow `bot.config.load_settings`: an environment variable `PARLEY_<SECTION>__<KEY>` wins
over the TOML file, which wins over the default. A value none of them explains was changed at
start-up (e.g. the bundled model's cooler temperature).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

ENV_PREFIX = "PARLEY_"
ENV_DELIMITER = "__"
MASK = "•••••• (set)"
NOT_SET = "(not set)"
# Keys whose values are secrets even when typed as plain strings.
_SECRET_WORDS = ("token", "secret", "password", "api_key")

Source = Literal["default", "file", "environment", "start-up"]


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One global setting as shown: dotted key, display value, source, and whether masked."""

    key: str
    shown: str
    source: Source
    secret: bool


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The TOML file's data, as load_settings read it ({} without a file; blocking)."""
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # it parsed at start-up; a file edited since cannot say where values came from


def describe_settings(
    settings: BaseModel, file_data: Mapping[str, Any], environ: Mapping[str, str]
) -> list[SettingRow]:
    """Every leaf setting in declaration order."""
    env = {
        name.upper(): value
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX)
    }
    rows: list[SettingRow] = []
    _walk(settings, (), file_data, env, rows)
    return rows


def _walk(
    model: BaseModel,
    path: tuple[str, ...],
    file_data: Mapping[str, Any],
    env: Mapping[str, str],
    rows: list[SettingRow],
) -> None:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = (*path, name)
        if isinstance(value, BaseModel):
            _walk(value, where, file_data, env, rows)
            continue
        if (
            value
            and isinstance(value, dict)
            and all(isinstance(v, BaseModel) for v in value.values())
        ):
            # Keyed sections (llm.models.NAME): one row per setting, masked like the others.
            for key, entry in value.items():
                _walk(entry, (*where, key), file_data, env, rows)
            continue
        secret = isinstance(value, SecretStr) or any(w in name.lower() for w in _SECRET_WORDS)
        if _from_env(where, env):
            source: Source = "environment"
        elif _lookup(file_data, where)[0]:
            source = "file"
        elif _plain(value) == _plain(field.get_default(call_default_factory=True)):
            source = "default"
        else:
            source = "start-up"
        rows.append(SettingRow(".".join(where), _show(value, secret), source, secret))


def _from_env(path: tuple[str, ...], env: Mapping[str, str]) -> bool:
    """Set by its own variable, or inside a JSON value of a variable for a whole section."""
    for depth in range(len(path), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(part.upper() for part in path[:depth])
        if name not in env:
            continue
        if depth == len(path):
            return True
        try:
            data = json.loads(env[name])
        except ValueError:
            return False
        return isinstance(data, dict) and _lookup(data, path[depth:])[0]
    return False


def _lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _show(value: Any, secret: bool) -> str:
    if secret:
        return MASK if _plain(value) else NOT_SET
    if isinstance(value, str):
        return json.dumps(mask_url(value), ensure_ascii=False)
    if isinstance(value, list):
        shown = [mask_url(v) if isinstance(v, str) else v for v in value]
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def mask_url(text: str) -> str:
    """A URL with a password in it (http://user:pw@host) shows the password masked."""
    if "@" not in text or "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        if parts.password is None:
            return text
        host = parts.hostname or ""
        netloc = f"{parts.username}:••••••@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return text
    return urlunsplit(parts._replace(netloc=netloc))
