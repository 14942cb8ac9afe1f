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
    """The Bot API's base, or a local Bot API server's, e.g. "http://127.0.0.1:8081/bot"."""
    file_base_url: str = "https://api.telegram.org/file/bot"
    """Where files are downloaded, e.g. "http://127.0.0.1:8081/file/bot"."""
    webhook_url: str = ""
    """The public HTTPS URL Telegram posts updates to. Empty: long polling."""
    webhook_listen: str = "127.0.0.1"
    """Where the webhook server listens (behind your reverse proxy)."""
    webhook_port: int = Field(8443, ge=1, le=65535)
    """The webhook server's port."""
    webhook_secret: SecretStr = SecretStr("")
    """Checked on every webhook call (1-256 characters of A-Z a-z 0-9 _ -). Empty: a random one
    per start."""
    stream: Literal["edit", "draft"] = "edit"
    """How replies stream in private chats: "edit" (send, then edit) or "draft"
    (sendMessageDraft)."""
    admin_ids: list[int] = Field(default_factory=list)
    """User ids allowed to change settings (`/config set`)."""
    allowed_user_ids: list[int] = Field(default_factory=list)
    """Users who may talk to the bot; empty: everyone (admins always may)."""
    allowed_chat_ids: list[int] = Field(default_factory=list)
    """Chats the bot answers in; empty: every chat."""
    max_message_chars: int = Field(MAX_MESSAGE_CHARS, ge=16)
    """Characters per message (Telegram's limit)."""
    private_rate: float = Field(PRIVATE_CHAT_RATE, gt=0)
    """Messages and edits per second in one private chat."""
    group_rate: float = Field(GROUP_MESSAGES_PER_MINUTE / GROUP_WINDOW_S, gt=0)
    """Messages and edits per second in one group (20 a minute)."""
    global_rate: float = Field(GLOBAL_RATE, gt=0)
    """Messages per second for the whole bot."""
