"""Conversations people keep, end to end on every platform: memory, group background,
named sessions. The real python-telegram-bot / discord.py against their loopback fakes; the fake
LLM records every request, so a test reads exactly what the model was shown.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pyromark
import pytest

from bot.app import ParleyApp
from bot.prompt import BACKGROUND_HEADING, MEMORY_HEADING
from bot.sessions import export_markdown
from bot.storage import StoredMessage
from bot.types import IncomingMessage
from tests.conftest import message
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.drivers import Person, PlatformDriver
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.platform_bots import discord_bot, discord_settings, echo_reply, echoed
from tests.fakes.stored import stored_rows
from tests.fakes.waits import eventually

pytestmark = pytest.mark.platform  # `make test` runs these again on PostgreSQL

OPTION_STRING = 3  # Discord's application command option type for text


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


def system_of(body: dict[str, Any]) -> str:
    """The system message of a chat request: persona, memory, background."""
    first = body["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def background_rows(tmp_path: Path) -> list[tuple[str, str]]:
    """(author, text) of the background messages stored, oldest first."""
    return stored_rows(
        tmp_path / "parley.db",
        "SELECT author_name, content FROM messages WHERE status = 'background' ORDER BY id",
    )


async def ask(
    driver: PlatformDriver,
    llm: FakeLLMServer,
    person: Person,
    text: str,
    *,
    group: bool = False,
) -> dict[str, Any]:
    """`person` asks `text`; waits for the answer; returns the LLM request it took."""
    before = len(llm.requests)
    answered = driver.replies(person, group=group).count(echoed(text))
    await driver.say(person, text, group=group)
    await driver.wait_until(
        lambda: driver.replies(person, group=group).count(echoed(text)) > answered
    )
    (request,) = llm.requests[before:]
    return request


def fact_ids(listing: str) -> dict[str, int]:
    """`/memory show`'s answer as {fact: id}."""
    return {
        m[2]: int(m[1])
        for m in re.finditer(r"^#(\d+)(?: \(also in groups\))? (.+)$", listing, re.M)
    }


