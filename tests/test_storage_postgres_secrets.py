"""storage.url holds a password: it never reaches errors, logs, the doctor's report or the database.

Every failure against PostgreSQL is a StorageError naming host:port/database and why.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
import pytest

from bot.config import Settings, StorageSettings, load_settings
from bot.doctor import check_database, render_table
from bot.errors import ConfigError, StorageError
from bot.logs import RedactSecrets
from bot.storage import describe_storage, load_migrations, open_store
from bot.storage import postgres as pg
from tests.conftest import make_settings
from tests.fakes.postgres import PASSWORD, PostgresServer
from tests.test_secrets import debug_logs

ODD_PASSWORD = "p@ss:w/rd%x9"  # URL-encoded in the URL, decoded by the driver


def with_password(url: str, password: str) -> str:
    return url.replace(PASSWORD, password)


async def test_a_refused_password_names_the_server_not_the_password(postgres_url: str) -> None:
    url = with_password(postgres_url, "wrong-password-8812")
    with pytest.raises(StorageError) as refused:
        await open_store(StorageSettings(url=url))
    text = str(refused.value)
    assert "127.0.0.1:" in text and "password authentication failed" in text
    assert "wrong-password-8812" not in text and refused.value.__cause__ is None


async def test_a_refused_connection_names_host_and_port() -> None:
    url = f"postgresql://parley:{PASSWORD}@127.0.0.1:1/parley"
    with pytest.raises(StorageError, match=r"PostgreSQL at 127\.0\.0\.1:1/parley: .*refused") as e:
        await open_store(StorageSettings(url=url))
    assert PASSWORD not in str(e.value)


async def test_an_unparsable_url_does_not_repeat_it() -> None:
    url = f"postgresql://parley:{PASSWORD}@127.0.0.1:notaport/parley"
    with pytest.raises(StorageError, match="not a valid PostgreSQL URL") as e:
        await open_store(StorageSettings(url=url))
    assert PASSWORD not in str(e.value)


async def test_a_missing_database_is_named(postgres_server: PostgresServer) -> None:
    with pytest.raises(StorageError, match='database "nosuchdb" does not exist'):
        await open_store(StorageSettings(url=postgres_server.url("nosuchdb")))


def test_the_url_is_a_secret_of_the_settings(tmp_path: Path) -> None:
    encoded = ODD_PASSWORD.replace("@", "%40").replace(":", "%3A").replace("/", "%2F")
    url = f"postgresql://parley:{encoded}@db.example:5432/parley"
    settings = make_settings(tmp_path, storage={"url": url})
    assert ODD_PASSWORD in settings.secrets() and url in settings.secrets()
    assert ODD_PASSWORD not in repr(settings) and encoded not in str(settings.storage)
    assert describe_storage(settings.storage) == "PostgreSQL db.example:5432/parley"
    # Whatever form it takes in a log line, it is redacted.
    redact = RedactSecrets(settings.secrets()).redact
    assert ODD_PASSWORD not in redact(f"connecting to {url} with {ODD_PASSWORD}")
    assert encoded not in redact(f"connecting to {url} with {ODD_PASSWORD}")


def test_a_wrong_scheme_is_refused_without_showing_the_url(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "mysql://parley:{PASSWORD}@h/db"\n')
    with pytest.raises(ConfigError) as invalid:
        load_settings(path)
    assert "storage.url = <hidden>: must start with postgresql://" in str(invalid.value)
    assert PASSWORD not in str(invalid.value)


async def test_logs_of_a_failed_start_carry_no_password(postgres_url: str) -> None:
    settings = Settings(storage=StorageSettings(url=with_password(postgres_url, ODD_PASSWORD)))
    with debug_logs(settings) as logs:
        with pytest.raises(StorageError) as failed:
            await open_store(settings.storage)
        logging.getLogger("parley").error("start failed: %s", failed.value, exc_info=True)
        logging.getLogger("parley").debug("settings: %s", settings.storage.url.get_secret_value())
    assert "start failed" in logs.getvalue()
    assert ODD_PASSWORD not in logs.getvalue()


def _doctor_row(settings: Settings) -> tuple[str, str]:
    (finding,) = check_database(settings)
    table = RedactSecrets(settings.secrets()).redact(render_table([finding]))
    assert PASSWORD not in table
    return finding.status, finding.detail


async def test_the_doctor_checks_postgres_read_only(
    postgres_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, storage={"url": postgres_url})
    status, detail = await asyncio.to_thread(_doctor_row, settings)
    assert (status, detail.split(": ", 1)[1]) == ("ok", "empty; the first start creates the tables")
    assert await _tables(postgres_url) == set()  # the doctor created nothing
    await pg.migrate(postgres_url)
    status, detail = await asyncio.to_thread(_doctor_row, settings)
    latest = len(load_migrations(dialect="postgresql"))
    assert status == "ok" and detail.endswith(f"schema version {latest}")
    database = postgres_url.rsplit("/", 1)[1]
    await asyncio.to_thread(
        postgres_server.psql, "INSERT INTO schema_version VALUES (999, 'x')", database
    )
    status, detail = await asyncio.to_thread(_doctor_row, settings)
    assert status == "fail" and "schema version 999 is newer" in detail


async def test_the_doctor_reports_a_refused_password(postgres_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage={"url": with_password(postgres_url, "nope-1234")})
    status, detail = await asyncio.to_thread(_doctor_row, settings)
    assert status == "fail" and "password authentication failed" in detail
    assert "nope-1234" not in detail


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}
    finally:
        await conn.close()


async def test_the_database_never_holds_the_url(postgres_url: str) -> None:
    store = await open_store(StorageSettings(url=postgres_url))
    try:
        channel = await store.channel_id("test", "c")
        turn = await store.start_turn(
            channel, author_id="u", author_name="U", content="hi", token_count=1
        )
        await store.update_message(turn.reply_row, content="hello", status="complete")
        await store.set_channel_setting(
            channel, "persona", "pirate", actor_id="u", actor_name="U", old=None
        )
    finally:
        await store.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        for table in await _tables(postgres_url):
            dump = await conn.fetchval(
                f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t"
            )
            assert PASSWORD not in dump and "postgresql://" not in dump, table
    finally:
        await conn.close()
