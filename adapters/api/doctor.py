"""`parley doctor` for the HTTP API: where it is served, and whether it is served at all."""

from __future__ import annotations

from adapters.api.adapter import PREFIX
from adapters.api.config import ApiSettings
from bot.config import Settings
from bot.doctor import Finding


async def check(settings: Settings) -> list[Finding]:
    """The API is served only on the [http] endpoint: say where, or that it is off."""
    keys = len(ApiSettings.of(settings).keys)
    http = settings.http
    if not http.enabled:
        detail = f"{keys} keys in api.keys, but [http] is off: set http.enabled = true to serve it"
        return [Finding("api", "warn", detail)]
    scheme = "https" if http.tls_cert else "http"
    where = f"{scheme}://{http.host}:{http.port}{PREFIX}/"
    detail = f"served at {where} ({keys} keys in api.keys, and those of `parley api-key create`)"
    return [Finding("api", "ok", detail)]
