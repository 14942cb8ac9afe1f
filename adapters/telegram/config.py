"""The `[telegram]` settings section (environment: `PARLEY_TELEGRAM__<KEY>`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from adapters.telegram.limits import (
    GLOBAL_RATE,
    GROUP_MESSAGES_PER_MINUTE,
    GROUP_WINDOW_S,
    MAX_MESSAGE_CHARS,
    PRIVATE_CHAT_RATE,
)
from bot.config import PlatformSettings


class TelegramSettings(PlatformSettings):
    """A Telegram bot: its token, how updates arrive, who may use it, and its rate limits."""

    NAME: ClassVar[str] = "telegram"

    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    webhook_url: str = ""  # empty: long polling
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(8443, ge=1, le=65535)
    webhook_secret: SecretStr = SecretStr("")
    stream: Literal["edit", "draft"] = "edit"
    admin_ids: list[int] = Field(default_factory=list)
    allowed_user_ids: list[int] = Field(default_factory=list)  # empty: everyone
    allowed_chat_ids: list[int] = Field(default_factory=list)  # empty: everyone
    max_message_chars: int = Field(MAX_MESSAGE_CHARS, ge=16)
    private_rate: float = Field(PRIVATE_CHAT_RATE, gt=0)  # messages per second in a private chat
    group_rate: float = Field(GROUP_MESSAGES_PER_MINUTE / GROUP_WINDOW_S, gt=0)  # per second
    global_rate: float = Field(GLOBAL_RATE, gt=0)  # messages per second for the whole bot
