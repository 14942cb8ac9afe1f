"""What Parley does with what a message carries besides text: one policy for every platform.

Pictures go to a model that takes images (at most `MAX_IMAGES_PER_MESSAGE`, each within
`llm.max_image_bytes`); a recording's sound is transcribed (within `stt.max_bytes`); anything
else is named in a notice ("I can't open stickers yet"), and the text that came with it is
answered. Nothing is downloaded that would not be used, and every download stops at its limit
whatever size the platform claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import AttachmentTooLarge, AttachmentUnavailable, AudioError, AudioTooLarge
from bot.messages import Msg, Phrase, phrase, say
from bot.types import Attachment, AttachmentKind, ImageInput, IncomingMessage, ReplyTarget

log = logging.getLogger(__name__)

MAX_IMAGES_PER_MESSAGE = 4  # pictures of one message passed to the model; more are left out
IMAGE_MARK = "[image]"  # stands for a picture in the stored message (pictures are not stored)
_MB = 1024 * 1024

# What Parley cannot open yet, named as the user is told ("I can't open stickers yet").
UNREADABLE: dict[AttachmentKind, Msg] = {
    "image": Msg.KIND_IMAGES,
    "document": Msg.KIND_FILES,
    "sticker": Msg.KIND_STICKERS,
    "animation": Msg.KIND_GIFS,
    "location": Msg.KIND_LOCATIONS,
    "place": Msg.KIND_PLACES,
    "poll": Msg.KIND_POLLS,
    "contact": Msg.KIND_CONTACTS,
    "dice": Msg.KIND_DICE,
    "game": Msg.KIND_GAMES,
    "story": Msg.KIND_STORIES,
    "paid_media": Msg.KIND_PAID_MEDIA,
    "checklist": Msg.KIND_CHECKLISTS,
}


@dataclass(frozen=True, slots=True)
class Unpacked:
    """What a message's attachments give its turn: pictures, and a recording to transcribe."""

    images: tuple[ImageInput, ...] = ()
    recording: Attachment | None = None  # read when it is transcribed, in the chat's order


class AttachmentPolicy:
    """The picture, size and count rules, and what the user is told when one applies."""

    def __init__(
        self, settings: Settings, sees_images: Callable[[IncomingMessage], Awaitable[bool]]
    ) -> None:
        self._settings = settings
        self._sees_images = sees_images  # whether the chat's model takes images

    async def unpack(
        self, msg: IncomingMessage, text: str, target: ReplyTarget, lang: str
    ) -> Unpacked | None:
        """The pictures (downloaded) and the recording; None when nothing is left to answer,
        after telling the user why (in `lang`)."""
        recording = msg.recording
        images: tuple[ImageInput, ...] = ()
        pictures = [a for a in msg.attachments if a.kind == "picture"]
        if pictures:
            images = await self._pictures(msg, pictures, bool(text), target, lang)
            if not images and not text and recording is None:
                return None  # told why they cannot be seen, and there is nothing else to answer
        other = next((a for a in msg.attachments if a.kind in UNREADABLE), None)
        if other is not None and recording is None:
            kind = UNREADABLE[other.kind]
            log.info("%s in chat %s cannot be read", say(kind), msg.channel_key)
            said = say(Msg.CAPTION_ONLY if text else Msg.UNREADABLE, lang=lang, kind=kind)
            await target.notice(said)
            if not text and not images:
                return None
        return Unpacked(images, recording)

    async def _pictures(
        self,
        msg: IncomingMessage,
        pictures: list[Attachment],
        has_text: bool,
        target: ReplyTarget,
        lang: str,
    ) -> tuple[ImageInput, ...]:
        """The pictures for the model, after telling the user about each left out. Nothing is
        downloaded for a model that cannot see it, nor past the size limit."""
        if not await self._sees_images(msg):
            await target.notice(say(Msg.NO_VISION_TEXT if has_text else Msg.NO_VISION, lang=lang))
            return ()
        limit = self._settings.llm.max_image_bytes
        images: list[ImageInput] = []
        too_large: list[AttachmentTooLarge] = []
        failed = False
        for picture in pictures[:MAX_IMAGES_PER_MESSAGE]:
            try:
                data = await picture.read(limit)
            except AttachmentTooLarge as exc:
                log.info("picture in chat %s left out: %s", msg.channel_key, exc)
                too_large.append(exc)
                continue
            except AttachmentUnavailable as exc:
                log.warning("picture download in chat %s failed: %s", msg.channel_key, exc)
                failed = True
                continue
            images.append(ImageInput(data, picture.mime))
        if too_large:
            await target.notice(say(_too_large(too_large, Msg.IMAGE_TOO_LARGE), lang=lang))
        if failed:
            await target.notice(say(Msg.PICTURE_FAILED, lang=lang))
        return tuple(images)

    def check_recording(self, recording: Attachment) -> None:
        """AudioTooLarge when a recording claims more than `stt.max_bytes` (nothing is read)."""
        try:
            recording.check(self._settings.stt.max_bytes)
        except AttachmentTooLarge as exc:
            raise AudioTooLarge(_too_large([exc], Msg.AUDIO_TOO_LARGE)) from exc

    async def recording(self, recording: Attachment) -> bytes:
        """A recording's bytes, within `stt.max_bytes`; AudioError says why not."""
        try:
            return await recording.read(self._settings.stt.max_bytes)
        except AttachmentTooLarge as exc:
            raise AudioTooLarge(_too_large([exc], Msg.AUDIO_TOO_LARGE)) from exc
        except AttachmentUnavailable as exc:
            log.warning("recording download failed: %s", exc)
            raise AudioError(phrase(Msg.AUDIO_FAILED)) from exc


def _too_large(refused: list[AttachmentTooLarge], sized: Msg) -> Phrase:
    """`sized` with the largest size known, or the limit alone when none was told."""
    limit_mb = max(exc.limit for exc in refused) / _MB
    sizes = [exc.size for exc in refused if exc.size is not None]
    if not sizes:
        over = Msg.IMAGE_OVER_LIMIT if sized is Msg.IMAGE_TOO_LARGE else Msg.AUDIO_OVER_LIMIT
        return phrase(over, limit_mb=limit_mb)
    return phrase(sized, size_mb=max(sizes) / _MB, limit_mb=limit_mb)


def stored_text(text: str, images: tuple[ImageInput, ...]) -> str:
    """The message as stored: pictures are not kept (as audio is not), a mark says where."""
    if not images:
        return text
    return f"{' '.join([IMAGE_MARK] * len(images))} {text}".strip()
