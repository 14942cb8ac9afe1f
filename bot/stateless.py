"""Conversations the caller keeps (the HTTP API's chat completions): the request's messages are
the whole conversation. The engine answers one like a turn, with nothing stored.

The chat's default settings apply (persona, temperature, max_tokens); the caller's system
messages replace the persona's prompt, its temperature replaces the default, and its max_tokens
is capped at the default's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.channel_config import ChannelSettings
from bot.languages import ENGLISH
from bot.llm import LLMRequest
from bot.llm_settings import PromptFormat
from bot.prompt import PromptTurn, render_raw, system_prompt

ChatRole = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation the caller keeps."""

    role: ChatRole
    content: str


@dataclass(frozen=True, slots=True)
class StatelessChat:
    """A conversation to answer once, as the caller sent it; nothing of it is stored."""

    platform: str
    user_id: str  # who asks (the HTTP API: the key's name), for logs and metrics
    messages: tuple[ChatMessage, ...]  # oldest first; the last one is the user's
    model: str = ""  # a name in llm.models; "": the default model
    temperature: float | None = None  # None: engine.temperature
    max_tokens: int | None = None  # None: engine.max_tokens, which also caps it

    @property
    def question(self) -> str:
        """The newest user message: what is answered."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


def stateless_request(
    chat: StatelessChat,
    *,
    api: str,
    prompt_format: PromptFormat,
    settings: ChannelSettings,
    bot_name: str,
    model: str,
    lang: str = ENGLISH,
) -> LLMRequest:
    """The LLM request for `chat`: its messages as they are, after the persona's system prompt
    (in `lang`) unless the caller sent system messages of its own (a raw prompt for a completion
    API)."""
    systems = [m.content for m in chat.messages if m.role == "system"]
    temperature = settings.temperature if chat.temperature is None else chat.temperature
    max_tokens = settings.max_tokens
    if chat.max_tokens is not None:
        max_tokens = min(chat.max_tokens, max_tokens)
    request = LLMRequest(temperature=temperature, max_tokens=max_tokens, model=model)
    if api == "chat":
        if not systems:
            request.messages = [
                {"role": "system", "content": system_prompt(settings, bot_name, lang)}
            ]
        request.messages += [{"role": m.role, "content": m.content} for m in chat.messages]
        return request
    system = "\n\n".join(systems) if systems else system_prompt(settings, bot_name, lang)
    turns = [PromptTurn(m.role, m.content) for m in chat.messages if m.role != "system"]
    request.prompt, request.stop = render_raw(prompt_format, system, turns, bot_name, lang)
    return request
