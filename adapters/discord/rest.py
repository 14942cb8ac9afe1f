"""The Discord REST calls of replies, with rate limits left to the bot's budgets.

discord.py's HTTP client answers a 429 by sleeping `retry_after` and sending the same request
again, up to five times. That suits one-off calls, but for a streamed reply it would resend a
stale edit after the wait while newer text piles up behind it, and its waits are invisible to
the budgets every other chat shares. So every call an answer makes (post, edit, delete a
message; the interaction response and follow-ups; typing; voice and file uploads) goes through
this small client instead: a 429 raises `RetryAfter` at once and `bot.delivery` pauses the
bucket and decides what to write when the wait is over, usually just the latest text. Login,
command sync and interaction callbacks (the 3-second acknowledgement) stay on discord.py.

Errors are the three kinds the streamer handles: `RetryAfter` (429), `DeliveryError` (refused
for good), and `OSError` (`ConnectionError` / `TimeoutError`: the network or a Discord 5xx).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from adapters.discord.errors import reason_of
from bot.errors import AttachmentTooLarge, AttachmentUnavailable, DeliveryError, RetryAfter

REQUEST_TIMEOUT_S = 20.0  # a timeout raises TimeoutError, an OSError the streamer retries
DOWNLOAD_TIMEOUT_S = 60.0  # one attachment, up to the largest size Parley takes
CHUNK_BYTES = 64 * 1024
# Replies never ping @everyone, roles or users, whatever the model writes; a reply to a
# message still notifies its author, as Discord's own replies do.
ALLOWED_MENTIONS: dict[str, Any] = {"parse": [], "replied_user": True}
FLAG_EPHEMERAL = 1 << 6  # a message only the interaction's user sees
HTTP_OK = 200


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart message: `files[n]` in the form, `attachments[n]` in JSON."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


class GlobalGate(Protocol):
    """A budget every request against the bot's global limit takes a grant from first."""

    async def acquire(self) -> None: ...

    async def pause(self, seconds: float) -> None: ...


class InteractionTokenExpired(DeliveryError):
    """Discord no longer accepts the interaction's token (it lives 15 minutes)."""


