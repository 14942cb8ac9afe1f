"""The admin console's read queries, on both storage backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

from bot.admin import queries
from bot.storage import Store


async def say(store: Store, platform: str, chat: str, text: str, reply: str = "ok") -> int:
    """One answered turn in a chat; returns the chat's id."""
    channel = await store.channel_id(platform, chat)
    turn = await store.start_turn(
        channel, author_id="u1", author_name="Ann", content=text, token_count=3
    )
    await store.update_message(turn.reply_row, content=reply, status="complete", token_count=1)
    return channel


async def test_chats_come_by_last_activity_with_their_counts(store: Store) -> None:
    first = await say(store, "telegram", "1", "hello")
    second = await say(store, "discord", "2", "hi there")
    await say(store, "telegram", "1", "back again", reply="welcome back")
    empty = await store.channel_id("web", "admin")  # a chat without messages yet
    chats = await queries.list_chats(store, limit=10)
    assert [c.id for c in chats] == [empty, first, second]
    by_id = {c.id: c for c in chats}
    assert (by_id[first].messages, by_id[first].preview) == (4, "welcome back")
    assert (by_id[second].messages, by_id[empty].messages) == (2, 0)
    assert await queries.count_chats(store) == 3
    assert [c.id for c in await queries.list_chats(store, limit=1, offset=2)] == [second]
    chat = await queries.get_chat(store, first)
    assert chat is not None and (chat.platform, chat.channel_key, chat.messages) == (
        "telegram",
        "1",
        4,
    )
    assert await queries.get_chat(store, 99_999) is None


async def test_a_chats_messages_page_backwards_oldest_first(store: Store) -> None:
    for n in range(3):
        channel = await say(store, "telegram", "7", f"question {n}", reply=f"answer {n}")
    rows = await queries.chat_messages(store, channel, limit=4)
    assert [r.content for r in rows] == ["question 1", "answer 1", "question 2", "answer 2"]
    assert (
        rows[1].role == "assistant" and rows[1].latency_s is not None and rows[0].latency_s is None
    )
    older = await queries.chat_messages(store, channel, limit=4, before=rows[0].id)
    assert [r.content for r in older] == ["question 0", "answer 0"]


async def test_search_is_case_insensitive_and_takes_wildcards_literally(store: Store) -> None:
    await say(store, "telegram", "1", "Is it 100% SURE?")
    await say(store, "discord", "2", "a_b and more")
    hits = await queries.search_messages(store, "sure", limit=10)
    assert [(h.message.content, h.platform, h.channel_key) for h in hits] == [
        ("Is it 100% SURE?", "telegram", "1")
    ]
    assert [h.message.content for h in await queries.search_messages(store, "0%", limit=10)] == [
        "Is it 100% SURE?"
    ]
    assert await queries.search_messages(store, "1_0", limit=10) == []
    assert [h.message.content for h in await queries.search_messages(store, "a_b", limit=10)] == [
        "a_b and more"
    ]


async def test_the_audit_log_pages_newest_first_per_chat_or_all(store: Store) -> None:
    one = await store.channel_id("telegram", "1")
    two = await store.channel_id("discord", "2")
    for value in (0.5, 0.9):
        await store.set_channel_setting(
            one, "temperature", value, actor_id="a", actor_name="Admin", old=0.7
        )
    await store.audit(two, actor_id="b", actor_name="Bo", action="config.refused", key="persona")
    await store.audit(None, actor_id="c", actor_name="Cy", action="forget")
    rows = await queries.audit_page(store, limit=3)
    assert [r.action for r in rows] == ["forget", "config.refused", "config.set"]
    assert (rows[1].platform, rows[1].channel_key, rows[0].platform) == ("discord", "2", None)
    assert rows[2].new_shown == "0.9" and rows[2].old_shown == "0.7"
    older = await queries.audit_page(store, limit=3, before=rows[-1].id)
    assert [r.new_shown for r in older] == ["0.5"]
    assert [r.channel_id for r in await queries.audit_page(store, limit=9, channel_id=one)] == [
        one,
        one,
    ]
