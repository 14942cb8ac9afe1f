"""Who may talk to the bot on Discord, which messages are turns, and what they say."""

from __future__ import annotations

import re

import discord

from adapters.discord.config import DiscordSettings
from bot.types import PICTURE_MIMES, AttachmentKind

# Messages people write; joins, pins, boosts and the like are system messages.
CHAT_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
_USER_MENTION = re.compile(r"<@!?(\d+)>")


class AccessRules:
    """`allowed_*` lists and admin rights, from `discord.*` settings and Discord permissions."""

    def __init__(self, settings: DiscordSettings) -> None:
        self._cfg = settings

    def allowed(self, user_id: int, channel_id: int, parent_id: int | None = None) -> bool:
        """Empty lists allow everyone everywhere; a thread is allowed when its parent is.

        The bot's own admins (`admin_ids`) are never locked out, as on Telegram.
        """
        if user_id in self._cfg.admin_ids:
            return True
        if self._cfg.allowed_user_ids and user_id not in self._cfg.allowed_user_ids:
            return False
        if not self._cfg.allowed_channel_ids:
            return True
        return not {channel_id, parent_id}.isdisjoint(self._cfg.allowed_channel_ids)

    def is_admin(self, user: discord.User | discord.Member, *, manage_guild: bool) -> bool:
        """Manage Server, or listed in `admin_ids`, or holding a role in `admin_role_ids`."""
        if manage_guild or user.id in self._cfg.admin_ids:
            return True
        roles = user.roles if isinstance(user, discord.Member) else []
        return any(role.id in self._cfg.admin_role_ids for role in roles)


def is_turn(message: discord.Message, me: discord.ClientUser) -> bool:
    """In a DM every message from a person; in a server one that mentions or replies to us."""
    # Our own messages come back as events; other bots could start an endless exchange.
    if message.author.id == me.id or message.author.bot:
        return False
    if message.type not in CHAT_MESSAGE_TYPES:
        return False
    if message.guild is None:
        return True
    if any(user.id == me.id for user in message.mentions):
        return True
    role = message.guild.self_role  # people often pick the bot's role in the @ menu
    if role is not None and role in message.role_mentions:
        return True
    reference = message.reference
    replied = None
    if reference is not None:
        replied = reference.resolved or reference.cached_message
    return isinstance(replied, discord.Message) and replied.author.id == me.id


def is_background(message: discord.Message, me: discord.ClientUser) -> bool:
    """A person's server message that is no turn for us: group chatter the bot may keep."""
    if message.author.id == me.id or message.author.bot or message.guild is None:
        return False
    return message.type in CHAT_MESSAGE_TYPES and not is_turn(message, me)


def readable_text(message: discord.Message, me: discord.ClientUser) -> str:
    """The text as a person reads it: the bot's mention dropped, other mentions as @name."""
    names = {user.id: user.display_name for user in message.mentions}

    def mention(match: re.Match[str]) -> str:
        user_id = int(match[1])
        return "" if user_id == me.id else f"@{names.get(user_id, 'someone')}"

    text = _USER_MENTION.sub(mention, message.content)
    role = message.guild.self_role if message.guild is not None else None
    if role is not None:
        text = text.replace(role.mention, "")
    return text.strip()


def content_type(attachment: discord.Attachment) -> str:
    """The attachment's MIME type without parameters, lowercase ("" when Discord did not say)."""
    return (attachment.content_type or "").split(";")[0].strip().lower()


def kind_of(attachment: discord.Attachment) -> AttachmentKind:
    """What an attachment is: a voice message, audio or video (its sound is transcribed), a
    picture a model takes, another image, or any other file."""
    mime = content_type(attachment)
    if attachment.is_voice_message() or mime.startswith("audio/"):
        return "audio"
    if mime.startswith("video/"):
        return "video"
    if mime in PICTURE_MIMES:
        return "picture"
    return "image" if mime.startswith("image/") else "document"
