"""The MQTT bridge, through a real mosquitto broker and a real MQTT 5 client as the device.

The bot is the real app with the real MQTT adapter, in this process, against the fake LLM; the
broker is Debian's mosquitto on a free loopback port (tests/fakes/mosquitto.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from adapters.mqtt.adapter import MqttAdapter
from adapters.mqtt.config import MqttSettings
from adapters.mqtt.errors import SubscriptionRefused, check_granted
from adapters.mqtt.limits import (
    MAX_SESSION_CHARS,
    MAX_USER_CHARS,
    SESSION_BURST,
    SESSION_EVENTS_PER_SECOND,
)
from adapters.mqtt.rules import (
    Request,
    Topics,
    Unreadable,
    read_request,
)
from bot.app import ParleyApp, load
from bot.backoff import Backoff
from bot.config import Settings
from bot.doctor import run_doctor
from bot.errors import ConfigError
from bot.messages import Msg, say
from bot.storage import open_store
from tests.conftest import make_settings, not_installed
from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.mosquitto import Device, Mosquitto, available, device, free_port
from tests.fakes.parley_process import ROOT, parley_env
from tests.fakes.platform_bots import echo_reply, echoed
from tests.fakes.tcp_proxy import TcpProxy

WORDS = 30  # a reply of this many words, streamed one per chunk
REPLY = " ".join(f"word{i}" for i in range(WORDS))
STATUS = "parley/status"


@pytest.fixture
def llm_behaviour() -> Behaviour:
    return Behaviour(reply=echo_reply)


def _broker(**kwargs: Any) -> Mosquitto:
    if not available():
        not_installed("mosquitto is not installed (scripts/setup.sh installs it)")
    return Mosquitto(**kwargs)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A running broker for this test."""
    server = _broker().start()
    try:
        yield server
    finally:
        server.remove()


def mqtt_settings(tmp_path: Path, llm_url: str, url: str, **mqtt: Any) -> Settings:
    return make_settings(
        tmp_path,
        llm={"base_url": llm_url, "retries": 0},
        engine={"voice_mode": "off"},
        mqtt={"url": url, **mqtt},
    )


@contextlib.asynccontextmanager
async def mqtt_bot(settings: Settings) -> AsyncIterator[tuple[ParleyApp, MqttAdapter]]:
    """ParleyApp + MqttAdapter, running for the block; reconnects within half a second."""
    async with ParleyApp(settings, speech=False) as app:
        adapter = MqttAdapter(app.services, backoff=Backoff(0.05, 0.5))
        await adapter.start()
        try:
            yield app, adapter
        finally:
            await adapter.stop()


async def online(dev: Device, adapter: MqttAdapter) -> None:
    await dev.wait_until(lambda: adapter.connected)


# -- requests and replies -------------------------------------------------------------------


async def test_a_reply_streams_as_coalesced_deltas_then_done(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=REPLY, delay_s=0.05)  # 1.5 s of streaming
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (_, adapter):
        await online(dev, adapter)
        await dev.ask("kitchen", "Tell me thirty words.")
        await dev.wait_until(lambda: dev.finals("parley/kitchen/out"))
    received = dev.on("parley/kitchen/out")
    *deltas, done = [m.event for m in received]
    assert done == {"type": "done", "text": REPLY, "status": "complete"}
    assert {e["type"] for e in deltas} == {"delta"}
    assert "".join(e["text"] for e in deltas) == REPLY
    # Coalesced: fewer events than chunks, and within the session's budget.
    assert 2 <= len(deltas) < WORDS
    span = received[-2].at - received[0].at
    assert len(deltas) <= SESSION_BURST + SESSION_EVENTS_PER_SECOND * span + 2
    assert last_user_text(fake_llm.requests[0]) == "Tell me thirty words."


