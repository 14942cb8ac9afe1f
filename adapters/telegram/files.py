"""Telegram files read with a cap: `getFile`, then the file itself, in chunks that stop at the
limit whatever size the update claimed.

PTB's own download (`File.download_as_bytearray`) reads the whole body into memory first, so
the file is fetched here, from the URL `getFile` gives, with an httpx client of our own (PTB's
HTTP library: the same proxy settings apply). That URL holds the bot token: it is never logged.
"""

from __future__ import annotations

import functools

import httpx
import telegram.error
from telegram import Bot

from adapters.telegram.errors import reason_of
from bot.errors import AttachmentTooLarge, AttachmentUnavailable
from bot.types import Reader

CHUNK_BYTES = 64 * 1024
DOWNLOAD_TIMEOUT_S = 60.0  # a whole file of up to 20 MB (getFile's limit)


class FileDownloads:
    """Reads the files of one bot's updates; `await close()` when the adapter stops."""

    def __init__(self, bot: Bot) -> None:
        self._bot = bot
        self._client = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    def reader(self, file_id: str, claimed: int) -> Reader:
        """An `Attachment.reader` for the file `file_id` (`claimed`: its size in the update)."""
        return functools.partial(self.read, file_id, claimed)

    async def read(self, file_id: str, claimed: int, limit: int) -> bytes:
        """The file's bytes; AttachmentTooLarge past `limit`, AttachmentUnavailable on failure."""
        try:
            file = await self._bot.get_file(file_id)
        except telegram.error.BadRequest as exc:
            # Telegram refuses files over 20 MB even when the update did not tell the size.
            if reason_of(exc) == "too_large":
                raise AttachmentTooLarge(limit, size=claimed or None) from exc
            raise AttachmentUnavailable(f"getFile refused: {exc}") from exc
        except telegram.error.TelegramError as exc:
            raise AttachmentUnavailable(f"getFile failed: {exc}") from exc
        if not file.file_path or "://" not in file.file_path:
            raise AttachmentUnavailable("getFile gave no URL to download")
        return await self._download(file.file_path, limit)

    async def _download(self, url: str, limit: int) -> bytes:
        data = bytearray()
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code != httpx.codes.OK:
                    raise AttachmentUnavailable(f"the download answered {response.status_code}")
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    data += chunk
                    if len(data) > limit:
                        raise AttachmentTooLarge(limit)
        except httpx.HTTPError as exc:  # its text names the URL, and so the token: not kept
            raise AttachmentUnavailable(f"the download failed ({type(exc).__name__})") from None
        return bytes(data)
