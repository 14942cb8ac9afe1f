"""Telegram's limits, taken from python-telegram-bot's constants (which follow the Bot API docs).

The reply budgets built from them (`targets.chat_limits`) are what the reply streamer keeps under:
about one message a second in a private chat, 20 a minute in a group, 30 a second for the whole
bot (https://core.telegram.org/bots/faq).
"""

from __future__ import annotations

from telegram.constants import FileSizeLimit, FloodLimit, MessageLimit

PLATFORM_KEY = "telegram"
MAX_MESSAGE_CHARS = int(MessageLimit.MAX_TEXT_LENGTH)  # 4096, text after entity parsing
MAX_CAPTION_CHARS = int(MessageLimit.CAPTION_LENGTH)  # 1024
MAX_DOWNLOAD_BYTES = int(FileSizeLimit.FILESIZE_DOWNLOAD)  # 20 MB through getFile
PRIVATE_CHAT_RATE = float(FloodLimit.MESSAGES_PER_SECOND_PER_CHAT)  # soft: short bursts pass
GROUP_MESSAGES_PER_MINUTE = int(FloodLimit.MESSAGES_PER_MINUTE_PER_GROUP)
GROUP_WINDOW_S = 60.0  # Telegram counts a group's messages per minute
GLOBAL_RATE = float(FloodLimit.MESSAGES_PER_SECOND)  # the whole bot, every chat together
# "Incoming updates are stored on the server until the bot receives them either way, but they
# will not be kept longer than 24 hours." (https://core.telegram.org/bots/api#getting-updates)
UPDATE_KEPT_S = 24 * 3600.0
