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
from bot.logs import console_log_path, setup_logging
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

# What `parley --help` says: written for the people who run the bot.
_DESCRIPTION = (
    "Parley: a self-hosted chat bot for Telegram and Discord that answers with a local LLM, "
    "or chats with you in this terminal when no platform is configured."
)
_EPILOG = (
    "Settings come from config.toml (or --config, or $PARLEY_CONFIG) and from environment "
    "variables such as PARLEY_TELEGRAM__TOKEN. Run `parley COMMAND --help` for a command's "
    "options."
)
_VERBOSE_HELP = "show the log in this terminal (the console chat otherwise writes it to a file)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the TOML settings file (else $PARLEY_CONFIG, else ./config.toml, else defaults)",
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    run_help = (
        "start the bot: on Telegram and Discord when their tokens are set, else the console "
        "chat (the default command)"
    )
    run = sub.add_parser("run", help=run_help, description=_sentence(run_help))
    run.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    chat_help = "chat with the bot in this terminal"
    chat = sub.add_parser("chat", help=chat_help, description=_sentence(chat_help))
    chat.add_argument(
        "--voice",
        metavar="FILE",
        type=Path,
        help="start by sending this audio file as a voice note; voice replies are saved as files",
    )
    chat.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    for name, text in (
        ("migrate", "create or upgrade the database, then exit"),
        ("doctor", "check the settings, the database, the model, the voices and the tokens"),
        (
            "healthcheck",
            "ask the running bot's /healthz whether it is healthy (exit code 0 when it is)",
        ),
    ):
        sub.add_parser(name, help=text, description=_sentence(text))
    admin = sub.add_parser(
        "admin",
        help="manage the admin console (the web page at /admin)",
        description="Manage the admin console, the web page at /admin.",
    )
    admin_sub = admin.add_subparsers(
        dest="admin_command", required=True, title="commands", metavar="COMMAND"
    )
    password_help = "set the admin console's password: typed twice, or one line on standard input"
    admin_sub.add_parser(
        "set-password",
        help=password_help,
        description=(
            "Set the admin console's password: typed twice without echo, or read as one line "
            "from standard input. Only its hash is stored; signed-in sessions are signed out."
        ),
    )
    api_key = sub.add_parser(
        "api-key",
        help="manage the keys of the HTTP API (/v1/)",
        description="Manage the keys of the HTTP API (/v1/), the OpenAI-compatible endpoint.",
    )
    api_key_sub = api_key.add_subparsers(
        dest="api_key_command", required=True, title="commands", metavar="COMMAND"
    )
    create_help = "print a new random key for NAME once; only its hash is stored"
    create = api_key_sub.add_parser("create", help=create_help, description=_sentence(create_help))
    create.add_argument("name", metavar="NAME", help="whose key it is (letters, digits, . _ -)")
    return parser


def _sentence(text: str) -> str:
    """A command's one-line help as the first sentence of its own --help."""
    return text[0].upper() + text[1:] + "."


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
    command = args.command or "run"
    log_file = _console_log_file(settings, command, verbose=getattr(args, "verbose", False))
    setup_logging(settings.logging, settings.secrets(), file=log_file)
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
            _run(
                settings,
                console=command == "chat",
                voice_file=voice,
                config_path=config_path,
                log_file=log_file,
            )
        )
    except asyncio.CancelledError:  # SIGTERM during start-up or shutdown
        return 0
    except ConfigError as exc:  # found at start-up, e.g. a token the platform refuses
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except (StorageError, LLMUnavailable) as exc:
        log.error("%s", exc)
        if log_file is not None:  # the log is in a file: say it here too
            print(exc, file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _console_log_file(settings: Settings, command: str, *, verbose: bool) -> Path | None:
    """The log file while the console chat has the terminal, else None (the log goes to stderr).

    Says where the log goes, once. A file that cannot be opened leaves the log on stderr.
    """
    if verbose or command not in ("run", "chat"):
        return None
    if command == "run":
        from adapters import platforms

        if any(platform.enabled(settings) for platform in platforms()):
            return None
    path = console_log_path(settings.storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("a").close()
    except OSError as exc:
        print(f"cannot write the log to {path} ({exc}): it goes to this terminal", file=sys.stderr)
        return None
    print(f"Logging to {path} (--verbose shows the log here).", file=sys.stderr)
    return path


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
    settings: Settings,
    *,
    console: bool,
    voice_file: Path | None,
    config_path: Path | None = None,
    log_file: Path | None = None,
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
        if enabled and log_file is not None:
            # A platform only the database turns on (an API key made with `parley api-key
            # create`): no console chat will have the terminal, so the log comes back to it.
            setup_logging(settings.logging, settings.secrets())
            log.info("no console chat: the log is on this terminal again (began in %s)", log_file)
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
