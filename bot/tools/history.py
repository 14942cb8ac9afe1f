"""A reply's tool exchange as the store keeps it, and as later prompts carry it.

The exchange is stored with the reply (`messages.tool_exchange`, JSON): each round's text before
its calls, the calls with their arguments and results, and where the final answer starts in the
reply's stored text. A later turn's prompt replays it as the chat messages it was (the assistant's
`tool_calls`, the `tool` results marked as data, then the answer); when the history budget is
short, the results are cut before the turn is left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm import estimate_tokens
from bot.tools.calls import ToolCall
from bot.tools.messages import assistant_message, tool_message

logger = logging.getLogger(__name__)

SHORT_RESULT_CHARS = 300  # a result's length when the history budget is short
_MESSAGE_OVERHEAD_TOKENS = 8  # roles, ids and the data marking of one call and its result


@dataclass(frozen=True, slots=True)
class ToolRound:
    """One round: the text the model wrote before its calls, the calls, and one result each
    (as the model got it: capped and without the servers' secrets)."""

    content: str
    calls: tuple[ToolCall, ...]
    results: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ToolExchange:
    """A reply's rounds, and where its final answer starts in the reply's stored text."""

    rounds: tuple[ToolRound, ...]
    answer_from: int

    def encode(self) -> str:
        """The JSON the store keeps."""
        rounds = [
            {
                "content": round_.content,
                "calls": [
                    {
                        "id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                        "result": result,
                    }
                    for call, result in zip(round_.calls, round_.results, strict=True)
                ],
            }
            for round_ in self.rounds
        ]
        return json.dumps({"rounds": rounds, "answer_from": self.answer_from}, ensure_ascii=False)

    @classmethod
    def decode(cls, text: str | None) -> ToolExchange | None:
        """The exchange a stored JSON text holds; None for none, or for one that cannot be read
        (it is left out of the prompt, not the turn)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            rounds = tuple(_round(item) for item in data["rounds"])
            answer_from = data["answer_from"]
            if not isinstance(answer_from, int) or isinstance(answer_from, bool):
                raise TypeError("answer_from is not a number")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("a stored tool exchange cannot be read (%s); it is left out", exc)
            return None
        return cls(rounds, max(0, answer_from))

    def tokens(self) -> int:
        """About how many tokens its messages take in a prompt."""
        size = 0
        for round_ in self.rounds:
            size += estimate_tokens(round_.content)
            for call, result in zip(round_.calls, round_.results, strict=True):
                size += _MESSAGE_OVERHEAD_TOKENS + estimate_tokens(
                    call.name + call.arguments + result
                )
        return size

    def shortened(self, chars: int = SHORT_RESULT_CHARS) -> ToolExchange:
        """The same exchange with every result cut to `chars` characters."""
        rounds = tuple(
            ToolRound(r.content, r.calls, tuple(_shorten(result, chars) for result in r.results))
            for r in self.rounds
        )
        return ToolExchange(rounds, self.answer_from)

    def messages(self, reply: str) -> list[dict[str, Any]]:
        """The chat messages of the turn whose stored reply text is `reply`: each round's
        assistant message and results, then the answer."""
        messages: list[dict[str, Any]] = []
        for round_ in self.rounds:
            messages.append(assistant_message(round_.calls, round_.content))
            messages += [
                tool_message(call, result)
                for call, result in zip(round_.calls, round_.results, strict=True)
            ]
        answer = reply[self.answer_from :].strip()
        if answer:
            messages.append({"role": "assistant", "content": answer})
        return messages


def exchange_of(rounds: Sequence[ToolRound], answer_from: int) -> str | None:
    """The JSON to store for a reply's rounds; None when it had none."""
    return ToolExchange(tuple(rounds), answer_from).encode() if rounds else None


def _round(item: Any) -> ToolRound:
    calls = [
        ToolCall(str(call["id"]), str(call["name"]), str(call["arguments"]))
        for call in item["calls"]
    ]
    results = tuple(str(call["result"]) for call in item["calls"])
    return ToolRound(str(item["content"] or ""), tuple(calls), results)


def _shorten(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    return f"{text[:chars]}\n[shortened: {len(text) - chars} more characters left out]"
