"""Who the bot answers on Telegram: group addressing, commands and the access lists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from telegram import Document, Message, MessageEntity, PhotoSize
from telegram.constants import ChatType

from adapters.telegram.config import TelegramSettings


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed `/name@bot args` message."""

    name: str
    args: str
    addressed: bool  # it named this bot explicitly (`/name@bot`)


def is_private(message: Message) -> bool:
    """A one-to-one chat with the bot."""
    return message.chat.type == ChatType.PRIVATE


def is_addressed(message: Message, bot_id: int, bot_username: str) -> bool:
    """In a private chat every message; in groups a mention of the bot or a reply to it."""
    if is_private(message):
        return True
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == bot_id:
        return True
    mention = f"@{bot_username}".lower()
    entities = {**message.parse_entities(), **message.parse_caption_entities()}
    for entity, text in entities.items():
        if entity.type == MessageEntity.MENTION and text.lower() == mention:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot_id:
            return True
    return False


def topic_id(message: Message) -> int | None:
    """The forum topic the message was sent in (None: not a forum, or its General topic)."""
    return message.message_thread_id if message.is_topic_message else None


def conversation_key(message: Message) -> str:
    """The conversation a message belongs to: its chat, or `chat:topic` in a forum topic."""
    topic = topic_id(message)
    return str(message.chat_id) if topic is None else f"{message.chat_id}:{topic}"


def strip_mention(text: str, bot_username: str) -> str:
    """The text without `@bot` mentions, which only address the message."""
    pattern = rf"(?<!\w)@{re.escape(bot_username)}(?!\w)"
    stripped = re.sub(pattern, "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip()


def parse_command(text: str, bot_username: str) -> Command | None:
    """Split `/name@bot args`; None when it is no command or one for another bot."""
    if not text.startswith("/"):
        return None
    head, _, args = text.partition(" ")
    if "\n" in head:  # "/reset\nmore text": the command ends at the line break
        head, _, rest = head.partition("\n")
        args = f"{rest} {args}".strip()
    name, _, target = head[1:].partition("@")
    if not name or (target and target.lower() != bot_username.lower()):
        return None
    return Command(name=name.lower(), args=args.strip(), addressed=bool(target))


def may_use(settings: TelegramSettings, user_id: int, chat_id: int) -> bool:
    """Admins always; others when both access lists (empty = everyone) let them in."""
    if user_id in settings.admin_ids:
        return True
    user_ok = not settings.allowed_user_ids or user_id in settings.allowed_user_ids
    chat_ok = not settings.allowed_chat_ids or chat_id in settings.allowed_chat_ids
    return user_ok and chat_ok


# Kinds of message Parley cannot read yet, by the Message attribute that carries them, named as
# the user is told ("I can't open photos yet"). Text, voice, audio, video notes and videos (their
# sound is transcribed) are read; service messages (joins, pins, ...) are silently ignored.
UNREADABLE_KINDS = (
    ("photo", "photos"),
    ("document", "files"),
    ("sticker", "stickers"),
    ("animation", "GIFs"),
    ("location", "locations"),
    ("venue", "places"),
    ("poll", "polls"),
    ("contact", "contacts"),
    ("dice", "dice"),
    ("game", "games"),
    ("story", "stories"),
    ("paid_media", "paid media"),
    ("checklist", "checklists"),
)


def unreadable_kind(message: Message) -> str | None:
    """What the message carries that Parley cannot read ("photos"), or None.

    Pictures (photos, image files) are not counted: `picture_of` finds them for the model.
    """
    for attribute, name in UNREADABLE_KINDS:
        if attribute in ("photo", "document") and picture_of(message, 0) is not None:
            continue
        if getattr(message, attribute, None):
            return name
    return None


# Picture formats the chat API's image parts take (OpenAI's list; llama.cpp decodes them too).
IMAGE_MIMES = ("image/jpeg", "image/png", "image/webp", "image/gif")
PHOTO_MIME = "image/jpeg"  # Telegram re-encodes every photo it delivers as JPEG


@dataclass(frozen=True, slots=True)
class Picture:
    """A picture a message carries: what to download, its size (0: not told), its type."""

    media: PhotoSize | Document
    size: int
    mime: str


def picture_of(message: Message, max_bytes: int) -> Picture | None:
    """The message's picture: of a photo, its largest size within `max_bytes` (else its
    smallest, for the caller to refuse as too large); or an image sent as a file."""
    if message.photo:
        sizes = sorted(message.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        fitting = [p for p in sizes if (p.file_size or 0) <= max_bytes]
        chosen = fitting[-1] if fitting else sizes[0]
        return Picture(chosen, chosen.file_size or 0, PHOTO_MIME)
    document = message.document
    if document is not None and document.mime_type in IMAGE_MIMES:
        return Picture(document, document.file_size or 0, document.mime_type)
    return None
