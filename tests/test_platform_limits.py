"""Each platform's budgets and limits, from its settings and its library's constants."""

from __future__ import annotations

import pytest
from telegram.constants import FloodLimit, MessageLimit

from adapters.discord.config import DiscordSettings
from adapters.discord.targets import channel_limits as discord_limits
from adapters.telegram.config import TelegramSettings
from adapters.telegram.targets import chat_limits as telegram_limits
from bot.types import RateBudget

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL


def test_telegram_and_discord_defaults() -> None:
    private = telegram_limits(TelegramSettings(), is_private=True)
    group = telegram_limits(TelegramSettings(), is_private=False)
    discord = discord_limits(DiscordSettings())
    assert (private.max_chars, discord.max_chars) == (4096, 2000)
    assert private.chat == RateBudget(rate=1.0, burst=2.0)
    assert group.chat.burst + group.chat.rate * 60 == pytest.approx(20)
    # The bot-wide budgets are whole windows: all of a second's count at once if need be.
    assert private.platform == group.platform == RateBudget(rate=30.0, burst=30.0)
    assert discord.chat.burst + discord.chat.rate * 5 == pytest.approx(5)
    # Discord's 50 a second, less the calls discord.py makes on its own as the bot starts.
    assert discord.platform == RateBudget(rate=47.0, burst=47.0)
    assert (private.platform_key, discord.platform_key) == ("telegram", "discord")


def test_limits_follow_the_settings() -> None:
    settings = TelegramSettings(max_message_chars=500, group_rate=0.5, global_rate=10)
    group = telegram_limits(settings, is_private=False)
    assert group.max_chars == 500
    assert group.chat.burst + group.chat.rate * 60 == pytest.approx(30)
    assert group.platform == RateBudget(rate=10.0, burst=10.0)
    discord = discord_limits(DiscordSettings(channel_edits=10, channel_window_s=10))
    assert discord.chat.burst + discord.chat.rate * 10 == pytest.approx(10)


def test_telegram_defaults_come_from_python_telegram_bot() -> None:
    settings = TelegramSettings()
    assert settings.max_message_chars == MessageLimit.MAX_TEXT_LENGTH
    assert settings.private_rate == FloodLimit.MESSAGES_PER_SECOND_PER_CHAT
    assert settings.group_rate * 60 == pytest.approx(FloodLimit.MESSAGES_PER_MINUTE_PER_GROUP)
    assert settings.global_rate == FloodLimit.MESSAGES_PER_SECOND
