"""The admin console over HTTP: locked without a password, sign-in, sessions, CSRF, throttling.

The real app, endpoint and console run on loopback against the fake LLM; the client is aiohttp
with a cookie jar, reading CSRF tokens from the pages like a browser.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from bot.admin.passwords import hash_password, password_file, write_hash_file
from bot.admin.sessions import FREE_ATTEMPTS, LOGIN_COOKIE, SESSION_COOKIE
from bot.config import load_settings
from bot.errors import ConfigError
from tests.conftest import make_settings, message
from tests.fakes.admin_client import (
    PASSWORD,
    AdminClient,
    RunningConsole,
    admin_sections,
    running_console,
)
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.parley_process import ROOT, parley_env, start_parley
from tests.fakes.targets import RecordingTarget

_PARAM = re.compile(r"\{[^}]+\}")


def admin_routes(running: RunningConsole) -> list[tuple[str, str]]:
    """(method, path) of every /admin route but static files, with path parameters filled."""
    found = []
    for route in running.web_app.router.routes():
        if isinstance(route.resource, web.StaticResource) or route.method == "HEAD":
            continue
        assert route.resource is not None
        path = _PARAM.sub("1", route.resource.canonical)
        found.append((route.method, path))
    return sorted(set(found))


async def started_chat(running: RunningConsole) -> None:
    """Chat 1 exists with one answered message."""
    await running.app.engine.handle(message("hello there"), RecordingTarget())


async def test_without_a_password_admin_only_says_how_to_set_one(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url, admin_password=""))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        await started_chat(running)
        status, html, _ = await client.get("/admin")
        assert status == 200
        assert "parley admin set-password" in html and "PARLEY_HTTP__ADMIN_PASSWORD" in html
        assert "make admin-password" in html  # the tests run from a checkout
        assert 'name="password"' not in html and "Sign out" not in html
        assert "hello there" not in html
        for method, path in admin_routes(running):
            if method == "GET":
                status, html, resp = await client.get(path)
                if path in ("/admin", "/admin/", "/admin/login"):
                    assert status == 200 and "set-password" in html, path
                else:
                    assert (status, resp.headers.get("Location")) == (303, "/admin"), path
            else:
                status, html, _ = await client.post(path, {"password": "anything at all"})
                assert status == 403 and "set-password" in html, path


async def test_every_page_and_action_needs_a_session(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        await started_chat(running)
        routes = admin_routes(running)
        assert len(routes) >= 15  # every page, the event streams and the actions
        for method, path in routes:
            if path.startswith("/admin/login"):
                continue  # the sign-in itself
            if method == "GET":
                status, _, resp = await client.get(path)
                if path == "/admin/logs/stream":
                    assert status == 401, path  # an event stream cannot follow a redirect
                else:
                    assert status == 303, path
                    assert resp.headers["Location"].startswith("/admin/login?next="), path
            else:
                status, _, _ = await client.post(path, {"key": "temperature", "value": "1"})
                assert status == 401, path
        # Nothing was changed by the refused actions.
        assert await running.app.store.audit_rows() == []
        # A made-up cookie is no session either.
        client.http.cookie_jar.update_cookies({SESSION_COOKIE: "forged"})
        status, _, _ = await client.get("/admin/chats")
        assert status == 303


async def test_a_post_without_a_valid_csrf_token_is_refused(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with (
        running_console(settings) as running,
        AdminClient(running.url) as client,
        AdminClient(running.url) as other,
    ):
        await started_chat(running)
        assert (await client.login())[0] == 303
        assert (await other.login())[0] == 303
        assert client.csrf and other.csrf and client.csrf != other.csrf
        posts = [path for method, path in admin_routes(running) if method == "POST"]
        form = {"key": "temperature", "value": "1.5", "message": "hi"}
        for path in posts:
            if path == "/admin/login":
                continue
            for token in (None, "", "wrong", other.csrf):
                data = dict(form) if token is None else {**form, "csrf_token": token}
                status, _, _ = await client.post(path, data)
                assert status == 403, (path, token)
            # The right token from another site (a forged cross-site form) is refused too.
            data = {**form, "csrf_token": client.csrf}
            status, _, _ = await client.post(path, data, headers={"Origin": "http://evil.test"})
            assert status == 403, path
        assert await running.app.store.audit_rows() == []
        assert len(fake_llm.requests) == 1  # only the chat's own message reached the model
        # Still signed in: the refusals did not end the session.
        status, _, _ = await client.get("/admin/chats")
        assert status == 200
        # The sign-in form needs its own token (cookie + field) too.
        async with AdminClient(running.url) as fresh:
            await fresh.login_token()
            status, _, _ = await fresh.post("/admin/login", {"password": PASSWORD})
            assert status == 403
            assert fresh.cookie(SESSION_COOKIE) is None


async def test_a_wrong_password_is_refused_and_repeated_failures_are_slowed(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        for _ in range(FREE_ATTEMPTS):
            status, html, resp = await client.login("wrong password")
            assert status == 401 and "Wrong password" in html
            assert "Retry-After" not in resp.headers
            assert client.cookie(SESSION_COOKIE) is None
        status, html, resp = await client.login("still wrong")
        assert status == 429 and int(resp.headers["Retry-After"]) > 0
        assert "Too many failed sign-ins" in html
        # While slowed down, even the right password is not tried.
        status, _, resp = await client.login(PASSWORD)
        assert status == 429 and "Retry-After" in resp.headers
        assert client.cookie(SESSION_COOKIE) is None
        # Another address is not held up by this one's failures.
        async with AdminClient(running.url, local_addr="127.0.0.2") as other:
            status, _, _ = await other.login(PASSWORD)
            assert status == 303 and other.cookie(SESSION_COOKIE)


async def wrong_passwords_at_once(clients: list[AdminClient], count: int) -> list[tuple[int, str]]:
    """`count` wrong passwords posted at once, spread over `clients` (each with its own valid
    sign-in form): their statuses and Retry-After headers."""
    tokens = [await client.login_token() for client in clients]

    async def one(n: int) -> tuple[int, str]:
        client = clients[n % len(clients)]
        form = {"csrf_token": tokens[n % len(clients)], "password": f"wrong guess {n}"}
        status, _, resp = await client.post("/admin/login", form)
        return status, resp.headers.get("Retry-After", "")

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_thirty_wrong_passwords_at_once_get_at_most_five_checks(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        results = await wrong_passwords_at_once([client], 30)
        checked = running.console.passwords.checks
        assert checked <= FREE_ATTEMPTS
        statuses = sorted(status for status, _ in results)
        assert statuses == [401] * checked + [429] * (30 - checked), results
        assert all(int(wait) > 0 for status, wait in results if status == 429)
        # The right password is not even tried now; the count of checks stays where it was.
        assert (await client.login(PASSWORD))[0] == 429
        assert running.console.passwords.checks == checked


async def test_processes_on_one_postgresql_share_the_sign_in_throttle_and_sessions(
    fake_llm: FakeLLMServer, tmp_path: Path, postgres_url: str
) -> None:
    settings = make_settings(
        tmp_path, storage={"url": postgres_url}, **admin_sections(fake_llm.url)
    )
    async with (
        running_console(settings) as first,
        running_console(settings) as second,
        AdminClient(first.url) as to_first,
        AdminClient(second.url) as to_second,
    ):
        assert first.url != second.url
        # Thirty wrong passwords at once, half to each process: five checks between them.
        results = await wrong_passwords_at_once([to_first, to_second], 30)
        checked = first.console.passwords.checks + second.console.passwords.checks
        assert checked <= FREE_ATTEMPTS
        assert sorted(status for status, _ in results) == [401] * checked + [429] * (30 - checked)
        # Both see the lock: neither checks the right password from that address now.
        assert (await to_first.login(PASSWORD))[0] == 429
        assert (await to_second.login(PASSWORD))[0] == 429
        # A session signed in on one process works on the other, and ends on both.
        async with (
            AdminClient(first.url, local_addr="127.0.0.2") as browser,
            AdminClient(second.url, local_addr="127.0.0.2") as same_browser,
        ):
            assert (await browser.login(PASSWORD))[0] == 303
            cookie = browser.cookie(SESSION_COOKIE)
            assert cookie
            same_browser.http.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
            status, html, _ = await same_browser.get("/admin/chats")
            assert status == 200 and "Sign out" in html
            # The CSRF token is the session's too: a form on the second process is accepted.
            assert same_browser.csrf == browser.csrf
            status, _, resp = await same_browser.post("/admin/logout", {"csrf_token": browser.csrf})
            assert (status, resp.headers["Location"]) == (303, "/admin/login")
            assert (await browser.get("/admin/chats"))[0] == 303
        # The database holds no cookie token, only hashes.
        rows = await first.app.store.fetch("SELECT token_hash FROM console_sessions")
        assert all(cookie not in row[0] for row in rows)


async def test_sign_in_sets_a_strict_session_cookie_and_sign_out_ends_it(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        status, _, resp = await client.login(next_path="/admin/audit")
        assert (status, resp.headers["Location"]) == (303, "/admin/audit")
        cookie = resp.cookies[SESSION_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/admin" and not cookie["secure"]  # plain HTTP on loopback
        assert resp.cookies[LOGIN_COOKIE].value == ""  # the sign-in form's token is dropped
        status, html, resp = await client.get("/admin")
        assert status == 200 and "Sign out" in html
        assert resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        # Only paths inside the console are followed after sign-in.
        async with AdminClient(running.url) as other:
            status, _, resp = await other.login(next_path="https://evil.test/admin")
            assert resp.headers["Location"] == "/admin"
        status, _, resp = await client.post("/admin/logout", {"csrf_token": client.csrf})
        assert (status, resp.headers["Location"]) == (303, "/admin/login")
        client.http.cookie_jar.clear()
        client.http.cookie_jar.update_cookies({SESSION_COOKIE: cookie.value})  # replay it
        status, _, _ = await client.get("/admin")
        assert status == 303


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_over_tls_the_session_cookie_is_secure(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    settings = make_settings(
        tmp_path, **admin_sections(fake_llm.url, tls_cert=str(cert), tls_key=str(key))
    )
    async with running_console(settings) as running, AdminClient(running.url) as client:
        assert running.url.startswith("https://")
        status, _, resp = await client.login()
        assert status == 303
        assert resp.cookies[SESSION_COOKIE]["secure"]
        status, _, _ = await client.get("/admin")
        assert status == 200


async def test_set_password_stores_only_an_argon2_hash_and_ends_old_sessions(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    db = tmp_path / "parley.db"
    env = parley_env(PARLEY_STORAGE__PATH=str(db))
    proc = await start_parley("admin", "set-password", env=env)
    out, err = await proc.communicate(b"first password\n")
    assert proc.returncode == 0, err
    stored = (tmp_path / "admin-password").read_text()
    assert stored.startswith("$argon2id$") and "first password" not in stored
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0
    assert b"first password" not in out + err and stored.strip().encode() not in out + err
    # Too short: refused, nothing changed.
    proc = await start_parley("admin", "set-password", env=env)
    _, err = await proc.communicate(b"short\n")
    assert proc.returncode == 1 and b"at least 8" in err
    assert (tmp_path / "admin-password").read_text() == stored

    settings = make_settings(tmp_path, **admin_sections(fake_llm.url, admin_password=""))
    assert password_file(settings) == tmp_path / "admin-password"
    async with running_console(settings) as running, AdminClient(running.url) as client:
        assert (await client.login("first password"))[0] == 303
        assert (await client.get("/admin/chats"))[0] == 200
        # A new password, set while the bot runs: the old session ends, the new password works.
        new_hash = await asyncio.to_thread(hash_password, "second password")
        await asyncio.to_thread(write_hash_file, tmp_path / "admin-password", new_hash)
        assert (await client.get("/admin/chats"))[0] == 303
        assert (await client.login("first password"))[0] == 401
        assert (await client.login("second password"))[0] == 303


async def test_the_environment_password_wins_over_the_file(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, **admin_sections(fake_llm.url))
    write_hash_file(password_file(settings), hash_password("the file's password"))
    async with running_console(settings) as running, AdminClient(running.url) as client:
        assert (await client.login("the file's password"))[0] == 401
        assert (await client.login(PASSWORD))[0] == 303


def test_a_short_environment_password_is_a_config_error_that_hides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLEY_HTTP__ADMIN_PASSWORD", "s3cr3t")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert caught.value.problems == [
        "config: http.admin_password = <hidden>: must be at least 8 characters"
    ]


def test_set_password_on_a_terminal_asks_twice_without_echo(tmp_path: Path) -> None:
    """On a terminal the password is typed twice and never shown (getpass turns echo off)."""
    master, terminal = os.openpty()
    env = parley_env(PARLEY_STORAGE__PATH=str(tmp_path / "parley.db"), PYTHONPATH=str(ROOT))
    # A session of its own: no controlling terminal, so getpass uses this pty, never the
    # terminal the tests were started from.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "admin", "set-password"],
        stdin=terminal, stdout=terminal, stderr=terminal,
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    shown = b""

    def read_until(needle: bytes) -> None:
        nonlocal shown
        while needle not in shown:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, shown  # a safety net: the prompt comes within seconds
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the other end closed: the command ended
                chunk = b""
            if not chunk:
                break
            shown += chunk

    try:
        read_until(b"New admin password: ")
        os.write(master, b"typed on a terminal\n")
        read_until(b"Once more: ")
        os.write(master, b"typed on a terminal\n")
        read_until(b"Sessions signed in")
        assert proc.wait(30) == 0, shown
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert b"typed on a terminal" not in shown
    stored = (tmp_path / "admin-password").read_text()
    assert stored.startswith("$argon2id$")
