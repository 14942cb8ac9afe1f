"""The admin console's pages and actions: what they show, what they change, what they never show."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import socket
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bot.admin.config_view import describe_settings, mask_url
from bot.admin.console import AdminConsole
from bot.admin.exposure import exposure_warning
from bot.admin.passwords import password_file
from bot.admin.queries import chat_messages
from bot.admin.sessions import SESSION_COOKIE
from bot.app import ParleyApp, load
from bot.config import HTTPSettings
from bot.doctor import check_config
from bot.http_server import OpsServer
from bot.llm_pool import DEFAULT_SLOTS
from tests.conftest import make_settings, message
from tests.fakes.admin_client import (
    PASSWORD,
    AdminClient,
    RunningConsole,
    admin_sections,
    read_events,
    running_console,
)
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.targets import RecordingTarget
from tests.test_secrets import database_bytes, debug_logs, leaks

TELEGRAM_TOKEN = "7312345678:AAF-secret-telegram-token-xyz"
DISCORD_TOKEN = "MTEwMDAw.secret-discord-token.xyz"
API_KEY = "sk-parley-secret-api-key-xyz"
LLM_URL_PASSWORD = "url-secret-password-xyz"
_ROW = re.compile(r"<tr><th scope=\"row\"><code>([^<]+)</code></th>\s*<td[^>]*>([^<]*)</td>\s*"
                  r"<td[^>]*><span class=\"badge source-[a-z-]+\">([a-z-]+)</span>")  # fmt: skip


def page_text(markup: str) -> str:
    """A page's visible text, roughly: tags dropped, entities decoded, spaces squeezed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


async def signed_in(running: RunningConsole) -> AdminClient:
    client = AdminClient(running.url)
    status, body, _ = await client.login()
    assert status == 303, body
    return client


