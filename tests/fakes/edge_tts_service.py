"""A loopback stand-in for Microsoft Edge's read-aloud websocket service, for the real edge-tts.

It speaks the part of the protocol edge-tts 7 uses: the client sends a `Path:speech.config`
text frame and a `Path:ssml` frame; the service answers `Path:turn.start`, binary
`Path:audio` frames (a 2-byte big-endian header length, the headers, then MP3 bytes), an empty
end-of-audio frame and `Path:turn.end`. Point edge-tts at it by setting
`edge_tts.communicate.WSS_URL = service.wss_url`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from typing import Literal
from xml.sax.saxutils import unescape

from aiohttp import WSMsgType, web

from tests.fakes.audio_samples import tone_mp3

TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"  # edge-tts' constant
READALOUD_PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
REQUIRED_QUERY = ("TrustedClientToken", "ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version")
AUDIO_FRAME_BYTES = 4096  # the real service sends the MP3 in pieces of a few KB
TONE_SECONDS = 0.8
TONE_HZ = 440.0

Mode = Literal["speak", "no-audio", "hang", "reject"]

_VOICE = re.compile(r"<voice name='([^']*)'>")
_PROSODY = re.compile(
    r"<prosody pitch='([^']*)' rate='([^']*)' volume='([^']*)'>(.*)</prosody>", re.S
)


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    """One SSML request the stand-in received."""

    text: str
    voice: str
    rate: str
    output_format: str


def _split_text_frame(frame: str) -> tuple[dict[str, str], str]:
    head, _, body = frame.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


class EdgeTTSStandIn:
    """The read-aloud service on 127.0.0.1; `mode` picks how it behaves.

    "speak": a real MP3 (a 440 Hz tone, `TONE_SECONDS` long) for every request; "no-audio":
    the turn ends without audio; "hang": accepts and never answers; "reject": HTTP 503.
    """

    def __init__(self, mode: Mode = "speak") -> None:
        self.mode: Mode = mode
        self.mp3 = tone_mp3(TONE_SECONDS, TONE_HZ)
        self.requests: list[SynthesisRequest] = []
        self.connections = 0
        self._request_arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def wss_url(self) -> str:
        """What `edge_tts.communicate.WSS_URL` must be set to (edge-tts appends `&...`)."""
        return (
            f"ws://127.0.0.1:{self._port}{READALOUD_PATH}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}"
        )

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get(READALOUD_PATH, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> EdgeTTSStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for_requests(self, count: int) -> list[SynthesisRequest]:
        """Wait until `count` requests have arrived (wrap in a timeout in tests)."""
        async with self._request_arrived:
            await self._request_arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        missing = [key for key in REQUIRED_QUERY if not request.query.get(key)]
        if missing:
            return web.Response(status=400, text=f"missing {', '.join(missing)}")
        if self.mode == "reject":
            return web.Response(status=503, text="service unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        output_format = ""
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            headers, body = _split_text_frame(message.data)
            if headers.get("Path") == "speech.config":
                config = json.loads(body)
                output_format = config["context"]["synthesis"]["audio"]["outputFormat"]
            elif headers.get("Path") == "ssml":
                await self._record(body, output_format)
                await self._answer(ws, headers.get("X-RequestId", uuid.uuid4().hex))
        return ws

    async def _record(self, ssml: str, output_format: str) -> None:
        voice = _VOICE.search(ssml)
        prosody = _PROSODY.search(ssml)
        if voice is None or prosody is None:
            raise ValueError(f"not edge-tts SSML: {ssml!r}")
        async with self._request_arrived:
            self.requests.append(
                SynthesisRequest(
                    text=unescape(prosody.group(4)),
                    voice=voice.group(1),
                    rate=prosody.group(2),
                    output_format=output_format,
                )
            )
            self._request_arrived.notify_all()

    async def _answer(self, ws: web.WebSocketResponse, request_id: str) -> None:
        if self.mode == "hang":
            await asyncio.Event().wait()  # until the client gives up and the server stops
        await ws.send_str(
            f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
            'Path:turn.start\r\n\r\n{"context":{"serviceTag":"stand-in"}}'
        )
        if self.mode == "speak":
            for start in range(0, len(self.mp3), AUDIO_FRAME_BYTES):
                await ws.send_bytes(
                    _audio_frame(request_id, self.mp3[start : start + AUDIO_FRAME_BYTES])
                )
            await ws.send_bytes(_audio_frame(request_id, b""))  # end of audio: no Content-Type
        await ws.send_str(
            f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
            'Path:turn.end\r\n\r\n{"context":{"serviceTag":"stand-in"}}'
        )


def _audio_frame(request_id: str, mp3: bytes) -> bytes:
    content_type = "Content-Type:audio/mpeg\r\n" if mp3 else ""
    headers = f"X-RequestId:{request_id}\r\n{content_type}Path:audio\r\n".encode()
    return len(headers).to_bytes(2, "big") + headers + mp3
