"""A chat's settings as the console shows and changes them: the same rules as `/config set`.

`set_chat_setting` is the one place the console changes a setting. It calls the same pieces
`/config set` calls (the value parsed by `channel_config.parse_channel_value`, stored with its
audit row by `store.set_channel_setting`), so a value the chat command refuses is refused here
too; re-point it at the shared command handler once that exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bot.channel_config import CHANNEL_KEYS, ChannelSettings, parse_channel_value
from bot.config import EngineSettings
from bot.storage import HistoryStore

ADMIN_ACTOR_ID = "admin-console"  # the audit log's actor for changes made in the console


@dataclass(frozen=True, slots=True)
class ChatSetting:
    """One key of a chat: its value in force, whether the chat overrides the default, help."""

    key: str
    value: Any
    default: Any
    overridden: bool
    help: str


@dataclass(frozen=True, slots=True)
class SetResult:
    """What a change did: `error` says why it was refused, else old and new values."""

    key: str
    error: str | None = None
    old: Any = None
    new: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def chat_settings(
    store: HistoryStore, defaults: EngineSettings, channel_id: int
) -> list[ChatSetting]:
    """Every per-chat key with its value in force for this chat."""
    overrides = await store.channel_settings(channel_id)
    resolved = ChannelSettings.resolve(defaults, overrides)
    return [
        ChatSetting(
            key=key,
            value=getattr(resolved, key),
            default=getattr(defaults, key),
            overridden=key in overrides,
            help=help_text,
        )
        for key, help_text in CHANNEL_KEYS.items()
    ]


async def set_chat_setting(
    store: HistoryStore,
    defaults: EngineSettings,
    channel_id: int,
    key: str,
    raw: str,
    *,
    actor_name: str,
) -> SetResult:
    """Validate and store one setting of a chat, with its audit row, as `/config set` does."""
    try:
        value = parse_channel_value(defaults, key, raw)
    except ValueError as exc:
        return SetResult(key, error=f"Can't set {key}: {exc}.")
    if key == "stt_language" and value != "auto" and not await _known_language(value):
        return SetResult(
            key,
            error=f"Can't set stt_language: {value!r} is not a language Whisper knows "
            "(use a code like en, de, fr, or auto).",
        )
    current = ChannelSettings.resolve(defaults, await store.channel_settings(channel_id))
    old = getattr(current, key)
    await store.set_channel_setting(
        channel_id, key, value, actor_id=ADMIN_ACTOR_ID, actor_name=actor_name, old=old
    )
    return SetResult(key, old=old, new=value)


async def _known_language(code: str) -> bool:
    return code in await asyncio.to_thread(_language_codes)


def _language_codes() -> frozenset[str]:
    # Imports faster-whisper (a second or more the first time): runs in a worker thread.
    from bot.speech.stt import language_codes

    return frozenset(language_codes())