async def test_the_second_turn_carries_the_first(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (app, adapter):
        await online(dev, adapter)
        await dev.ask("den", {"text": "My name is Ann.", "user": "ann"})
        await dev.wait_until(lambda: len(dev.finals("parley/den/out")) == 1)
        await dev.ask("den", "What is my name?")
        await dev.wait_until(lambda: len(dev.finals("parley/den/out")) == 2)
        channel = await app.store.channel_id("mqtt", "den")
        stored = await app.store.history(channel, 10**9, 10)
    assert [e["text"] for e in dev.finals("parley/den/out")] == [
        echoed("My name is Ann."),
        echoed("What is my name?"),
    ]
    second = json.dumps(fake_llm.requests[1])
    assert "My name is Ann." in second and echoed("My name is Ann.") in second
    assert [(m.role, m.content) for m in sorted(stored, key=lambda m: m.id)] == [
        ("user", "My name is Ann."),
        ("assistant", echoed("My name is Ann.")),
        ("user", "What is my name?"),
        ("assistant", echoed("What is my name?")),
    ]


async def test_a_reply_a_killed_process_left_open_gets_its_final_event_at_the_next_start(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    # What a process killed mid-reply leaves behind: a reply streaming, its first delta sent.
    store = await open_store(settings.storage)
    try:
        channel = await store.channel_id("mqtt", "porch")
        turn = await store.start_turn(
            channel, author_id="porch", author_name="porch", content="hi", token_count=1
        )
        await store.update_message(turn.reply_row, status="streaming", content="half a reply ")
        await store.part_shown(turn.reply_row, 0, "1")
    finally:
        await store.close()
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (app, adapter):
        await online(dev, adapter)
        await dev.wait_until(lambda: dev.finals("parley/porch/out"))
        assert await app.store.reply_parts(turn.reply_row) == [(0, "1", True)]
    assert [m.event for m in dev.on("parley/porch/out")] == [
        {"type": "notice", "text": say(Msg.REPLY_INTERRUPTED)},
        {"type": "done", "text": "half a reply", "status": "partial"},
    ]
    assert fake_llm.requests == []


async def test_a_sessions_turns_sent_at_once_are_answered_in_order(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    questions = [f"question {i}" for i in range(4)]
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (_, adapter):
        await online(dev, adapter)
        for question in questions:
            await dev.ask("hall", question)
        await dev.wait_until(lambda: len(dev.finals("parley/hall/out")) == len(questions))
    assert [e["text"] for e in dev.finals("parley/hall/out")] == [echoed(q) for q in questions]
    assert [last_user_text(r) for r in fake_llm.requests] == questions
    assert all(q in json.dumps(fake_llm.requests[-1]) for q in questions[:-1])


async def test_a_response_topic_is_answered_there_with_its_correlation_data(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    correlation = b"\x00request-7\xff"
    async with (
        device(broker, "parley/+/out", "devices/#") as dev,
        mqtt_bot(settings) as (_, adapter),
    ):
        await online(dev, adapter)
        await dev.ask(
            "lamp", "Lights?", response_topic="devices/lamp/answer", correlation=correlation
        )
        await dev.wait_until(lambda: dev.finals("devices/lamp/answer"))
        # A Response Topic Parley reads itself would loop: refused, on the session's topic.
        await dev.ask("lamp", "Again?", response_topic="parley/lamp/in", correlation=b"c2")
        await dev.wait_until(lambda: dev.finals("parley/lamp/out"))
    answers = dev.on("devices/lamp/answer")
    assert answers[-1].event == {"type": "done", "text": echoed("Lights?"), "status": "complete"}
    assert {m.correlation for m in answers} == {correlation}
    (refused,) = dev.on("parley/lamp/out")
    told = say(Msg.MQTT_BAD_RESPONSE_TOPIC, topic="parley/lamp/out")
    assert refused.event == {"type": "error", "message": told}
    assert refused.correlation == b"c2"
    assert [last_user_text(r) for r in fake_llm.requests] == ["Lights?"]


BAD_SHAPE = say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS)


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        ("parley/s1/in", b"\xff\xfe not text", say(Msg.MQTT_NOT_UTF8)),
        ("parley/s1/in", b"   ", say(Msg.MQTT_EMPTY)),
        ("parley/s1/in", b"{not json", say(Msg.MQTT_BAD_JSON)),
        ("parley/s1/in", b'{"text": 5}', say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS)),
        (
            "parley/s1/in",
            b'{"text": "hi", "user": ["x"]}',
            say(Msg.MQTT_BAD_SHAPE, limit=MAX_USER_CHARS),
        ),
        ("parley/s1/in", b'{"text": "a\\u0000b"}', say(Msg.MQTT_NOT_UTF8)),
        ("parley/bad session!/in", b"hello", say(Msg.MQTT_BAD_SESSION, limit=MAX_SESSION_CHARS)),
    ],
)
async def test_an_unreadable_request_gets_an_error_and_the_next_is_answered(
    tmp_path: Path,
    broker: Mosquitto,
    fake_llm: FakeLLMServer,
    topic: str,
    payload: bytes,
    message: str,
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    out = topic.removesuffix("/in") + "/out"
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (_, adapter):
        await online(dev, adapter)
        await dev.client.publish(topic, payload, qos=1)
        await dev.wait_until(lambda: dev.finals(out))
        await dev.ask("s1", "Still there?")
        await dev.wait_until(lambda: any(e["type"] == "done" for e in dev.finals("parley/s1/out")))
    assert dev.events(out)[0] == {"type": "error", "message": message}
    assert dev.finals("parley/s1/out")[-1]["text"] == echoed("Still there?")
    assert [last_user_text(r) for r in fake_llm.requests] == ["Still there?"]


async def test_commands_run_as_in_any_chat(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (_, adapter):
        await online(dev, adapter)
        for step, text in enumerate(["I like tea.", "/help", "/reset", "/ask What do I like?"]):
            await dev.ask("desk", text)
            await dev.wait_until(lambda: len(dev.finals("parley/desk/out")) == step + 1)  # noqa: B023
    _, help_, reset, asked = dev.finals("parley/desk/out")
    assert help_["type"] == "done" and "/reset" in help_["text"]
    assert reset["type"] == "done" and reset["status"] == "complete"
    assert asked["text"] == echoed("What do I like?")
    assert len(fake_llm.requests) == 2  # commands are no turns
    assert "I like tea." not in json.dumps(fake_llm.requests[-1])  # /reset forgot it


async def test_a_failed_reply_ends_in_an_error_event(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=REPLY, die_after_chunks=3)
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with device(broker, "parley/+/out") as dev, mqtt_bot(settings) as (_, adapter):
        await online(dev, adapter)
        await dev.ask("cut", "Go on.")
        await dev.wait_until(lambda: dev.finals("parley/cut/out"))
        fake_llm.behaviour = Behaviour(status=500)
        await dev.ask("down", "Anyone?")
        await dev.wait_until(lambda: dev.finals("parley/down/out"))
    *_, notice, done = dev.events("parley/cut/out")
    assert done["type"] == "done" and done["status"] == "partial"
    assert done["text"] == "word0 word1 word2"
    assert notice["type"] == "notice" and "cut off" in notice["text"]
    (error,) = dev.events("parley/down/out")
    assert error["type"] == "error" and "language model" in error["message"]


async def test_a_stop_mid_reply_ends_it_with_an_error_event_and_offline(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    fake_llm.behaviour = Behaviour(reply=REPLY, endless=True, delay_s=0.05)
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with device(broker, "parley/+/out", STATUS) as dev:
        async with mqtt_bot(settings) as (app, adapter):
            await online(dev, adapter)
            await dev.ask("long", "Talk for ever.")
            await dev.wait_until(lambda: dev.events("parley/long/out"))
            channel = await app.store.channel_id("mqtt", "long")
        # Leaving the block stopped the bridge: the reply had its grace period, then was cut.
        await dev.wait_until(lambda: dev.on(STATUS)[-1].payload == b"offline")
    *deltas, last = dev.events("parley/long/out")
    assert last == {"type": "error", "message": say(Msg.MQTT_STOPPING)}
    assert deltas and {e["type"] for e in deltas} == {"delta"}
    async with ParleyApp(settings, speech=False) as again:
        (reply, _) = await again.store.history(channel, 10**9, 2)
    assert reply.role == "assistant" and reply.status == "partial"
    assert reply.content.startswith("word0 word1")


# -- availability ---------------------------------------------------------------------------


async def test_the_status_is_retained_online_then_offline_at_a_clean_stop(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    settings = mqtt_settings(tmp_path, fake_llm.url, broker.url())
    async with mqtt_bot(settings) as (_, adapter):
        async with device(broker) as probe:
            await probe.wait_until(lambda: adapter.connected)
        async with device(broker, STATUS) as late:  # subscribes after: gets the retained value
            await late.wait_until(lambda: late.on(STATUS))
    async with device(broker, STATUS) as after:
        await after.wait_until(lambda: after.on(STATUS))
    assert [(m.payload, m.retain) for m in late.on(STATUS)] == [(b"online", True)]
    assert [(m.payload, m.retain) for m in after.on(STATUS)] == [(b"offline", True)]


async def test_a_lost_connection_sends_the_will_and_the_bot_reconnects(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer
) -> None:
    async with TcpProxy(broker.port) as proxy:
        via = f"mqtt://127.0.0.1:{proxy.port}"
        settings = mqtt_settings(tmp_path, fake_llm.url, via)
        async with device(broker, STATUS, "parley/+/out") as dev, mqtt_bot(settings) as (_, bot):
            await dev.wait_until(lambda: [m.payload for m in dev.on(STATUS)] == [b"online"])
            proxy.drop()  # no DISCONNECT: the broker publishes the will
            await dev.wait_until(lambda: len(dev.on(STATUS)) == 3)
            await dev.wait_until(lambda: bot.connected)
            await dev.ask("back", "Are you back?")
            await dev.wait_until(lambda: dev.finals("parley/back/out"))
    # ... and the last `offline` is the clean stop's.
    assert [m.payload for m in dev.on(STATUS)] == [b"online", b"offline", b"online", b"offline"]
    assert proxy.accepted >= 2
    assert dev.finals("parley/back/out")[0]["text"] == echoed("Are you back?")


async def test_a_broker_down_at_start_holds_up_nothing_and_is_joined_when_it_comes_up(
    tmp_path: Path, fake_llm: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fakes.telegram_api import FakeTelegramAPI

    broker = _broker(port=free_port())  # not started yet
    try:
        async with FakeTelegramAPI() as telegram:
            settings = make_settings(
                tmp_path,
                llm={"base_url": fake_llm.url, "retries": 0},
                engine={"voice_mode": "off"},
                mqtt={"url": broker.url()},
                telegram={
                    "token": telegram.token,
                    "api_base_url": f"{telegram.url}/bot",
                    "file_base_url": f"{telegram.url}/file/bot",
                },
            )
            from adapters.telegram.adapter import TelegramAdapter

            with caplog.at_level(logging.DEBUG, logger="adapters.mqtt"):
                async with mqtt_bot(settings) as (app, mqtt):
                    tg = TelegramAdapter(app.services, poll_timeout_s=1)
                    await tg.start()  # started after MQTT, which could not connect
                    try:
                        ann = telegram.user(7, "Ann")
                        chat = telegram.private_chat(ann)
                        telegram.send_text(chat, ann, "Hello there")
                        await _until(
                            lambda: _texts(telegram, chat["id"]) == [echoed("Hello there")]
                        )
                        assert not mqtt.connected
                        broker.start()
                        async with device(broker, "parley/+/out") as dev:
                            await online(dev, mqtt)
                            await dev.ask("late", "Now?")
                            await dev.wait_until(lambda: dev.finals("parley/late/out"))
                    finally:
                        await tg.stop()
    finally:
        broker.remove()
    assert dev.finals("parley/late/out")[0]["text"] == echoed("Now?")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([r for r in warnings if "cannot reach" in r.getMessage()]) == 1  # logged once


async def _until(predicate: Any, limit_s: float = 60.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.01)


def _texts(telegram: Any, chat_id: int) -> list[str]:
    return [m.text for m in telegram.bot_messages(chat_id)]


# -- secrets, the doctor, the settings ------------------------------------------------------

USER, PASSWORD = "parley", "mqtt-secret-Pw-7Kq9"


async def test_the_password_never_reaches_the_logs(
    tmp_path: Path, fake_llm: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = _broker(users={USER: PASSWORD}).start()
    try:
        good = mqtt_settings(tmp_path, fake_llm.url, broker.url(f"{USER}:{PASSWORD}"))
        bad = mqtt_settings(tmp_path, fake_llm.url, broker.url(f"{USER}:wrong-{PASSWORD}"))
        url = MqttSettings.of(good).url.get_secret_value()
        assert PASSWORD in good.secrets() and url in good.secrets()
        with caplog.at_level(logging.DEBUG):
            async with mqtt_bot(good) as (_, adapter):
                await _until(lambda: adapter.connected)
            async with mqtt_bot(bad) as (_, adapter):
                await _until(lambda: "refused the login" in caplog.text)
                assert not adapter.connected
    finally:
        broker.remove()
    assert PASSWORD not in caplog.text


async def test_the_doctor_checks_the_broker(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    import io

    from adapters import platforms

    mqtt = next(p for p in platforms() if p.name == "mqtt")
    broker = _broker(users={USER: PASSWORD}).start()
    try:
        good = mqtt_settings(tmp_path, fake_llm.url, broker.url(f"{USER}:{PASSWORD}"))
        bad = mqtt_settings(tmp_path, fake_llm.url, broker.url(f"{USER}:nope-{PASSWORD}"))
        (ok,) = await mqtt.check(good)
        (refused,) = await mqtt.check(bad)
        out = io.StringIO()
        await run_doctor(bad, [mqtt], out=out)
    finally:
        broker.remove()
    (down,) = await mqtt.check(mqtt_settings(tmp_path, fake_llm.url, broker.url()))
    assert ok.status == "ok" and f"127.0.0.1:{broker.port}" in ok.detail
    assert refused.status == "fail" and "refused the login" in refused.detail
    assert down.status == "fail" and "cannot reach" in down.detail
    assert PASSWORD not in out.getvalue() and "refused the login" in out.getvalue()


@pytest.mark.parametrize(
    ("mqtt", "problem"),
    [
        ({"url": "http://broker:1883"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://u:secret-pw@broker:1883/path"}, "without a path"),
        ({"url": "mqtt://u:secret-pw@:1883"}, "no broker host"),
        ({"url": "mqtt://broker", "topic_prefix": "home/+"}, "wildcards"),
        ({"url": "mqtt://broker", "topic_prefix": "home//parley"}, "topic levels"),
        ({"url": "mqtt://broker", "qos": 3}, "less than or equal to 2"),
        ({"token": "abc"}, "mqtt has no token"),
    ],
)
def test_bad_settings_are_refused_without_showing_the_url(
    tmp_path: Path, mqtt: dict[str, Any], problem: str
) -> None:
    config = tmp_path / "config.toml"
    lines = [f"{key} = {json.dumps(value)}" for key, value in mqtt.items()]
    config.write_text("[mqtt]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as refused:
        load(config)
    assert problem in str(refused.value)
    assert "secret-pw" not in str(refused.value)


def test_the_settings_read_the_broker_from_the_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mqtt={"url": "mqtts://dev%40home:p%3Ass@broker.lan"})
    broker = MqttSettings.of(settings).broker
    assert (broker.host, broker.port, broker.tls) == ("broker.lan", 8883, True)
    assert (broker.username, broker.password) == ("dev@home", "p:ss")
    assert {"p%3Ass", "p:ss"} <= set(settings.secrets())
    assert MqttSettings.of(settings).enabled
    assert not MqttSettings.of(make_settings(tmp_path)).enabled


# -- topics and payloads --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "request_"),
    [
        (b"  hello  ", Request("hello")),
        ("héllo ✓".encode(), Request("héllo ✓")),
        (b'{"text": " hi ", "user": "ann"}', Request("hi", "ann")),
        (b'{"text": "hi", "extra": 1}', Request("hi")),
        (b'["not", "an", "object"]', Request('["not", "an", "object"]')),
    ],
)
def test_a_request_is_text_or_a_json_object(payload: bytes, request_: Request) -> None:
    assert read_request(payload) == request_


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\n",
        b"\xc3",
        b'{"text": ""}',
        b'{"user": "x"}',
        b"{" * 100_000,
        b'{"text": "\\ud800"}',
    ],
)
def test_an_unreadable_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(Unreadable):
        read_request(payload)


def test_topics() -> None:
    topics = Topics("home/parley")
    assert topics.requests == "$share/parley/home/parley/+/in"
    assert topics.session_of("home/parley/kitchen/in") == "kitchen"
    assert topics.session_of("home/parley/a/b/in") is None
    assert topics.session_of("other/kitchen/in") is None
    assert topics.replies("kitchen") == "home/parley/kitchen/out"
    assert topics.answerable("devices/lamp/reply")
    for refused in ("", "home/parley/x/in", "home/parley/status", "a/+/b", "a/#", "$SYS/x"):
        assert not topics.answerable(refused), refused


# -- two processes on one broker and one PostgreSQL -----------------------------------------


class ParleyProcess:
    """One `python -m bot run` with only MQTT on; its log goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = await asyncio.to_thread(open, self.log_path, "ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=ROOT, env={**self.env, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"Parley exited:\n{self.log()[-3000:]}")
        return "MQTT: connected to" in self.log()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def test_two_processes_answer_each_request_once_and_keep_each_sessions_order(
    tmp_path: Path, broker: Mosquitto, fake_llm: FakeLLMServer, postgres_url: str
) -> None:
    fake_llm.behaviour = Behaviour(reply=echo_reply, delay_s=0.01)
    names = ["Parley One", "Parley Two"]  # in each request's system prompt: who asked the LLM
    bots = [
        ParleyProcess(
            parley_env(
                PARLEY_STORAGE__URL=postgres_url,
                PARLEY_LLM__BASE_URL=fake_llm.url,
                PARLEY_LLM__RETRIES="0",
                PARLEY_MQTT__URL=broker.url(),
                PARLEY_ENGINE__BOT_NAME=name,
                PARLEY_ENGINE__VOICE_MODE="off",
                PARLEY_STT__MODEL="tiny.en",
                PARLEY_TTS__BACKENDS='["espeak"]',
                NO_PROXY="127.0.0.1,localhost",
            ),
            tmp_path / f"parley{index}.log",
        )
        for index, name in enumerate(names)
    ]
    sessions = [f"room{i}" for i in range(6)]
    turns = 3
    try:
        for bot in bots:
            await bot.start()
        async with device(broker, "parley/+/out") as dev:
            await dev.wait_until(lambda: all(bot.ready() for bot in bots), limit_s=120)
            # Every session's turns go out back to back, the sessions interleaved.
            for turn in range(turns):
                for session in sessions:
                    await dev.ask(session, f"{session} turn {turn}")
            await dev.wait_until(
                lambda: all(len(dev.finals(f"parley/{s}/out")) == turns for s in sessions),
                limit_s=120,
            )
            await asyncio.sleep(0.5)  # a second answer to a request would show by now
    finally:
        for bot in bots:
            await bot.stop()
    rows = await _mqtt_rows(postgres_url)
    asked = [last_user_text(r) for r in fake_llm.requests]
    assert sorted(asked) == sorted(f"{s} turn {t}" for s in sessions for t in range(turns))
    # Both processes took requests (mosquitto hands the shared subscription's out in turn).
    assert all(any(name in json.dumps(r) for r in fake_llm.requests) for name in names)
    for session in sessions:
        finals = dev.finals(f"parley/{session}/out")
        assert len(finals) == turns and {f["status"] for f in finals} == {"complete"}
        stored = [r["content"] for r in rows if r["channel_key"] == session and r["role"] == "user"]
        # The replies came in the store's turn order, and each turn's prompt held every turn
        # stored before it in that session.
        assert [f["text"] for f in finals] == [echoed(q) for q in stored]
        prompts = {last_user_text(r): json.dumps(r) for r in fake_llm.requests}
        for index, question in enumerate(stored):
            assert all(earlier in prompts[question] for earlier in stored[:index])
    assert {r["status"] for r in rows if r["role"] == "assistant"} == {"complete"}


async def _mqtt_rows(postgres_url: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        return list(
            await conn.fetch(
                "SELECT c.channel_key, m.role, m.status, m.content FROM messages m"
                " JOIN channels c ON c.id = m.channel_id WHERE c.platform = 'mqtt' ORDER BY m.id"
            )
        )
    finally:
        await conn.close()


def test_a_subscription_refused_in_the_suback_is_an_error() -> None:
    # mosquitto's acl_file grants every subscription and filters deliveries; other brokers
    # (EMQX, HiveMQ) refuse in the SUBACK, which the bridge reports rather than announcing online.
    granted = ReasonCode(PacketTypes.SUBACK, identifier=1)  # granted QoS 1
    refused = ReasonCode(PacketTypes.SUBACK, identifier=0x87)  # not authorized
    check_granted([granted], "parley/+/in")
    with pytest.raises(SubscriptionRefused, match=r"parley/\+/in \(Not authorized\)"):
        check_granted([granted, refused], "parley/+/in")
