"""OpenAI's shapes: the model list, a chat completion, its stream's chunks, the token counts."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.answer_cache import token_counts
from bot.llm import estimate_tokens

FinishReason = Literal["stop", "length"]
DONE = b"data: [DONE]\n\n"
OWNER = "parley"  # the models' `owned_by`


def models_list(ids: list[str]) -> dict[str, Any]:
    """GET /v1/models."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": OWNER} for name in ids],
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """What every chunk and the completion of one answer repeat."""

    model: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(
        self, text: str, finish: FinishReason, usage: dict[str, int] | None
    ) -> dict[str, Any]:
        """A whole answer (`stream` false)."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        return body

    def chunk(self, delta: dict[str, Any], finish: FinishReason | None = None) -> bytes:
        """One SSE event of a streamed answer."""
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        """The last event when `stream_options.include_usage`: no choices, the token counts."""
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
        )


def event(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj`."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def usage_of(reported: dict[str, Any], prompt: str, answer: str) -> dict[str, int]:
    """The token counts: the LLM's where it reported them, else estimated from the text."""
    counts = token_counts(reported)
    prompt_tokens = counts.get("prompt_tokens", estimate_tokens(prompt))
    completion_tokens = counts.get("completion_tokens", estimate_tokens(answer))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
