"""The HTTP API: the `api` platform, OpenAI-compatible, on the [http] endpoint under /v1/.

It runs while `http.enabled` is true and a key is configured (`api.keys`) or was made with
`parley api-key create NAME`. Importing this package stays light (its settings only).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from adapters.api.config import ApiSettings
from bot.platform import Platform, Services

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.doctor import Finding
    from bot.platform import PlatformAdapter
    from bot.storage import HistoryStore

log = logging.getLogger(__name__)


def _create(services: Services) -> PlatformAdapter:
    from adapters.api.adapter import ApiAdapter

    return ApiAdapter(services)


async def _check(settings: Settings) -> list[Finding]:
    from adapters.api.doctor import check

    return await check(settings)


async def _runs(settings: Settings, store: HistoryStore) -> bool:
    """Served while [http] is on, with a key configured or stored."""
    configured = bool(ApiSettings.of(settings).keys)
    if not settings.http.enabled:
        if configured:
            log.warning("api.keys is set but [http] is off: the HTTP API is not served")
        return False
    return configured or bool(await store.api_key_hashes())


PLATFORM = Platform(settings=ApiSettings, create=_create, check=_check, runs=_runs)
