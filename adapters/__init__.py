"""Platform adapters: one package per platform (telegram/, discord/, mqtt/), plus the console chat.

A package becomes a platform by exposing `PLATFORM` (a `bot.platform.Platform`) in its
`__init__`: `platforms()` finds it, so a new platform is one new folder.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from bot.config import PlatformSettings
from bot.platform import Platform


@functools.cache
def platforms() -> tuple[Platform, ...]:
    """Every platform package under adapters/, in name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        platform = getattr(module, "PLATFORM", None)
        if isinstance(platform, Platform):
            found.append(platform)
    return tuple(found)


def settings_sections() -> tuple[type[PlatformSettings], ...]:
    """The platforms' settings models, for `bot.config.load_settings`."""
    return tuple(platform.settings for platform in platforms())
