"""Prompt building: personas, token-budgeted history, raw formats for base models."""

from __future__ import annotations

from bot.channel_config import ChannelSettings
from bot.config import EngineSettings
from bot.personas import PERSONAS
from bot.prompt import PromptTurn, build_request, fit_history, render_raw, system_prompt
from bot.storage import Role, StoredMessage

SETTINGS = ChannelSettings.resolve(EngineSettings(), {})


def row(i: int, role: Role, content: str, tokens: int | None) -> StoredMessage:
    return StoredMessage(i, role, "u", "U", content, "complete", tokens, 0.0)


def test_at_least_five_presets_and_custom_text() -> None:
    assert {"default", "concise", "friendly", "teacher"} <= PERSONAS.keys()
    assert len(PERSONAS) >= 5
    custom = ChannelSettings.resolve(EngineSettings(), {"persona": "You are a haiku poet."})
    assert system_prompt(custom, "Parley") == "You are a haiku poet."
    extra = ChannelSettings.resolve(EngineSettings(), {"system_prompt": "Answer in French."})
    assert system_prompt(extra, "Bob").startswith("You are Bob")
    assert system_prompt(extra, "Bob").endswith("\n\nAnswer in French.")


def test_history_keeps_the_newest_turns_within_budget() -> None:
    newest_first = [
        row(4, "assistant", "d", 10),
        row(3, "user", "c", 10),
        row(2, "assistant", "b", 10),
    ]
    assert fit_history(newest_first, 25) == [PromptTurn("user", "c"), PromptTurn("assistant", "d")]
    assert fit_history(newest_first, 5) == []
    unknown = [row(1, "user", "x" * 35, None)]
    assert fit_history(unknown, 10) == [PromptTurn("user", "x" * 35)]  # estimated at 10 tokens


def test_chat_request_has_system_history_and_message() -> None:
    request = build_request(
        api="chat",
        prompt_format="plain",
        system="SYS",
        history=[PromptTurn("user", "a"), PromptTurn("assistant", "b")],
        user_text="c",
        settings=SETTINGS,
        bot_name="Parley",
    )
    assert request.messages == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert (request.temperature, request.max_tokens) == (0.7, 512)


def test_raw_formats() -> None:
    turns = [PromptTurn("user", "hi"), PromptTurn("assistant", "hello"), PromptTurn("user", "bye")]
    chatml, stop = render_raw("chatml", "S", turns, "P")
    assert chatml == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<|im_end|>" in stop
    llama2, stop = render_raw("llama2", "S", turns, "P")
    assert llama2 == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] bye [/INST]"
    assert "</s>" in stop
    plain, stop = render_raw("plain", "S", turns, "P")
    assert plain.startswith("S\n\nUser: ")
    assert plain.endswith("User: hi\nP: hello\nUser: bye\nP:")
    assert "\nUser:" in stop
    gemma, _ = render_raw("gemma", "S", turns, "P")
    assert gemma.endswith("<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n")


def test_plain_format_keeps_each_turn_one_paragraph() -> None:
    plain, _ = render_raw("plain", "S", [PromptTurn("user", "line one\n\n\nline two")], "P")
    assert "User: line one\nline two\nP:" in plain
