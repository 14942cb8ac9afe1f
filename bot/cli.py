"""The `parley` command: run (default), chat, migrate, doctor, healthcheck, admin set-password,
api-key create.

With bot/app.py, the composition root: it loads the settings with every platform's section and
starts the platforms whose token is set (the console chat when none is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings, resolve_config_path
from bot.errors import ConfigError, LLMUnavailable, StorageError
from bot.logs import setup_logging
from bot.platform import STOP_GRACE_S

if TYPE_CHECKING:
    from bot.app import ParleyApp
    from bot.http_server import HttpExtension
    from bot.platform import Platform, PlatformAdapter

log = logging.getLogger("parley")

EXIT_CONFIG = 2
EXIT_FAILURE = 1
# SIGTERM to exit, whatever is unreachable: container runtimes send SIGKILL after 10 s. Replies
# in progress get STOP_GRACE_S, the platforms' goodbyes the rest of PLATFORM_STOP_BUDGET_S,
# then the managed llama-server and the store are closed.
SHUTDOWN_BUDGET_S = 5.0
PLATFORM_STOP_BUDGET_S = 3.5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (else $PARLEY_CONFIG, else ./config.toml, else defaults)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser(
        "run", help="start the bot: Telegram/Discord when tokens are set, else the console"
    )
    chat = sub.add_parser("chat", help="chat in this terminal")
    chat.add_argument(
        "--voice", metavar="FILE", type=Path, help="send this audio file as a voice note"
    )
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser("doctor", help="check config, database, LLM backends, speech models, tokens")
    sub.add_parser("healthcheck", help="ask this machine's /healthz (Docker's HEALTHCHECK)")
    admin = sub.add_parser("admin", help="the admin console (/admin)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    admin_sub.add_parser(
        "set-password",
        help="read a new admin password from standard input and store its argon2 hash",
    )
    api_key = sub.add_parser("api-key", help="keys of the HTTP API (/v1/)")
    api_key_sub = api_key.add_subparsers(dest="api_key_command", required=True)
    create = api_key_sub.add_parser(
        "create", help="print a new random key for NAME once; only its hash is stored"
    )
    create.add_argument("name", metavar="NAME", help="whose key it is (letters, digits, . _ -)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `parley` and `python -m bot`."""
    args = _parser().parse_args(argv)
    from bot.app import load

    config_path = resolve_config_path(args.config)
    try:
        settings = load(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.logging, settings.secrets())
    command = args.command or "run"
    try:
        if command == "migrate":
            return asyncio.run(_migrate(settings))
        if command == "doctor":
            from adapters import platforms
            from bot.doctor import run_doctor

            return asyncio.run(run_doctor(settings, platforms()))
        if command == "admin":
            from bot.admin.cli import set_password

            return set_password(settings)
        if command == "api-key":
            from adapters.api.keys import create_key

            return asyncio.run(create_key(settings, args.name))
        if command == "healthcheck":
            from bot.health import probe, probe_url

            if not settings.http.enabled:
                print("the HTTP endpoint is off: set [http] enabled = true", file=sys.stderr)
                return EXIT_FAILURE
            return probe(probe_url(settings.http))
        voice = getattr(args, "voice", None)
        if voice is not None and not voice.is_file():
            print(f"--voice: {voice} is not a file", file=sys.stderr)
            return EXIT_CONFIG
        return asyncio.run(
            _run(settings, console=command == "chat", voice_file=voice, config_path=config_path)
        )
    except asyncio.CancelledError:  # SIGTERM during start-up or shutdown
        return 0
    except ConfigError as exc:  # found at start-up, e.g. a token the platform refuses
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except (StorageError, LLMUnavailable) as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


async def _migrate(settings: Settings) -> int:
    from bot.storage import describe_storage, migrate_storage

    before, after = await migrate_storage(settings.storage)
    where = describe_storage(settings.storage)
    if before == after:
        print(f"{where}: schema version {after}, up to date")
    else:
        print(f"{where}: migrated from version {before} to {after}")
    return 0


async def _run(
    settings: Settings, *, console: bool, voice_file: Path | None, config_path: Path | None = None
) -> int:
    from bot.app import ParleyApp
    from bot.health import platform_check
    from bot.http_server import serve_http

    # Until the chat or the platforms install their own handlers, SIGTERM still shuts down
    # cleanly (the managed llama-server is stopped, not orphaned).
    main = asyncio.current_task()
    assert main is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(ParleyApp(settings))
        enabled = [] if console else await app.enabled_platforms()
        # Made before the endpoint starts: a platform served over HTTP mounts its routes then.
        adapters: list[PlatformAdapter] = [app.create_adapter(p) for p in enabled]
        extensions = [*_http_extensions(app, config_path), app.routes]
        checks = await stack.enter_async_context(
            serve_http(settings.http, app.health_checks(), extensions=extensions)
        )
        if not enabled:
            from adapters.console import ConsoleChat

            await ConsoleChat(app.services).run(voice_file)
            return 0
        for platform, adapter in zip(enabled, adapters, strict=True):
            checks.add(platform.name, platform_check(adapter))
        # Load the speech models while the platforms connect, not at the first voice note.
        warm_up = asyncio.create_task(app.warm_up_speech())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        names = ", ".join(platform.name for platform in enabled)
        try:
            for adapter in adapters:
                await adapter.start()
            log.info("Parley is running on %s; Ctrl-C to stop", names)
            await stop.wait()
        finally:
            warm_up.cancel()
            started = time.monotonic()
            log.info(
                "shutting down: replies in progress get %g s to finish (within %g s in all)",
                STOP_GRACE_S,
                SHUTDOWN_BUDGET_S,
            )
            await _stop_platforms(enabled, adapters)
    # Leaving the `async with` above stopped the managed llama-server and closed the store.
    log.info("stopped in %.1f s", time.monotonic() - started)
    return 0


async def _stop_platforms(enabled: list[Platform], adapters: list[PlatformAdapter]) -> None:
    """Stop every platform at once, within PLATFORM_STOP_BUDGET_S whatever answers or not."""

    async def stop(platform: Platform, adapter: PlatformAdapter) -> None:
        try:
            async with asyncio.timeout(PLATFORM_STOP_BUDGET_S):
                await adapter.stop()
        except TimeoutError:
            log.warning(
                "%s did not stop within %g s (unreachable?): leaving without it",
                platform.name,
                PLATFORM_STOP_BUDGET_S,
            )

    await asyncio.gather(*(stop(p, a) for p, a in zip(enabled, adapters, strict=False)))


def _http_extensions(app: ParleyApp, config_path: Path | None) -> list[HttpExtension]:
    """The admin console on the [http] endpoint, unless it is turned off."""
    http = app.settings.http
    if not (http.enabled and http.admin):
        return []
    from bot.admin.console import AdminConsole

    return [AdminConsole.for_app(app, config_path=config_path)]
