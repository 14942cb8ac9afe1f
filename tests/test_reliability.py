"""Faults and hostile input at the core: floods, crashes, dead and hung backends, junk data."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import ParleyApp
from bot.app import load as load_settings
from bot.errors import ConfigError
from bot.messages import Msg, say
from bot.ratelimit import UserRateLimiter
from bot.sse import SSEDecoder, ThinkSplitter, parse_chunk
from bot.storage import SQLiteStore
from tests.conftest import make_settings, message
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.parley_process import parley_env, start_parley
from tests.fakes.targets import RecordingTarget

ROOT = Path(__file__).resolve().parent.parent


async def test_user_flood_gets_a_polite_answer_and_others_are_unaffected(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, engine={"user_messages_per_minute": 3}
    )
    async with ParleyApp(settings, speech=False) as parley:
        targets = [RecordingTarget() for _ in range(5)]
        for target in targets:
            await parley.engine.handle(message("spam", user="flooder"), target)
        other = RecordingTarget()
        await parley.engine.handle(message("hello", user="calm"), other)
    assert [bool(t.text) for t in targets] == [True, True, True, False, False]
    assert targets[4].notices == [say(Msg.SLOW_DOWN, limit=3)]
    assert other.text == "Hello from the fake model."
    assert len(fake_llm.requests) == 4


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = UserRateLimiter(2, clock=lambda: now[0])
    assert [limiter.allow("u") for _ in range(3)] == [True, True, False]
    now[0] += 30.0  # half a minute refills one message
    assert [limiter.allow("u") for _ in range(2)] == [True, False]
    assert UserRateLimiter(0).allow("anyone")


async def test_blocked_users_are_ignored(fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, llm={"base_url": fake_llm.url}, engine={"blocked_users": ["test:troll"]}
    )
    async with ParleyApp(settings, speech=False) as parley:
        target = RecordingTarget()
        await parley.engine.handle(message("hi", user="troll"), target)
        refusal = await parley.commands.run(message(user="troll", is_admin=True), "reset")
    assert target.calls == [] and target.notices == []
    assert refusal == "Sorry, you can't use this bot."
    assert fake_llm.requests == []


async def test_sigkill_mid_reply_loses_no_user_message(tmp_path: Path) -> None:
    """The bot process is killed while streaming; after a restart every user message is there."""
    db = tmp_path / "p.db"
    async with FakeLLMServer(Behaviour(reply="word " * 500, delay_s=0.01)) as llm:
        env = parley_env(PARLEY_LLM__BASE_URL=llm.url, PARLEY_STORAGE__PATH=str(db))
        proc = await start_parley("chat", env=env, stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first message\n")
        await proc.stdin.drain()
        seen = b""
        async with asyncio.timeout(60):
            while seen.count(b"word") < 300:  # long enough for a periodic save
                seen += await proc.stdout.read(1024)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        # A restart: migrations check the file, interrupted replies are marked, chat goes on.
        restarted = make_settings(tmp_path, llm={"base_url": llm.url}, storage={"path": str(db)})
        async with ParleyApp(restarted, speech=False) as p:
            llm.behaviour = Behaviour(reply="fine again")
            target = RecordingTarget(key="test:local")
            await p.engine.handle(message("second message", channel="local"), target)
            assert target.text == "fine again"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    assert [r[1] for r in rows if r[0] == "user"] == ["first message", "second message"]
    replies = [r for r in rows if r[0] == "assistant"]
    assert [r[2] for r in replies] == ["interrupted", "complete"]
    assert replies[0][1].startswith("word word")  # streamed text saved before the kill


async def test_hung_backend_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    async with FakeLLMServer(Behaviour(hang=True)) as llm:
        settings = make_settings(
            tmp_path, llm={"base_url": llm.url, "timeout_s": 0.5, "retries": 0, "concurrency": 1}
        )
        async with ParleyApp(settings, speech=False) as parley:
            stuck = RecordingTarget()
            await parley.engine.handle(message("hello?", channel="a"), stuck)
            assert stuck.notices and "can't reach" in stuck.notices[0]
            llm.behaviour = Behaviour(reply="back again")
            after = RecordingTarget()
            await asyncio.wait_for(parley.engine.handle(message("hi", channel="b"), after), 10)
    assert after.text == "back again"


async def test_backend_silent_mid_stream_keeps_the_partial(tmp_path: Path) -> None:
    async with FakeLLMServer(Behaviour(reply="one two three", delay_s=2.0)) as llm:
        settings = make_settings(tmp_path, llm={"base_url": llm.url, "timeout_s": 0.5})
        async with ParleyApp(settings, speech=False) as parley:
            target = RecordingTarget()
            await parley.engine.handle(message("hi"), target)
    assert target.text == f"one \n\n{say(Msg.LLM_TIMEOUT)}"


async def test_managed_server_killed_mid_stream_recovers(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        llm={"prompt_format": "chatml", "retries": 2, "backoff_s": 0.2},
        engine={"temperature": 0.0, "max_tokens": 400},
    )
    async with ParleyApp(settings, speech=False) as parley:
        assert parley.server is not None and parley.server.pid is not None
        target = RecordingTarget()
        reply = asyncio.create_task(parley.engine.handle(message("Tell me a story."), target))
        await target.first_text.wait()
        os.kill(parley.server.pid, signal.SIGKILL)
        await asyncio.wait_for(reply, 60)
        assert target.text.endswith(say(Msg.CUT_OFF)) and len(target.text) > len(say(Msg.CUT_OFF))
        row = (await parley.store.history(1, 10**9, 1))[0]
        assert row.status == "partial" and row.content
        # The server is restarted, and the next message is answered.
        parley.settings.engine.max_tokens = 16
        nxt = RecordingTarget()
        await asyncio.wait_for(parley.engine.handle(message("What is 2+2?"), nxt), 120)
        assert nxt.text and not nxt.notices
        assert parley.server.restarts == 1


async def test_retention_deletes_old_messages(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "p.db"))
    channel = await store.channel_id("test", "c")
    old = await store.start_turn(
        channel, author_id="u", author_name="U", content="old", token_count=1
    )
    await store.update_message(old.reply_row, content="old reply", status="complete")
    conn = sqlite3.connect(tmp_path / "p.db")
    conn.execute("UPDATE messages SET created_at = ?", (time.time() - 10 * 86400,))
    conn.commit()
    conn.close()
    await store.start_turn(channel, author_id="u", author_name="U", content="new", token_count=1)
    assert await store.purge_older_than(7) == 2
    assert [m.content for m in await store.history(channel, 10**9, 10)] == ["new"]
    await store.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=30))
def test_fuzz_sse_parser_never_crashes(lines: list[bytes]) -> None:
    decoder = SSEDecoder()
    splitter = ThinkSplitter()
    for line in lines:
        data = decoder.feed_line(line)
        if data is not None:
            chunk = parse_chunk(data)
            splitter.feed(chunk.text)
    splitter.flush()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.integers(1, 9))
def test_fuzz_think_splitter_is_independent_of_chunking(text: str, cut: int) -> None:
    def split(pieces: list[str]) -> tuple[str, str]:
        splitter = ThinkSplitter()
        out = [splitter.feed(p) for p in pieces] + [splitter.flush()]
        return "".join(a for a, _ in out), "".join(r for _, r in out)

    whole = split([text])
    assert split([text[i : i + cut] for i in range(0, len(text), cut)]) == whole
    # Nothing but the tags themselves is ever dropped.
    assert len(whole[0]) + len(whole[1]) >= len(
        text.replace(ThinkSplitter.OPEN, "").replace(ThinkSplitter.CLOSE, "")
    )


_toml_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_SECTIONS = ["llm", "engine", "storage", "stt", "tts", "telegram", "discord", "http", "logging"]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.dictionaries(
        st.sampled_from(_SECTIONS),
        st.dictionaries(st.sampled_from(["base_url", "timeout_s", "token", "path", "port", "x"]),
                        _toml_value, max_size=3),
        max_size=3,
    )
)  # fmt: skip
def test_fuzz_config_loader_only_raises_config_error(
    data: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    path = tmp_path / "fuzz.toml"
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines))
    try:
        load_settings(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("config: ") for p in exc.problems)


def _toml(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if value == value and abs(value) != float("inf") else "0"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"data: \xc3\x28\n"])
def test_sse_decoder_survives_invalid_utf8(raw: bytes) -> None:
    decoder = SSEDecoder()
    decoder.feed_line(raw)
    decoder.flush()
