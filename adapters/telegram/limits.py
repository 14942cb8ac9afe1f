"""Telegram's limits, taken from python-telegram-bot's constants (which follow the Bot API docs).

The budgets are what the reply streamer keeps under: about one message a second in a private chat,
20 a minute in a group, 30 a second for the whole bot (https://core.telegram.org/bots/faq).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from telegram.constants import FileSizeLimit, FloodLimit, MessageLimit

from bot.delivery.budgets import GLOBAL_WINDOW_S, SHORT_REPLY_CALLS, windowed_budget
from bot.types import RateBudget, TargetLimits

if TYPE_CHECKING:
    from adapters.telegram.config import TelegramSettings

PLATFORM_KEY = "telegram"
MAX_MESSAGE_CHARS = int(MessageLimit.MAX_TEXT_LENGTH)  # 4096, text after entity parsing
MAX_CAPTION_CHARS = int(MessageLimit.CAPTION_LENGTH)  # 1024
MAX_DOWNLOAD_BYTES = int(FileSizeLimit.FILESIZE_DOWNLOAD)  # 20 MB through getFile
PRIVATE_CHAT_RATE = float(FloodLimit.MESSAGES_PER_SECOND_PER_CHAT)  # soft: short bursts pass
GROUP_MESSAGES_PER_MINUTE = int(FloodLimit.MESSAGES_PER_MINUTE_PER_GROUP)
GROUP_WINDOW_S = 60.0  # Telegram counts a group's messages per minute
GLOBAL_RATE = float(FloodLimit.MESSAGES_PER_SECOND)  # the whole bot, every chat together


def chat_limits(settings: TelegramSettings, *, is_private: bool) -> TargetLimits:
    """Budgets of one Telegram chat and of the whole bot, from `[telegram]` settings.

    A private chat's limit is a soft rate that tolerates short bursts, so it gets the plain rate
    plus a burst; the group and global limits are hard counts per window (`windowed_budget`).
    """
    if is_private:
        chat = RateBudget(rate=settings.private_rate, burst=SHORT_REPLY_CALLS)
    else:
        chat = windowed_budget(settings.group_rate * GROUP_WINDOW_S, GROUP_WINDOW_S)
    return TargetLimits(
        max_chars=settings.max_message_chars,
        chat=chat,
        platform=windowed_budget(settings.global_rate * GLOBAL_WINDOW_S, GLOBAL_WINDOW_S),
        platform_key=PLATFORM_KEY,
    )
