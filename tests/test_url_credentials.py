"""Credentials inside URL settings (http://user:password@host) are shown nowhere.

Every URL setting carries its own password (the LLM servers, the platforms' endpoints, the MQTT
broker, the MCP tool servers, PostgreSQL), and every server is down (nothing listens): /healthz,
the console's pages, `parley doctor` and the log as `parley run` writes it must hold none of
them. The log is searched twice: as written (the secret redaction applied) and as the code
logged it (before redaction), so a URL's password is kept out at the source too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import typing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from adapters import platforms as all_platforms
from adapters.mqtt import PLATFORM as MQTT
from bot.app import load
from bot.doctor import run_doctor
from bot.errors import ConfigError
from bot.health import platform_check
from bot.tools.hub import ToolHub
from tests.conftest import free_port, make_settings, message
from tests.fakes.admin_client import PASSWORD, AdminClient, running_console
from tests.fakes.targets import RecordingTarget
from tests.test_secrets import debug_logs, leaks

USER = "urluser"
PASSWORDS = {  # setting -> the password its URL carries
    "llm.base_url": "pw-base-url-0123",
    "llm.fallback_urls": "pw-fallback-0123",
    "llm.backends": "pw-llm-pool-0123",
    "llm.models.pooled.backends": "pw-model-pool-0123",
    "llm.models.single.url": "pw-model-url-0123",
    "telegram.api_base_url": "pw-telegram-api-0123",
    "telegram.file_base_url": "pw-telegram-file-0123",
    "telegram.webhook_url": "pw-telegram-hook-0123",
    "discord.api_base_url": "pw-discord-api-0123",
    "discord.gateway_url": "pw-discord-gateway-0123",
    "mqtt.url": "pw-mqtt-broker-0123",
    "tools.servers.web.url": "pw-tool-server-0123",
    "storage.url": "pw-postgres-0123",
}
# `llm.backends` is a pool instead of `llm.base_url` + `llm.fallback_urls`: a run has one or the
# other, so each test runs with both layouts.
LLM_LAYOUTS = {
    "servers": ("llm.base_url", "llm.fallback_urls"),
    "pool": ("llm.backends",),
}
# The console, /healthz and the log are asked with the store on SQLite (a running bot needs a
# database that answers); the doctor sees the PostgreSQL URL too.
NOT_IN = {layout: {"storage.url", *keys} for layout, keys in LLM_LAYOUTS.items()}


def passwords(layout: str, *, store: bool) -> list[str]:
    """The passwords of the URL settings a run with this LLM layout has."""
    unused = {key for other, keys in LLM_LAYOUTS.items() if other != layout for key in keys}
    if not store:
        unused.add("storage.url")
    return [pw for key, pw in PASSWORDS.items() if key not in unused]


def url_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The dotted keys of every URL setting of `model` (NAME for a keyed section's entries)."""
    found: set[str] = set()
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= url_fields(annotation, f"{key}.")
        elif typing.get_origin(annotation) is dict and issubclass(args[1], BaseModel):
            found |= url_fields(args[1], f"{key}.NAME.")
        elif name.endswith(("url", "urls")) or (annotation == list[str] and name == "backends"):
            found.add(key)  # a server list; tts.backends names engines, not URLs
    return found


def test_every_url_setting_is_covered() -> None:
    """A URL setting added later must get a password here too."""
    covered = {re.sub(r"\.(pooled|single|web)\.", ".NAME.", key) for key in PASSWORDS}
    assert url_fields(type(make_settings(Path("/nonexistent")))) == covered


def dead(setting: str, scheme: str = "http", path: str = "") -> str:
    """A loopback URL where nothing listens, with the setting's password in it."""
    return f"{scheme}://{USER}:{PASSWORDS[setting]}@127.0.0.1:{free_port()}{path}"


def url_sections(*, tokens: bool, layout: str = "servers") -> dict[str, Any]:
    """Every URL setting with credentials; platform tokens only when `tokens` (the doctor)."""
    telegram: dict[str, Any] = {
        "api_base_url": dead("telegram.api_base_url", path="/bot"),
        "file_base_url": dead("telegram.file_base_url", path="/file/bot"),
        "webhook_url": dead("telegram.webhook_url", "https", "/hook"),
    }
    discord: dict[str, Any] = {
        "api_base_url": dead("discord.api_base_url", path="/api/v10"),
        "gateway_url": dead("discord.gateway_url", "ws"),
    }
    if tokens:
        telegram["token"] = "7312345678:AAF-telegram-token-for-the-doctor"
        discord["token"] = "MTEwMDAw.discord-token.for-the-doctor"
    backends = [dead("llm.models.pooled.backends"), dead("llm.models.pooled.backends")]
    servers: dict[str, Any] = (
        {"base_url": dead("llm.base_url"), "fallback_urls": [dead("llm.fallback_urls")]}
        if layout == "servers"
        else {"backends": [dead("llm.backends"), dead("llm.backends")]}
    )
    return {
        "llm": {
            **servers,
            "models": {
                "pooled": {"backends": backends},
                "single": {"url": dead("llm.models.single.url")},
            },
            "retries": 0,
            "backoff_s": 0.01,
            "connect_timeout_s": 2.0,
        },
        "telegram": telegram,
        "discord": discord,
        "mqtt": {"url": dead("mqtt.url", "mqtt")},
        "tools": {"servers": {"web": {"url": dead("tools.servers.web.url", path="/mcp")}}},
    }


