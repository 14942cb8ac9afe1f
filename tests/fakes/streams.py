"""A download that never ends, for the fakes' file URLs: what a hostile or broken host sends."""

from __future__ import annotations

from typing import Any

from aiohttp import web

ENDLESS_CHUNK = 64 * 1024
ENDLESS_MAX = 512 * 1024 * 1024  # a test that never stops reading still ends


async def endless_stream(
    request: web.Request, content_type: str, streamed: dict[Any, int], key: Any
) -> web.StreamResponse:
    """Bytes without end (up to ENDLESS_MAX), until the client stops reading; counted."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    streamed[key] = 0
    chunk = bytes(ENDLESS_CHUNK)
    try:
        while streamed[key] < ENDLESS_MAX:
            await response.write(chunk)
            streamed[key] += len(chunk)
    except (ConnectionError, RuntimeError):  # the client hung up
        pass
    return response
