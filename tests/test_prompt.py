"""Prompt building: personas, token-budgeted history, raw formats for base models."""

from __future__ import annotations

import dataclasses

from bot.channel_config import ChannelSettings
from bot.config import Settings
from bot.personas import PERSONAS
from bot.prompt import (
    PromptTurn,
    build_request,
    fit_history,
    fit_rows,
    prompt_turns,
    render_raw,
    system_prompt,
)
from bot.storage import Role, StoredMessage
from bot.tools.calls import ToolCall
from bot.tools.history import SHORT_RESULT_CHARS, ToolExchange, ToolRound
from bot.tools.messages import TOOL_DATA_RULE

SETTINGS = ChannelSettings.resolve(Settings(), {})


def row(i: int, role: Role, content: str, tokens: int | None) -> StoredMessage:
    return StoredMessage(i, role, "u", "U", content, "complete", tokens, 0.0)


def test_at_least_five_presets_and_custom_text() -> None:
    assert {"default", "concise", "friendly", "teacher"} <= PERSONAS.keys()
    assert len(PERSONAS) >= 5
    custom = ChannelSettings.resolve(Settings(), {"persona": "You are a haiku poet."})
    assert system_prompt(custom, "Parley") == "You are a haiku poet."
    extra = ChannelSettings.resolve(Settings(), {"system_prompt": "Answer in French."})
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


LOOKUP = ToolCall("call_1", "lookup", '{"q": "answer"}')
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def test_a_replys_tool_exchange_fits_whole_then_with_its_results_cut_then_not_at_all() -> None:
    exchange = ToolExchange((ToolRound("Looking.", (LOOKUP,), ("x" * 3500,)),), answer_from=8)
    reply = row(2, "assistant", "Looking.\n\nIt is 42.", 5)
    reply = dataclasses.replace(reply, tool_exchange=exchange.encode())
    newest_first = [reply, row(1, "user", "what is it?", 5)]
    whole = exchange.tokens()

    def kept_exchange(budget: int, *, exchanges: bool = True) -> ToolExchange | None:
        kept = fit_rows(newest_first, budget, exchanges=exchanges)
        assert [r.id for r in kept] == [1, 2]  # the turns stay; only their tool results go
        return ToolExchange.decode(kept[1].tool_exchange)

    assert kept_exchange(10 + whole) == exchange
    shortened = kept_exchange(10 + whole - 1)
    assert shortened is not None and shortened.rounds[0].results[0].startswith(
        "x" * SHORT_RESULT_CHARS + "\n[shortened: 3200 more characters"
    )
    assert kept_exchange(12) is None
    assert kept_exchange(10 + whole, exchanges=False) is None  # tools are off: no exchange

    turns = prompt_turns(fit_rows(newest_first, 10 + whole, exchanges=True))
    request = build_request(
        api="chat",
        prompt_format="plain",
        system="SYS",
        history=turns,
        user_text="and?",
        settings=SETTINGS,
        bot_name="Parley",
        tools=TOOLS,
    )
    assert request.tools == TOOLS and request.messages[0]["content"] == f"SYS\n\n{TOOL_DATA_RULE}"
    assert [(m["role"], m["content"]) for m in request.messages[1:]] == [
        ("user", "what is it?"),
        ("assistant", "Looking."),
        ("tool", '<tool_result tool="lookup">\n' + "x" * 3500 + "\n</tool_result>"),
        ("assistant", "It is 42."),
        ("user", "and?"),
    ]
    assert request.messages[2]["tool_calls"][0]["id"] == request.messages[3]["tool_call_id"]
    raw = build_request(
        api="completion",
        prompt_format="plain",
        system="SYS",
        history=turns,
        user_text="and?",
        settings=SETTINGS,
        bot_name="Parley",
        tools=TOOLS,
    )
    assert raw.tools == [] and "tool_result" not in raw.prompt and "It is 42." in raw.prompt


def test_an_unreadable_stored_exchange_is_left_out() -> None:
    for junk in ("{", "[]", '{"rounds": [{"calls": 5}], "answer_from": 0}', '{"rounds": []}'):
        assert ToolExchange.decode(junk) is None


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
