"""A chat's settings as the console shows and changes them: the same rules as `/config set`.

`set_chat_setting` is the one place the console changes a setting: it runs `/config set`'s own
handler (`Commands.set_value`: parse with the config file's rules, the stt_language check, store
with its audit row), as an admin of the chat, so the console can refuse nothing the command would
accept and accept nothing it would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.channel_config import CHANNEL_KEYS, ChannelSettings, channel_defaults
from bot.config import Settings
from bot.storage import Store
from bot.types import IncomingMessage

if TYPE_CHECKING:
    from bot.commands import Commands

ADMIN_ACTOR_ID = "admin-console"  # the audit log's actor for changes made in the console
# How `Commands.set_value` begins an answer that refuses the value.
REFUSAL_PREFIX = "Can't set "


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
    """What a change did: the command's answer, and whether it was refused."""

    key: str
    answer: str
    ok: bool


async def chat_settings(store: Store, settings: Settings, channel_id: int) -> list[ChatSetting]:
    """Every per-chat key with its value in force for this chat."""
    overrides = await store.channel_settings(channel_id)
    resolved = ChannelSettings.resolve(settings, overrides)
    defaults = channel_defaults(settings)
    return [
        ChatSetting(
            key=key,
            value=getattr(resolved, key),
            default=defaults[key],
            overridden=key in overrides,
            help=help_text,
        )
        for key, help_text in CHANNEL_KEYS.items()
    ]


async def set_chat_setting(
    commands: Commands,
    platform: str,
    channel_key: str,
    channel_id: int,
    key: str,
    raw: str,
    *,
    actor_name: str,
) -> SetResult:
    """Validate and store one setting of a chat, with its audit row, as `/config set` does."""
    admin = IncomingMessage(
        platform=platform,
        channel_key=channel_key,
        user_id=ADMIN_ACTOR_ID,
        user_name=actor_name,
        is_admin=True,
    )
    answer = await commands.set_value(admin, channel_id, key, raw)
    return SetResult(key, answer, ok=not answer.startswith(REFUSAL_PREFIX))
