"""What is read aloud: Markdown stripped, code dropped, streamed text cut into sentences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.speech.text import SentenceSplitter
from bot.speech.tts import speakable_text


def split_streamed(text: str, chunk: int = 1) -> list[str]:
    splitter = SentenceSplitter()
    sentences: list[str] = []
    for start in range(0, len(text), chunk):
        sentences += splitter.feed(text[start : start + chunk])
    return sentences + splitter.flush()


def test_markdown_is_stripped_to_plain_sentences() -> None:
    markdown = (
        "# Getting started\n"
        "This is **bold**, _italic_ and ~~gone~~ text with a [link](https://example.com).\n"
        "- first item\n"
        "2. second item\n"
        "> a quote\n"
        "Call `snake_case_name` today 🎉"
    )
    assert speakable_text(markdown) == (
        "Getting started. This is bold, italic and gone text with a link. first item. "
        "second item. a quote. Call snake_case_name today."
    )


def test_code_blocks_urls_and_tables_are_not_read_aloud() -> None:
    markdown = (
        "Run this:\n"
        "```python\n"
        "print('secret code. Never spoken.')\n"
        "```\n"
        "| name | value |\n"
        "|------|:-----:|\n"
        "| a | 1 |\n"
        "Docs at https://example.com/docs.\n"
        "~~~\n"
        "more code\n"
        "~~~\n"
        "---\n"
        "Done!"
    )
    spoken = speakable_text(markdown)
    assert "print" not in spoken and "code" not in spoken
    assert "http" not in spoken and "|" not in spoken and "-" not in spoken
    assert spoken == "Run this: name value. a 1. Docs at. Done!"


def test_nothing_speakable_gives_empty_text() -> None:
    assert speakable_text("```\nonly code\n```") == ""
    assert speakable_text("---\n\n   \n") == ""
    assert speakable_text("...\n:)\n—") == ""


def test_streamed_text_is_cut_at_each_complete_sentence() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(".") == []  # "there." might still become "there.5"
    assert splitter.feed(" How are") == ["Hello there."]
    assert splitter.feed(" you? I am") == ["How are you?"]
    assert splitter.feed(" fine") == []
    assert splitter.flush() == ["I am fine"]


def test_a_live_reply_starts_with_its_first_clause_of_a_few_words() -> None:
    splitter = SentenceSplitter(first_clause_words=4)
    assert splitter.feed("Yes, Paris is") == []  # "Yes," is too short to say on its own
    assert splitter.feed(" the capital of France, with") == ["Yes, Paris is the capital of France,"]
    assert splitter.feed(" 3,5 million people; it is big, old") == []  # then whole sentences
    assert splitter.feed(" and busy. More") == ["with 3,5 million people; it is big, old and busy."]
    assert splitter.flush() == ["More"]
    assert SentenceSplitter().feed("Yes, Paris is the capital of France, and ") == []


def test_lines_end_sentences_but_list_numbers_and_abbreviations_do_not() -> None:
    text = "## Plan\n1. Buy apples, e.g. red ones. Then rest\n2. Sleep well\nDr. Who arrives."
    assert split_streamed(text) == [
        "Plan",
        "Buy apples, e.g. red ones.",
        "Then rest",
        "Sleep well",
        "Dr. Who arrives.",
    ]


def test_code_block_arriving_in_pieces_is_never_spoken() -> None:
    text = (
        "Here is code:\n```python\nprint('Do not read me. Really.')\n# a comment.\n```\n"
        "That is all."
    )
    for chunk in (1, 2, 3, 7, len(text)):
        assert split_streamed(text, chunk) == ["Here is code:", "That is all."]


def test_an_unclosed_code_block_stays_silent() -> None:
    assert split_streamed("Look.\n```\nx = 1. y = 2.\nstill code") == ["Look."]


def test_inline_backticks_at_a_line_start_are_not_a_fence() -> None:
    assert split_streamed("`ls` lists files. Try it.") == ["ls lists files.", "Try it."]


_PIECES = st.sampled_from(
    [
        "Hi",
        "there",
        ".",
        "!",
        "?",
        " ",
        "\n",
        "```",
        "~~~",
        "`",
        "1.",
        "e.g.",
        "**",
        "-",
        "Dr.",
        "a",
    ]
)


@given(
    text=st.lists(_PIECES, max_size=40).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_sentences_do_not_depend_on_how_the_stream_is_chunked(text: str, cuts: list[int]) -> None:
    splitter = SentenceSplitter()
    streamed: list[str] = []
    previous = 0
    for cut in sorted({min(cut, len(text)) for cut in cuts}):
        streamed += splitter.feed(text[previous:cut])
        previous = cut
    streamed += splitter.feed(text[previous:]) + splitter.flush()
    assert streamed == split_streamed(text, chunk=len(text) or 1)