async def test_conversations_are_listed_by_last_activity_and_searchable(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running:
        engine = running.app.engine
        await engine.handle(
            message("first chat says 100% sure", channel="older"), RecordingTarget()
        )
        await engine.handle(message("the newest question", channel="newer"), RecordingTarget())
        client = await signed_in(running)
        async with client:
            status, body, _ = await client.get("/admin/chats")
            assert status == 200
            text = page_text(body)
            assert text.index("test newer") < text.index("test older")
            assert "2 chats" in text
            # One chat's messages: author, status, tokens and the reply's latency.
            older = await running.app.store.channel_id("test", "older")
            status, body, _ = await client.get(f"/admin/chats/{older}")
            rows = re.findall(r"<tr id=\"m\d+\".*?</tr>", body, flags=re.S)
            assert len(rows) == 2
            user_row, reply_row = (page_text(row) for row in rows)
            assert "user u1" in user_row and "complete" in user_row
            assert "first chat says 100% sure" in user_row
            assert "Hello from the fake model." in reply_row and re.search(r"\d+ ms", reply_row)
            # Search: case-insensitive, with % taken literally.
            status, body, _ = await client.get("/admin/chats?q=NEWEST")
            assert "the newest question" in page_text(body) and "1 message" in page_text(body)
            status, body, _ = await client.get("/admin/chats?q=100%25")
            assert "first chat says" in page_text(body)
            status, body, _ = await client.get("/admin/chats?q=10_%25")
            assert "Nothing found" in page_text(body)
            status, _, _ = await client.get("/admin/chats/999")
            assert status == 404


async def test_a_chats_page_shows_the_session_of_each_message_and_filters_by_session(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running:
        engine, store = running.app.engine, running.app.store
        await engine.handle(message("before the trip"), RecordingTarget())
        chat = await store.channel_id("test", "c1")
        trip = await store.new_session(chat, "trip", actor_id="u1", actor_name="U1")
        assert trip is not None
        await engine.handle(message("packing list please"), RecordingTarget())
        client = await signed_in(running)
        async with client:
            _, body, _ = await client.get(f"/admin/chats/{chat}")
            rows = [page_text(row) for row in re.findall(r"<tr id=\"m\d+\".*?</tr>", body, re.S)]
            assert len(rows) == 4
            assert [row.split()[2] for row in rows] == ["main", "main", "trip", "trip"]
            assert "before the trip" in rows[0] and "packing list please" in rows[2]
            assert "trip (2 shown, current)" in page_text(body)
            # One session only.
            _, body, _ = await client.get(f"/admin/chats/{chat}?session={trip.id}")
            rows = [page_text(row) for row in re.findall(r"<tr id=\"m\d+\".*?</tr>", body, re.S)]
            assert len(rows) == 2 and all(row.split()[2] == "trip" for row in rows)
            assert "packing list please" in rows[0]
            _, body, _ = await client.get(f"/admin/chats/{chat}?session=0")
            assert "before the trip" in body and "packing list please" not in body
            # Numbers past what the database holds are no row: never an error.
            huge = "99999999999999999999999"
            for path in (
                f"/admin/chats/{huge}",
                f"/admin/chats/{huge}/settings",
                f"/admin/chats/{chat}?before={huge}&session={huge}",
                f"/admin/chats?page={huge}",
                f"/admin/audit?chat={huge}&before={huge}",
                f"/admin/chats/{chat}?before=-{huge}",
            ):
                status, body, _ = await client.get(path)
                assert status == (404 if path.startswith(f"/admin/chats/{huge}") else 200), path
                assert "Internal Server Error" not in body


async def test_a_chat_setting_is_changed_with_the_config_set_rules_and_audited(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running:
        store = running.app.store
        await running.app.engine.handle(message("hello"), RecordingTarget())
        chat = await store.channel_id("test", "c1")
        client = await signed_in(running)
        async with client:
            path = f"/admin/chats/{chat}/settings"
            await client.get(path)
            for key, value, why in (
                ("temperature", "7", "less than or equal to 2"),
                ("voice_mode", "sometimes", "off"),
                ("nonsense", "1", "unknown key"),
            ):
                status, body, _ = await client.post(
                    path, {"csrf_token": client.csrf, "key": key, "value": value}
                )
                assert status == 400 and why in page_text(body), (key, page_text(body))
            assert await store.channel_settings(chat) == {}
            status, _, resp = await client.post(
                path, {"csrf_token": client.csrf, "key": "temperature", "value": "1.25"}
            )
            assert status == 303
            status, body, _ = await client.get(resp.headers["Location"])
            assert "Saved: temperature is now 1.25" in page_text(body)
            assert await store.channel_settings(chat) == {"temperature": 1.25}
            # The next reply uses it.
            await running.app.engine.handle(message("again"), RecordingTarget())
            assert fake_llm.requests[-1]["temperature"] == 1.25
            # The audit log shows who changed what, as for /config set.
            (row,) = await store.audit_rows(chat)
            assert (row["action"], row["key"], row["old_value"], row["new_value"]) == (
                "config.set",
                "temperature",
                "0.7",
                "1.25",
            )
            assert row["actor_name"] == "admin console (127.0.0.1)"
            status, body, _ = await client.get(f"/admin/audit?chat={chat}")
            text = page_text(body)
            assert "config.set temperature 0.7 1.25" in text
            assert "admin console (127.0.0.1)" in text


async def test_global_settings_show_where_each_value_came_from_and_mask_secrets(
    fake_llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[engine]\nbot_name = "FileBot"\n[telegram]\ntoken = "' + TELEGRAM_TOKEN + '"\n'
    )
    environ = {
        "PARLEY_ENGINE__PERSONA": "pirate",
        "PARLEY_LLM__API_KEY": API_KEY,
        "PARLEY_LLM__BASE_URL": fake_llm.url,
        "PARLEY_HTTP__ENABLED": "true",
        "PARLEY_HTTP__PORT": "0",
        "PARLEY_HTTP__ADMIN_PASSWORD": PASSWORD,
        "PARLEY_STORAGE__PATH": str(tmp_path / "parley.db"),
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = load(config)
    async with running_console(settings, environ=environ, config_path=config) as running:
        client = await signed_in(running)
        async with client:
            _, body, _ = await client.get("/admin/settings")
        rows = {key: (html.unescape(shown), source) for key, shown, source in _ROW.findall(body)}
        assert rows["engine.bot_name"] == ('"FileBot"', "file")
        assert rows["engine.persona"] == ('"pirate"', "environment")
        assert rows["engine.temperature"] == ("0.7", "default")
        assert rows["telegram.token"] == ("•••••• (set)", "file")
        assert rows["llm.api_key"] == ("•••••• (set)", "environment")
        assert rows["http.admin_password"] == ("•••••• (set)", "environment")
        assert rows["discord.token"] == ("(not set)", "default")
        assert not leaks(body, TELEGRAM_TOKEN, API_KEY, PASSWORD)


def test_sources_inside_a_json_section_variable_and_urls_with_passwords() -> None:
    settings = make_settings(Path("/tmp"), engine={"max_tokens": 99})
    environ = {"PARLEY_ENGINE": '{"max_tokens": 99}'}
    rows = {row.key: row for row in describe_settings(settings, {}, environ)}
    assert rows["engine.max_tokens"].source == "environment"
    assert rows["engine.temperature"].source == "default"
    assert rows["storage.path"].source == "start-up"  # set by the test, not by file or env
    url = f"http://bot:{LLM_URL_PASSWORD}@127.0.0.1:8080/v1"
    assert mask_url(url) == "http://bot:••••••@127.0.0.1:8080/v1"
    assert mask_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


async def test_no_page_response_or_log_line_holds_a_secret(tmp_path: Path) -> None:
    """Tokens, the API key, the password, its hash and the session token never show up."""
    async with FakeLLMServer(Behaviour(reply="a reply that names no secret")) as fake_llm:
        # aiohttp refuses credentials in a URL together with an API key: only the log has one.
        llm_url = f"http://bot:{LLM_URL_PASSWORD}@127.0.0.1:9/v1"
        settings = make_settings(
            tmp_path,
            **admin_sections(fake_llm.url),
            telegram={"token": TELEGRAM_TOKEN},
            discord={"token": DISCORD_TOKEN},
        )
        settings.llm.api_key = SecretStr(API_KEY)
        bodies: list[str] = []
        with debug_logs(settings) as logs:
            async with running_console(settings) as running:
                await running.app.engine.handle(message("hello"), RecordingTarget())
                logging.getLogger("test").warning(
                    "a careless line: %s %s %s %s %s",
                    TELEGRAM_TOKEN, DISCORD_TOKEN, API_KEY, PASSWORD, llm_url,
                )  # fmt: skip
                credential = await running.console.passwords.current()
                assert credential is not None
                client = await signed_in(running)
                async with client:
                    session_token = client.cookie(SESSION_COOKIE)
                    assert session_token
                    for path in (
                        "/admin", "/admin/api/overview", "/admin/chats", "/admin/chats?q=hello",
                        "/admin/chats/1", "/admin/chats/1/settings", "/admin/settings",
                        "/admin/audit", "/admin/logs", "/admin/try",
                    ):  # fmt: skip
                        status, body, resp = await client.get(path)
                        assert status == 200, path
                        bodies.append(body + str(dict(resp.headers)))
                    assert "a careless line" in bodies[-2]  # the log tail has the line...
                    async with client.http.post(
                        running.url + "/admin/try/send",
                        data={"csrf_token": client.csrf, "message": "hi"},
                    ) as resp:
                        bodies.append(str(await read_events(resp)))
                    async with client.http.get(running.url + "/admin/logs/stream") as resp:
                        bodies.append(await read_until(resp, "a careless line"))
                    # A failed sign-in is logged; the password tried is not.
                    async with AdminClient(running.url) as stranger:
                        await stranger.login(f"guess {PASSWORD}")
    password_hash = credential.hash
    hash_parts = [part for part in password_hash.split("$") if len(part) >= 16]
    secrets = (TELEGRAM_TOKEN, DISCORD_TOKEN, API_KEY, LLM_URL_PASSWORD, PASSWORD)
    for body in bodies:
        assert not leaks(body, *secrets), body[:300]  # ...redacted
        assert not [part for part in hash_parts if part in body]
        assert session_token not in body
    logged = logs.getvalue()
    assert "a careless line" in logged and "failed sign-in from 127.0.0.1" in logged
    assert not leaks(logged, TELEGRAM_TOKEN, DISCORD_TOKEN, API_KEY, PASSWORD, LLM_URL_PASSWORD)
    assert not [part for part in hash_parts if part in logged] and session_token not in logged
    stored = database_bytes(tmp_path)
    assert not [part for part in hash_parts if part.encode() in stored]
    assert session_token.encode() not in stored and PASSWORD.encode() not in stored


async def read_until(resp: aiohttp.ClientResponse, needle: str) -> str:
    """An endless event stream's text, up to the first line containing `needle`."""
    seen = ""
    async with asyncio.timeout(20):  # a safety net only: the line is in the stream's backlog
        async for line in resp.content:
            seen += line.decode()
            if needle in seen:
                return seen
    raise AssertionError(f"the stream ended before {needle!r}")


async def test_try_it_streams_the_reply_through_the_engine_as_the_web_platform(
    tmp_path: Path,
) -> None:
    reply = "one two three four five six seven eight"
    async with FakeLLMServer(Behaviour(reply=reply, delay_s=0.02)) as fake_llm:
        settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
        async with running_console(settings) as running:
            client = await signed_in(running)
            async with client:
                await client.get("/admin/try")
                async with client.http.post(
                    running.url + "/admin/try/send",
                    data={"csrf_token": client.csrf, "message": "count for me"},
                ) as resp:
                    assert resp.headers["Content-Type"] == "text/event-stream"
                    events = await read_events(resp)
                async with client.http.post(
                    running.url + "/admin/try/send",
                    data={"csrf_token": client.csrf, "message": "/config show"},
                ) as resp:
                    command = await read_events(resp)
                _, body, _ = await client.get("/admin/try")
            store = running.app.store
            chat = await store.channel_id("web", "admin")
            history = await store.history(chat, 10**9, 10)
    names = [name for name, _ in events]
    assert names[-1] == "done" and "message" in names and names.count("final") == 1
    texts = [data["text"] for name, data in events if name in ("message", "edit")]
    assert len(texts) >= 2 and texts[0] != texts[-1]  # it grew while streaming
    assert all(reply.startswith(t.removesuffix(" ▌")) for t in texts)
    assert next(data for name, data in events if name == "final")["text"] == reply
    assert fake_llm.requests[0]["messages"][-1]["content"] == "count for me"
    assert [name for name, _ in command] == ["notice", "done"]
    assert "Settings for this chat" in command[0][1]["text"]
    assert [m.content for m in reversed(history)] == ["count for me", reply]
    assert "count for me" in page_text(body) and reply in page_text(body)


async def test_the_log_tail_streams_new_records_redacted(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, **admin_sections(fake_llm.url), telegram={"token": TELEGRAM_TOKEN}
    )
    async with running_console(settings) as running:
        client = await signed_in(running)
        async with client:
            _, body, _ = await client.get("/admin/logs")
            after = re.search(r'data-after="(\d+)"', body)
            assert after
            this_process = f"{socket.gethostname()}:{os.getpid()}"
            assert f"records of this process, {this_process}" in page_text(body)
            url = f"{running.url}/admin/logs/stream?after={after.group(1)}"
            async with client.http.get(url) as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                logging.getLogger("bot.test").warning("news with %s in it", TELEGRAM_TOKEN)
                seen = await read_until(resp, "news with")
    assert "[REDACTED]" in seen and not leaks(seen, TELEGRAM_TOKEN)
    assert "signed in from" not in seen  # only records after the page's last one


async def test_the_overview_counts_answers_from_the_cache(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, **admin_sections(fake_llm.url), cache={"enabled": True, "ttl_s": 600}
    )
    async with running_console(settings) as running:
        client = await signed_in(running)
        async with client:
            _, before, _ = await client.get("/admin/api/overview")
            for chat in ("c1", "c2"):  # the same question, each the first of its chat
                msg = message("what is a cache?", channel=chat)
                await running.app.engine.handle(msg, RecordingTarget())
            running.console.overview._cache = None  # type: ignore[union-attr]
            _, raw, _ = await client.get("/admin/api/overview")
            _, page, _ = await client.get("/admin")
    data, old = json.loads(raw)["totals"], json.loads(before)["totals"]
    assert (data["cache_hits"] - old["cache_hits"], data["cache_misses"] - old["cache_misses"]) == (
        1,
        1,
    )
    assert len(fake_llm.requests) == 1
    assert f"Answers from the cache {data['cache_hits']}" in page_text(page)


async def test_the_overview_reads_health_backends_slots_and_metrics(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running:
        client = await signed_in(running)
        async with client:
            _, before, _ = await client.get("/admin/api/overview")
            await running.app.engine.handle(message("hello"), RecordingTarget())
            # Skip the short cache: the numbers just moved.
            running.console.overview._cache = None  # type: ignore[union-attr]
            running.console.history.sample()  # type: ignore[union-attr]
            status, raw, _ = await client.get("/admin/api/overview")
            _, page, _ = await client.get("/admin")
    data, old = json.loads(raw), json.loads(before)
    assert status == 200
    assert {c["name"]: c["ok"] for c in data["health"]} == {"database": True, "llm": True}
    assert data["backends"] == [
        {"url": fake_llm.url, "healthy": True, "busy": None, "slots": None}
    ]  # the fake has no /slots page
    # A server without /props counts as the documented default.
    assert data["engine"] == {"slots": DEFAULT_SLOTS, "busy": 0, "queue": 0}
    assert data["totals"]["replies"] == old["totals"]["replies"] + 1
    assert data["totals"]["messages_in"] == old["totals"]["messages_in"] + 1
    charts = {series["key"]: series for series in data["series"]}
    assert set(charts) == {"replies", "ttft", "rate_limited", "stt", "tts"}
    assert any(v for _, v in charts["replies"]["points"])
    assert any(v is not None for _, v in charts["ttft"]["points"])
    text = page_text(page)
    assert "database ok" in text and "llm ok" in text and fake_llm.url in text
    # Processes sharing a database each count their own: the page and its data say whose.
    this_process = f"{socket.gethostname()}:{os.getpid()}"
    assert data["process"] == this_process
    assert f"This process, {this_process}" in text


async def test_the_server_stops_with_event_streams_open(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    fake_llm.behaviour = Behaviour(reply="slow " * 200, delay_s=0.05)
    async with running_console(settings) as running:
        client = await signed_in(running)
        async with client:
            logs = await client.http.get(running.url + "/admin/logs/stream")
            chat = await client.http.post(
                running.url + "/admin/try/send",
                data={"csrf_token": client.csrf, "message": "talk slowly"},
            )
            while b"event: edit" not in await chat.content.readline():
                pass  # until the reply shows some text
            async with asyncio.timeout(20):  # a safety net: stopping must not wait for them
                await running.server.stop()
            logs.close()
            chat.close()
        store = running.app.store
        chat_id = await store.channel_id("web", "admin")
        rows = await chat_messages(store, chat_id, limit=10)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "partial")]
    assert rows[1].content.startswith("slow slow")


def test_a_published_console_without_tls_is_warned_about(tmp_path: Path) -> None:
    public = HTTPSettings(enabled=True, host="0.0.0.0")
    assert "SSH tunnel" in (exposure_warning(public) or "")
    assert exposure_warning(public, password_set=False) is None  # locked: nothing to protect
    assert exposure_warning(HTTPSettings(enabled=True, host="127.0.0.1")) is None
    assert exposure_warning(HTTPSettings(enabled=True, host="::1")) is None
    assert exposure_warning(HTTPSettings(enabled=True, host="0.0.0.0", admin=False)) is None
    proxied = HTTPSettings(enabled=True, host="0.0.0.0", behind_tls_proxy=True)
    assert exposure_warning(proxied) is None
    settings = make_settings(tmp_path, http={"enabled": True, "host": "0.0.0.0"})
    admin = [f for f in check_config(settings) if f.check == "admin"]
    assert [f.status for f in admin] == ["ok"]
    assert "no password set" in admin[0].detail and "set-password" in admin[0].detail
    settings = make_settings(
        tmp_path, http={"enabled": True, "host": "0.0.0.0", "admin_password": PASSWORD}
    )
    admin = [f for f in check_config(settings) if f.check == "admin"]
    assert [f.status for f in admin] == ["ok", "warn"]
    assert "environment" in admin[0].detail and "plain HTTP" in admin[1].detail
    assert password_file(settings) == tmp_path / "admin-password"
    assert [f.check for f in check_config(make_settings(tmp_path))] == ["config"]


async def test_the_start_warns_when_the_console_is_published_without_tls(
    fake_llm: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Bound to loopback for the test; the warning reads the configured host only.
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    settings.http.host = "0.0.0.0"
    async with ParleyApp(settings, speech=False) as app:
        console = AdminConsole.for_app(app)
        loopback = settings.http.model_copy(update={"host": "127.0.0.1"})
        server = OpsServer(loopback, app.health_checks(), extensions=[console])
        await server.start()
        await server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("http.host = '0.0.0.0'" in w and "SSH tunnel" in w for w in warnings), warnings
