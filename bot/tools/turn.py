"""A reply's tool rounds: the calls the model asks for, run, shown and audited, and the messages
that take their results back to the model.

The reply loop (bot/reply.py) streams one round at a time. Before each, `offer()` puts the tools
in the request while rounds are left, and none on the last, so the model must answer. When a
round ends with calls, `run()` shows "🔧 name…" in the reply (the same stream, under the same
edit budgets), runs the round's calls together (each bounded by `tools.timeout_s`; a failure is
a result the model reads, never an exception), writes one audit row per call, and adds the
assistant's calls and their results to the request. `exchange()` is what the store keeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from bot.delivery.stream import ReplyStream
from bot.errors import StorageError
from bot.llm import LLMRequest
from bot.messages import Msg, say
from bot.storage import HistoryStore
from bot.tools.calls import ToolCall
from bot.tools.history import ToolRound, exchange_of
from bot.tools.messages import assistant_message, tool_message
from bot.types import IncomingMessage

if TYPE_CHECKING:
    from bot.speech.voice_reply import VoiceReply
    from bot.tools.hub import ToolHub
    from bot.tools.result import ToolResult

log = logging.getLogger(__name__)

ONE_MOMENT_AFTER_S = 1.0  # a live listener hears "One moment." when a round takes longer
AUDIT_ACTION = "tool.call"


class ToolTurn:
    """The tool rounds of one reply: `offer()` before each round, `run()` after one that
    asked for calls, `exchange()` at the end."""

    def __init__(
        self,
        hub: ToolHub,
        request: LLMRequest,
        stream: ReplyStream,
        store: HistoryStore,
        *,
        msg: IncomingMessage,
        channel_id: int,
        lang: str,
        live_voice: VoiceReply | None = None,
    ) -> None:
        """`lang`: the turn's language; `live_voice`: the reply's speech when someone listens
        live (a voice channel)."""
        self._hub = hub
        self._request = request
        self._stream = stream
        self._store = store
        self._msg = msg
        self._channel_id = channel_id
        self._lang = lang
        self._voice = live_voice
        self._max_rounds = hub.settings.max_rounds
        self._rounds: list[ToolRound] = []
        self._answer_from = 0  # where the text after the latest round starts in the answer
        self._line_end = -1  # the stream's length right after the latest tool line
        self._said_one_moment = False

    @property
    def offered(self) -> bool:
        """Whether this round's request offers tools (calls are run only then)."""
        return bool(self._request.tools)

    def offer(self) -> None:
        """Before a round: the tools while rounds are left; none on the last."""
        left = len(self._rounds) < self._max_rounds
        self._request.tools = self._hub.openai_tools() if left else []

    async def run(self, calls: list[ToolCall], answer: str) -> None:
        """Carry out one round's `calls`; `answer` is the reply's text so far (its end is what
        the model wrote before the calls)."""
        content = answer[self._answer_from :].strip()
        self._show(calls)
        chat = self._msg.chat_ref
        work = asyncio.gather(*(self._hub.call(c.name, c.arguments, chat=chat) for c in calls))
        try:
            if self._voice is not None and not self._said_one_moment:
                done, _ = await asyncio.wait({work}, timeout=ONE_MOMENT_AFTER_S)
                if not done:
                    self._said_one_moment = True
                    self._voice.interject(say(Msg.TOOL_ONE_MOMENT, lang=self._lang))
            results = await work
        finally:
            work.cancel()  # the reply was stopped (time limit, shutdown): so are its calls
        await self._audit(calls, results)
        texts = tuple(result.text for result in results)
        self._rounds.append(ToolRound(content, tuple(calls), texts))
        self._request.messages.append(assistant_message(calls, content))
        self._request.messages += [tool_message(c, t) for c, t in zip(calls, texts, strict=True)]
        self._answer_from = len(answer)

    def exchange(self) -> str | None:
        """The JSON the store keeps with the reply; None when no tool was called."""
        return exchange_of(self._rounds, self._answer_from)

    def _show(self, calls: list[ToolCall]) -> None:
        """One line per round, under what the reply shows already."""
        # As code: a tool's name_with_underscores must not turn into Markdown emphasis.
        names = ", ".join(f"`{name}`" for name in dict.fromkeys(call.name for call in calls))
        shown = self._stream.text
        gap = "" if not shown.strip() else "\n" if len(shown) == self._line_end else "\n\n"
        self._stream.append(gap + say(Msg.TOOL_RUNNING, lang=self._lang, tools=names))
        self._line_end = len(self._stream.text)

    async def _audit(self, calls: list[ToolCall], results: list[ToolResult]) -> None:
        """One audit row per call: the chat, the tool, how it ended and how long it took (never
        its arguments or its output)."""
        for call, result in zip(calls, results, strict=True):
            detail = {
                "server": result.server,
                "outcome": result.outcome,
                "seconds": round(result.duration, 3),
            }
            try:
                await self._store.audit(
                    self._channel_id,
                    actor_id=self._msg.user_id,
                    actor_name=self._msg.user_name,
                    action=AUDIT_ACTION,
                    key=call.name,
                    new_value=json.dumps(detail),
                )
            except StorageError as exc:  # the store logged it; the answer matters more
                log.info("tool call %s not audited: %s", call.name, exc)
