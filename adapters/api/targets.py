"""`ApiReplyTarget`: the engine's answer to one HTTP request; `EventStream`: a streamed one.

With `stream` true the reply's text goes out as `chat.completion.chunk` deltas (the reply
streamer coalesces them under the answer's budget, adapters/api/limits.py); otherwise it is
collected and the request is answered once the reply has ended. A note the engine shows after a
reply ("the reply was cut off...") is not part of its text here: the request's outcome says it.
"""

from __future__ import annotations

from aiohttp import web

from adapters.api.limits import LIMITS
from adapters.api.wire import DONE, Answer, FinishReason, event
from bot.delivery.deltas import DeltaText
from bot.errors import DeliveryError
from bot.languages import ENGLISH
from bot.types import OutgoingFile, TargetLimits, VoiceClip

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a proxy in front (nginx) must not hold the events back
}


class EventStream:
    """A streamed answer as server-sent events, begun at its first event: its deltas, a last
    chunk with the finish reason (and the token counts, if asked), then `data: [DONE]`."""

    def __init__(self, request: web.Request, answer: Answer, *, include_usage: bool) -> None:
        self._request = request
        self._answer = answer
        self._include_usage = include_usage
        self.response: web.StreamResponse | None = None  # set by the first event

    async def delta(self, text: str) -> None:
        """More of the answer's text; DeliveryError once the client has gone."""
        await self._write(self._answer.chunk({"content": text}))

    async def comment(self, text: str) -> None:
        """A line clients ignore (and proxies see as traffic), e.g. the place in line."""
        await self._write(f": {text}\n\n".encode())

    async def end(self, finish: FinishReason, usage: dict[str, int] | None) -> None:
        """The last chunk, the token counts if asked, and `[DONE]`; a client gone is no error."""
        data = self._answer.chunk({}, finish)
        if self._include_usage and usage is not None:
            data += self._answer.usage_chunk(usage)
        await self._last(data + DONE)

    async def fail(self, error: dict[str, object]) -> None:
        """An error object as the stream's last event (OpenAI's clients raise it), no `[DONE]`."""
        await self._last(event(error))

    async def _last(self, data: bytes) -> None:
        try:
            await self._write(data)
            assert self.response is not None
            await self.response.write_eof()
        except (DeliveryError, ConnectionError):
            pass  # the client has gone: nobody to tell

    async def _write(self, data: bytes) -> None:
        try:
            if self.response is None:
                response = web.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(self._request)
                self.response = response
                data = self._answer.chunk({"role": "assistant", "content": ""}) + data
            await self.response.write(data)
        except ConnectionError as exc:  # aiohttp's "cannot write to closing transport" too
            raise DeliveryError("the client closed the connection", reason="not_found") from exc


class ApiReplyTarget(DeltaText):
    """Implements `bot.types.ReplyTarget` and `ReplyOutcomeTarget` for one request."""

    def __init__(self, chat_key: str, events: EventStream | None = None) -> None:
        super().__init__(events.delta if events is not None else _ignored)
        self._chat_key = chat_key
        self._events = events  # None: the answer is given whole at the end
        self.notices: list[str] = []  # what the engine said besides the reply
        self.files: list[OutgoingFile] = []  # a command's files, a voice reply

    @property
    def events(self) -> EventStream | None:
        """The answer's event stream, when the request asked for one."""
        return self._events

    @property
    def chat_key(self) -> str:
        """One answer's events have a budget of their own."""
        return self._chat_key

    @property
    def limits(self) -> TargetLimits:
        return LIMITS

    # -- ReplyTarget: everything else a turn says ------------------------------------------

    async def typing(self) -> None:
        return None  # the first delta is the sign of life

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        if self._events is not None:
            await self._events.comment(f"queued {position}")

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def send_voice(self, clip: VoiceClip) -> None:
        self.files.append(OutgoingFile("reply.ogg", clip.ogg_opus, "audio/ogg", clip.text))

    async def send_file(self, file: OutgoingFile) -> None:
        self.files.append(file)


async def _ignored(text: str) -> None:
    """An answer given whole at the end: its deltas go nowhere."""