def logged_as_is(root: logging.Logger) -> list[str]:
    """Collect every record's message before the secret redaction changes it."""
    raw: list[str] = []

    class Raw(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raw.append(record.getMessage())

    root.handlers.insert(0, Raw())  # before the redacting handler's filter rewrites the record
    return raw


@pytest.mark.parametrize("layout", list(LLM_LAYOUTS))
async def test_no_url_password_on_healthz_the_console_or_in_the_log(
    tmp_path: Path, layout: str
) -> None:
    sections = url_sections(tokens=False, layout=layout)
    settings = make_settings(
        tmp_path,
        **sections,
        http={"enabled": True, "port": 0, "admin_password": PASSWORD},
    )
    secret = passwords(layout, store=False)
    assert set(secret) <= set(settings.secrets())  # they join the secret redaction
    shown: list[str] = []
    with debug_logs(settings) as logs:
        raw = logged_as_is(logging.getLogger())
        async with running_console(settings) as running:
            # The MQTT bridge and the tool server, as `parley run` starts them: neither answers.
            bridge = running.app.create_adapter(MQTT)
            await bridge.start()
            running.server.checks.add("mqtt", platform_check(bridge))
            tools = ToolHub(settings.tools, start_timeout_s=2.0)
            await tools.start()
            try:
                await tools.wait_settled(10.0)
                assert [s.state for s in tools.status()] == ["failed"]
                # A message while no server answers: every backend is tried, fails, is re-probed.
                target = RecordingTarget()
                await running.app.engine.handle(message("hello"), target)
                assert target.text or target.notices  # the user was told the LLM is down
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(running.url + "/healthz") as resp,
                ):
                    assert resp.status == 503
                    shown.append(await resp.text())
                async with AdminClient(running.url) as client:
                    status, body, _ = await client.login()
                    assert status == 303, body
                    for path in ("/admin", "/admin/api/overview", "/admin/settings", "/admin/logs"):
                        status, body, _ = await client.get(path)
                        assert status == 200, path
                        shown.append(body)
                await asyncio.sleep(0.1)  # a re-probe or two more in the log
            finally:
                await tools.aclose()
                await bridge.stop()
    healthz, overview, _, settings_page, logs_page = shown
    assert "no backend answers: http://127.0.0.1:" in healthz
    assert "mqtt" in healthz
    for key in ("llm.models.single.url", "tools.servers.web.url", "mqtt.url"):
        assert key in settings_page, key
    assert "••••••" in settings_page
    assert "LLM backend http://127.0.0.1:" in logs_page  # the tail shows the failing servers
    assert "MQTT: cannot reach 127.0.0.1:" in logs_page
    assert "tool server web failed" in logs_page
    for text in (*shown, logs.getvalue(), *raw):
        assert leaks(text, *secret) == [], text[:500]
    # /healthz and the overview, open to scripts, do not even name the user.
    assert USER not in healthz and USER not in overview
    assert any("is unhealthy" in line for line in raw)  # the raw records were captured


@pytest.mark.parametrize("layout", list(LLM_LAYOUTS))
async def test_no_url_password_in_the_doctor_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    settings = make_settings(
        tmp_path,
        **url_sections(tokens=True, layout=layout),
        storage={
            "url": f"postgresql://{USER}:{PASSWORDS['storage.url']}@127.0.0.1:{free_port()}/db"
        },
        stt={"model": "tiny.en"},
        tts={"backends": ["piper"]},
    )
    assert await run_doctor(settings, all_platforms()) == 1
    out = capsys.readouterr().out
    for check in (
        "llm http://127.0.0.1:",
        "(/model pooled)",
        "(/model single)",
        "telegram",
        "discord",
    ):
        assert check in out
    assert "cannot reach 127.0.0.1:" in out  # the platforms' hosts, named without credentials
    assert "mqtt" in out
    assert leaks(out, *passwords(layout, store=True)) == [], out
    assert USER not in out


def test_a_url_with_credentials_and_an_api_key_is_refused_at_load(tmp_path: Path) -> None:
    """aiohttp refuses a request with both: the settings say so instead of every request failing."""
    path = tmp_path / "config.toml"
    path.write_text(f'[llm]\napi_key = "sk-key-0123456789"\nbase_url = "{dead("llm.base_url")}"\n')
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "user:password@ and an api_key" in str(refused.value)
    assert leaks(str(refused.value), PASSWORDS["llm.base_url"], "sk-key-0123456789") == []