async def test_a_fact_survives_reset_and_restart_and_reaches_a_later_prompt(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    settings = driver.settings(tmp_path, fake_llm.url)
    async with driver.running(settings):
        answer = await driver.command(ann, "remember", "My cat is called Mimi")
        assert answer.startswith("I'll remember that (#")
        await ask(driver, fake_llm, ann, "Hello there")
        assert "Conversation cleared" in await driver.command(ann, "reset")
    async with driver.running(settings):  # a restart: a new app on the same database
        request = await ask(driver, fake_llm, ann, "What is my cat called?")
    system = system_of(request)
    assert f"{MEMORY_HEADING}\nFacts Ann asked you to remember" in system
    assert "\n- My cat is called Mimi" in system
    assert "Hello there" not in str(request)  # the reset conversation is gone; the fact is not
    assert last_user_text(request) == "What is my cat called?"


async def test_memory_forget_removes_a_fact_from_every_later_prompt(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await driver.command(ann, "remember", "I play the cello")
        await driver.command(ann, "remember", "I live in Lyon")
        ids = fact_ids(await driver.command(ann, "memory show"))
        assert set(ids) == {"I play the cello", "I live in Lyon"}
        forgot = await driver.command(ann, "memory forget", str(ids["I play the cello"]))
        assert forgot == f"Forgot fact #{ids['I play the cello']}."
        first = await ask(driver, fake_llm, ann, "Suggest a concert near me")
        second = await ask(driver, fake_llm, ann, "Which cello pieces do I play?")
        assert await driver.command(ann, "memory forget", "all") == "Forgot 1 fact."
        third = await ask(driver, fake_llm, ann, "Where do I live?")
        listing = await driver.command(ann, "memory show")
    assert "I live in Lyon" in system_of(first) and "I live in Lyon" in system_of(second)
    assert all("cello" not in system_of(r) for r in (first, second, third))
    assert MEMORY_HEADING not in system_of(third)
    assert listing.startswith("I don't remember anything about you yet")


async def test_forget_also_forgets_every_fact_about_the_caller(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await driver.command(ann, "remember", "My cat is called Mimi")
        await driver.command(bob, "remember", "My dog is called Rex")
        await ask(driver, fake_llm, ann, "Hello")
        forgot = await driver.command(ann, "forget")
        ann_after = await ask(driver, fake_llm, ann, "What is my cat called?")
        bob_after = await ask(driver, fake_llm, bob, "What is my dog called?")
    assert forgot.endswith(" I also forgot the 1 fact you asked me to remember.")
    assert "Mimi" not in str(ann_after) and MEMORY_HEADING not in system_of(ann_after)
    assert "Rex" in system_of(bob_after)  # someone else's /forget leaves Bob's facts alone


async def test_another_users_memory_never_appears_and_a_fact_is_private_by_default(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await driver.command(ann, "remember", "My cat is called Mimi")
        await driver.command(ann, "remember", "I work at the harbour")
        ids = fact_ids(await driver.command(ann, "memory show"))
        shared = await driver.command(ann, "memory share", str(ids["I work at the harbour"]))
        assert shared == f"I'll use fact #{ids['I work at the harbour']} in groups too."
        question = "What is my cat called and where do I work?"
        bob_private = await ask(driver, fake_llm, bob, question)
        bob_group = await ask(driver, fake_llm, bob, question, group=True)
        ann_group = await ask(driver, fake_llm, ann, question, group=True)
        ann_private = await ask(driver, fake_llm, ann, question)
        # In a group, the list of someone's facts is not shown where others could read it.
        in_group = await driver.command(ann, "memory show", group=True)
    for request in (bob_private, bob_group):
        assert "Mimi" not in str(request) and "harbour" not in str(request)
    assert "harbour" in system_of(ann_group) and "Mimi" not in system_of(ann_group)
    assert "harbour" in system_of(ann_private) and "Mimi" in system_of(ann_private)
    if driver.name == "telegram":  # Discord answers /memory privately (ephemeral) everywhere
        assert in_group.startswith("To keep them private") and "Mimi" not in in_group


async def test_an_unaddressed_group_message_is_background_in_the_next_prompt(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await driver.chatter(bob, "my cat is called Mimi")
        await driver.chatter(ann, "let's get pizza tonight")
        await eventually(lambda: len(background_rows(tmp_path)) == 2)
        request = await ask(driver, fake_llm, ann, "what did Bob say about his cat?", group=True)
        private = await ask(driver, fake_llm, ann, "anything new?")
    system = system_of(request)
    background = system[system.index(BACKGROUND_HEADING) :]
    assert "not addressed to you" in background
    assert background.endswith("\n- Bob: my cat is called Mimi\n- Ann: let's get pizza tonight")
    assert last_user_text(request) == "what did Bob say about his cat?"
    # The chatter itself was never a turn: no answer, no LLM request, not in the history.
    assert driver.replies(group=True) == [echoed("what did Bob say about his cat?")]
    assert len(fake_llm.requests) == 2
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert "Mimi" not in str(private)  # a private chat has no group background


async def test_group_context_off_keeps_no_background(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann, bob = driver.person("Ann"), driver.person("Bob")
    settings = driver.settings(tmp_path, fake_llm.url, engine={"group_context": False})
    async with driver.running(settings):
        await driver.chatter(bob, "my cat is called Mimi")
        request = await ask(driver, fake_llm, ann, "what did Bob say about his cat?", group=True)
    assert "Mimi" not in str(request) and BACKGROUND_HEADING not in system_of(request)
    assert background_rows(tmp_path) == []
    assert driver.replies(group=True) == [echoed("what did Bob say about his cat?")]


async def test_sessions_keep_the_earlier_conversation_and_export_it_as_a_file(
    tmp_path: Path, driver: PlatformDriver, fake_llm: FakeLLMServer
) -> None:
    ann = driver.person("Ann")
    async with driver.running(driver.settings(tmp_path, fake_llm.url)):
        await ask(driver, fake_llm, ann, "Let's plan the trip to Oslo")
        started = await driver.command(ann, "session new", "work")
        assert started.startswith("Started a new conversation, “work”. The one before is kept")
        fresh = await ask(driver, fake_llm, ann, "What were we planning?")
        assert (await driver.command(ann, "session resume", "main")).startswith("Back to “main”")
        resumed = await ask(driver, fake_llm, ann, "And which day do we leave?")
        listing = await driver.command(ann, "session list")
        await driver.command(ann, "session export")
        await driver.wait_until(lambda: driver.files(ann))
        assert (await driver.command(ann, "session resume", "work")).startswith("Back to “work”")
        back_at_work = await ask(driver, fake_llm, ann, "Remind me")
    assert "Oslo" not in str(fresh)  # a new conversation starts empty
    assert [m["content"] for m in resumed["messages"][1:]] == [
        "Let's plan the trip to Oslo",
        echoed("Let's plan the trip to Oslo"),
        "And which day do we leave?",
    ]
    assert "What were we planning?" in str(back_at_work) and "Oslo" not in str(back_at_work)
    assert "• main — 4 messages" in listing and "(current)" in listing
    assert "• work — 2 messages" in listing
    (export,) = driver.files(ann)
    text = export.decode()
    assert text.startswith("# Parley conversation “main”")
    assert text.index("Let's plan the trip to Oslo") < text.index("And which day do we leave?")
    assert "What were we planning?" not in text


HOSTILE_NAMES = [
    "Ann **not bold** me",
    "_under_score_",
    "back`tick` and ```fence",
    "two\nlines\n# and a heading",
    "[a link](http://evil.test) <b>tag</b> &amp;",
    "a \\ backslash and a trailing star*",
    "~~struck~~ | pipe | !",
]


def test_the_export_escapes_names_so_they_cannot_break_the_format() -> None:
    rows = [
        StoredMessage(n, "user", f"u{n}", name, f"message {n}", "complete", 1, 1e9 + n)
        for n, name in enumerate(HOSTILE_NAMES)
    ]
    rows.append(StoredMessage(99, "assistant", "bot", "", "the answer", "complete", 1, 2e9))
    export = export_markdown(
        rows, session="my_trip", chat="telegram *chat* `1`", bot_name="Bot **Star**_", now=2e9
    )
    page = pyromark.html(export.data.decode())
    names = re.findall(r"<strong>(.*?)</strong>", page, flags=re.S)
    shown = [" ".join(name.split()) for name in [*HOSTILE_NAMES, "Bot **Star**_"]]
    assert [html.unescape(name) for name in names] == shown
    # Each message is its own paragraph after its author line; nothing else became markup.
    for n in range(len(HOSTILE_NAMES)):
        assert f"<p>message {n}</p>" in page
    assert page.count("<h1>") == 1 and "<h1>Bot **Star**_ conversation “my_trip”</h1>" in (
        html.unescape(page)
    )
    for markup in ("<em>", "<code>", "<a ", "<b>", "<del>", "<h2", "<table", "<pre>"):
        assert markup not in page, markup
    assert "telegram *chat* `1`" in html.unescape(page)


async def test_discord_renders_the_new_commands_with_their_options(
    tmp_path: Path, discord: FakeDiscord, fake_llm: FakeLLMServer
) -> None:
    async with discord_bot(discord_settings(tmp_path, discord, fake_llm.url)):
        registered = {c["name"]: c for c in discord.commands[None]}

    def options(command: dict[str, Any]) -> dict[str, Any]:
        return {o["name"]: o for o in command.get("options", [])}

    (fact,) = options(registered["remember"]).values()
    assert (fact["name"], fact["type"], fact["required"]) == ("fact", OPTION_STRING, True)
    memory = options(registered["memory"])
    assert set(memory) == {"show", "forget", "share", "private"}
    for verb in ("forget", "share", "private"):
        (fact_id,) = memory[verb]["options"]
        assert (fact_id["name"], fact_id["required"]) == ("id", True)
    session = options(registered["session"])
    assert set(session) == {"new", "list", "resume", "export"}
    assert [(o["name"], o.get("required", False)) for o in session["new"]["options"]] == [
        ("name", False)
    ]
    assert [(o["name"], o["required"]) for o in session["resume"]["options"]] == [("name", True)]


async def test_session_commands_name_check_and_refuse(app: ParleyApp) -> None:
    def owner() -> IncomingMessage:
        return message(is_private=True, channel="dm")

    async def run(msg: IncomingMessage, args: str) -> str:
        return await app.commands.run(msg, "session", args)

    assert (await run(owner(), "")).startswith("This chat's conversations:\n• main — 0 messages")
    assert (
        await run(owner(), "export")
    ) == "This conversation (“main”) is empty: nothing to export yet."
    assert "“session-2”" in await run(owner(), "new")
    assert "“session-3”" in await run(owner(), "new")
    assert "/session resume session-2" in await run(owner(), "new session-2")  # taken
    assert (await run(owner(), "new no spaces!")).startswith("A conversation's name is one word")
    assert (await run(owner(), "resume nope")).startswith("There is no conversation called “nope”")
    assert (await run(owner(), "resume SESSION-2")) == "Back to “session-2” (0 messages)."
    # In a group, starting or resuming a conversation is for admins.
    group = message(channel="group")
    assert await run(group, "new x") == "Sorry, only admins can use /session new here."
    assert await run(group, "resume main") == "Sorry, only admins can use /session resume here."
    assert (await run(message(channel="group", is_admin=True), "new x")).startswith("Started")