class DiscordRest:
    """Minimal Discord REST client for reply streams; `await open()` before use."""

    def __init__(self, base_url: str, token: str, user_agent: str) -> None:
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bot {token}"}
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        # Set when the global budget is shared with other processes (adapters/discord/sharding).
        self.global_gate: GlobalGate | None = None

    async def open(self) -> None:
        """Create the HTTP session."""
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": self._user_agent},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- channel messages ------------------------------------------------------------------

    async def create_message(self, channel_id: int, content: str, *, reply_to: int | None) -> int:
        """Post a message in a channel (as a reply when `reply_to` is set); returns its id."""
        body: dict[str, Any] = {"content": content, "allowed_mentions": ALLOWED_MENTIONS}
        if reply_to is not None:
            body["message_reference"] = _reference(reply_to)
        data = await self._call("POST", "/channels/{}/messages", (channel_id,), body)
        return int(data["id"])

    async def upload_message(
        self, channel_id: int, payload: dict[str, Any], files: Sequence[Upload]
    ) -> int:
        """Post a message with files; `payload` is its JSON (content, flags, attachments...)."""
        form = _form(payload, files)
        data = await self._call("POST", "/channels/{}/messages", (channel_id,), form=form)
        return int(data["id"])

    async def trigger_typing(self, channel_id: int) -> None:
        """Show "<bot> is typing…" in a channel for about ten seconds."""
        await self._call("POST", "/channels/{}/typing", (channel_id,))

    async def edit_message(self, channel_id: int, message_id: int, content: str) -> None:
        """Replace a channel message's text."""
        body = {"content": content, "allowed_mentions": ALLOWED_MENTIONS}
        await self._call("PATCH", "/channels/{}/messages/{}", (channel_id, message_id), body)

    async def delete_message(self, channel_id: int, message_id: int) -> None:
        """Delete a channel message."""
        await self._call("DELETE", "/channels/{}/messages/{}", (channel_id, message_id))

    # -- interaction responses -------------------------------------------------------------

    async def edit_original(self, application_id: int, token: str, content: str) -> int:
        """Replace the text of an interaction's original response; returns the message id."""
        body = {"content": content, "allowed_mentions": ALLOWED_MENTIONS}
        path = "/webhooks/{}/{}/messages/@original"
        data = await self._call("PATCH", path, (application_id, token), body, webhook=True)
        return int(data["id"])

    async def create_followup(
        self, application_id: int, token: str, content: str, *, ephemeral: bool = False
    ) -> int:
        """Post a follow-up message of an interaction; returns its id."""
        body: dict[str, Any] = {"content": content, "allowed_mentions": ALLOWED_MENTIONS}
        if ephemeral:
            body["flags"] = FLAG_EPHEMERAL
        path = "/webhooks/{}/{}?wait=true"
        data = await self._call("POST", path, (application_id, token), body, webhook=True)
        return int(data["id"])

    async def upload_followup(
        self, application_id: int, token: str, payload: dict[str, Any], files: Sequence[Upload]
    ) -> int:
        """Post a follow-up message with files; returns its id."""
        path = "/webhooks/{}/{}?wait=true"
        form = _form(payload, files)
        data = await self._call("POST", path, (application_id, token), form=form, webhook=True)
        return int(data["id"])

    async def edit_followup(
        self, application_id: int, token: str, message_id: int, content: str
    ) -> None:
        """Replace the text of an interaction's follow-up message."""
        body = {"content": content, "allowed_mentions": ALLOWED_MENTIONS}
        path = "/webhooks/{}/{}/messages/{}"
        await self._call("PATCH", path, (application_id, token, message_id), body, webhook=True)

    async def delete_followup(self, application_id: int, token: str, message_id: int) -> None:
        """Delete an interaction's follow-up message."""
        path = "/webhooks/{}/{}/messages/{}"
        await self._call("DELETE", path, (application_id, token, message_id), webhook=True)

    # -- plumbing --------------------------------------------------------------------------

    # -- attachments -----------------------------------------------------------------------

    async def download(self, url: str, limit: int) -> bytes:
        """An attachment's bytes, read in chunks that stop past `limit` whatever size the
        message claimed (AttachmentTooLarge); AttachmentUnavailable when it cannot be had."""
        if self._session is None:
            raise RuntimeError("DiscordRest.open() was not awaited")
        data = bytearray()
        timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
        try:
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != HTTP_OK:
                    raise AttachmentUnavailable(f"the attachment's host answered {response.status}")
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    data += chunk
                    if len(data) > limit:
                        raise AttachmentTooLarge(limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AttachmentUnavailable(f"the download failed: {exc!r}") from exc
        return bytes(data)

    async def _call(
        self,
        method: str,
        route: str,
        params: tuple[int | str, ...],
        body: dict[str, Any] | None = None,
        *,
        form: aiohttp.FormData | None = None,
        webhook: bool = False,
    ) -> Any:
        """One request; `route` (with `{}` placeholders) is what logs and errors show."""
        if self._session is None:
            raise RuntimeError("DiscordRest.open() was not awaited")
        url = self._base + route.format(*(quote(str(p), safe="") for p in params))
        # Interaction webhooks authenticate by the token in the URL, not the bot token.
        headers = None if webhook else self._auth
        if self.global_gate is not None and not webhook:  # interaction webhooks are exempt
            await self.global_gate.acquire()
        request = self._session.request(
            method, url, json=body if form is None else None, data=form, headers=headers
        )
        try:
            async with request as response:
                data = await _json_or_none(response)
                if response.status < 300:
                    return data
                error = _error_for(method, route, response, data)
                if isinstance(error, RetryAfter) and error.is_global and self.global_gate:
                    await self.global_gate.pause(error.retry_after)  # for every process
                raise error
        except aiohttp.ClientConnectionError as exc:
            # The streamer backs off and retries network failures (OSError); aiohttp's
            # connection errors are not all OSErrors.
            raise ConnectionError(f"Discord {method} {route}: {exc!r}") from exc


def _reference(message_id: int) -> dict[str, Any]:
    """A reply to `message_id`, which may be gone by now: the message is sent anyway."""
    return {"message_id": str(message_id), "fail_if_not_exists": False}


def _form(payload: dict[str, Any], files: Sequence[Upload]) -> aiohttp.FormData:
    """The multipart body Discord takes for uploads: `payload_json` and `files[n]`."""
    form = aiohttp.FormData()
    form.add_field("payload_json", json.dumps(payload), content_type="application/json")
    for index, upload in enumerate(files):
        form.add_field(
            f"files[{index}]",
            upload.data,
            filename=upload.filename,
            content_type=upload.content_type,
        )
    return form


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    if response.content_type == "application/json":
        return await response.json()
    await response.read()
    return None


def _error_for(method: str, route: str, response: aiohttp.ClientResponse, data: Any) -> Exception:
    """The typed exception for a non-2xx answer."""
    body = data if isinstance(data, dict) else {}
    if response.status == 429:
        retry_after = body.get("retry_after") or response.headers.get("Retry-After") or 1.0
        is_global = bool(body.get("global")) or response.headers.get("X-RateLimit-Global") == "true"
        return RetryAfter(float(retry_after), is_global=is_global)
    if response.status >= 500:
        # Discord's own hiccup (502 from its proxy, 503 overloaded): a network failure to retry.
        return ConnectionError(f"Discord {method} {route}: {response.status}")
    code = body.get("code", 0)
    message = f"Discord {method} {route}: {response.status} {body.get('message', '')} (code {code})"
    reason = reason_of(response.status, code)
    if reason == "token_expired":
        return InteractionTokenExpired(message, reason=reason)
    return DeliveryError(message, reason=reason)
