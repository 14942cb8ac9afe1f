"""Who the bot answers on Telegram: group addressing, commands and the access lists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from telegram import Document, Message, MessageEntity, Video, VideoNote
from telegram.constants import ChatType

from adapters.telegram.config import TelegramSettings
from bot.types import PICTURE_MIMES, AttachmentKind


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


# What a message carries besides text, by the Message attribute that carries it, in the order
# they are looked at. Pictures (photos, image files) are found first, for the model; service
# messages (joins, pins, ...) are silently ignored.
OTHER_KINDS: tuple[tuple[str, AttachmentKind], ...] = (
    ("document", "document"),
    ("sticker", "sticker"),
    ("animation", "animation"),
    ("location", "location"),
    ("venue", "place"),
    ("poll", "poll"),
    ("contact", "contact"),
    ("dice", "dice"),
    ("game", "game"),
    ("story", "story"),
    ("paid_media", "paid_media"),
    ("checklist", "checklist"),
)
PHOTO_MIME = "image/jpeg"  # Telegram re-encodes every photo it delivers as JPEG
VOICE_MIME = "audio/ogg"  # voice notes are OGG/Opus
VIDEO_MIME = "video/mp4"  # video notes say no type: they are MP4


@dataclass(frozen=True, slots=True)
class Media:
    """Something a message carries besides text: what it is and, for a file, how to fetch it."""

    kind: AttachmentKind
    file_id: str = ""  # "" for what has no file (a poll, a location)
    size: int = 0  # as the update claims it (0: not told)
    mime: str = ""
    name: str = ""


def media_of(message: Message, max_picture_bytes: int) -> list[Media]:
    """What `message` carries besides text, in the order Parley looks at it: its picture (of
    a photo, the largest size within `max_picture_bytes`, else the smallest, to be refused as
    too large), what Parley cannot open, then its recording."""
    found: list[Media] = []
    picture = _picture(message, max_picture_bytes)
    if picture is not None:
        found.append(picture)
    for attribute, kind in OTHER_KINDS:
        value = getattr(message, attribute, None)
        if not value or (attribute == "document" and picture is not None):
            continue
        file_id = value.file_id if isinstance(value, Document) else ""
        found.append(Media(kind, file_id, getattr(value, "file_size", None) or 0))
    recording = message.voice or message.audio or message.video_note or message.video
    if recording is not None:
        is_video = isinstance(recording, VideoNote | Video)
        mime = getattr(recording, "mime_type", None) or (VIDEO_MIME if is_video else VOICE_MIME)
        found.append(
            Media(
                "video" if is_video else "audio",
                recording.file_id,
                recording.file_size or 0,
                mime,
                getattr(recording, "file_name", None) or "",
            )
        )
    return found


def _picture(message: Message, max_bytes: int) -> Media | None:
    if message.photo:
        sizes = sorted(message.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        fitting = [p for p in sizes if (p.file_size or 0) <= max_bytes]
        chosen = fitting[-1] if fitting else sizes[0]
        return Media("picture", chosen.file_id, chosen.file_size or 0, PHOTO_MIME)
    document = message.document
    if document is not None and document.mime_type in PICTURE_MIMES:
        return Media(
            "picture",
            document.file_id,
            document.file_size or 0,
            document.mime_type,
            document.file_name or "",
        )
    return None
