"""The composition root (with bot/cli.py): the database, the LLM backends, speech, the tool
servers, the edit scheduler, the engine, the commands, and the platform adapters found under
adapters/.

This module and bot/cli.py are the only core modules that import adapters/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from adapters import platforms, settings_sections
from adapters.console import COMMANDS as CONSOLE_COMMANDS
from adapters.console import PLATFORM as CONSOLE
from bot.catalog import load_translations
from bot.command_table import Command
from bot.commands import Commands
from bot.config import Settings, load_settings, settings_class
from bot.delivery.scheduler import EditScheduler
from bot.engine import ConversationEngine
from bot.errors import ConfigError, StorageError
from bot.health import HealthChecks, database_check, llm_check, llm_status
from bot.http_server import HttpRoutes
from bot.llama_server import ManagedLlamaServer
from bot.llm import Api, LLMClient, configured_urls
from bot.models import ModelCatalog
from bot.platform import Platform, PlatformAdapter, Services
from bot.storage import HistoryStore, open_store

if TYPE_CHECKING:
    from bot.speech.stt import Transcriber
    from bot.speech.tts import SpeechSynthesizer
    from bot.tools.hub import ToolHub

log = logging.getLogger(__name__)

_RETENTION_SWEEP_S = 3600.0
# Unless engine.temperature is set: greedy decoding, so the same questions get the same answers
# at every run (the README's transcript is one), and no less often right than sampling at 0.3.
BUNDLED_MODEL_TEMPERATURE = 0.0


def load(path: str | Path | None = None) -> Settings:
    """The settings from `path` and the environment, with every platform's section."""
    return load_settings(path, settings_sections())


def full_settings_class() -> Callable[..., Settings]:
    """`Settings` with every platform's section (for building settings in code and tests).

    Typed as a callable: the platforms' sections are fields made at run time, unknown to mypy.
    """
    return settings_class(settings_sections())


def platform_commands() -> dict[str, tuple[Command, ...]]:
    """The commands only each platform (and the console) has, offered there besides the core's."""
    own = {platform.name: platform.commands for platform in platforms()}
    own[CONSOLE] = CONSOLE_COMMANDS
    return own


class ParleyApp:
    """Owns everything a running bot needs; `async with ParleyApp(settings) as app:`."""

    def __init__(self, settings: Settings, *, speech: bool = True) -> None:
        self.settings = settings
        self.speech = speech
        self.server: ManagedLlamaServer | None = None
        self.store: HistoryStore
        self.llm: LLMClient
        self.engine: ConversationEngine
        self.commands: Commands
        self.models: ModelCatalog
        self.tools: ToolHub | None = None  # the tool servers, when any are configured
        self.routes = HttpRoutes(settings.http)  # platforms served on the [http] endpoint
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ParleyApp:
        s = self.settings
        self.store = await open_store(s.storage)
        try:
            interrupted = await self.store.mark_interrupted()
            if interrupted:
                log.warning("%d replies were interrupted by the last shutdown", interrupted)
            urls, api = await self._backends()
            waits: dict[str, Callable[[], Awaitable[None]]] = {}
            known: dict[str, int] = {}
            if self.server is not None:
                waits[self.server.url] = self.server.wait_ready
                known[self.server.url] = self.server.slots
            self.llm = LLMClient(s.llm, urls, api, wait_ready=waits, known_slots=known)
            slots = await self.llm.discover()  # logs "N replies at once (source)"
            self.models = ModelCatalog(s.llm, self.llm)  # the chats' /model choices
            # A model's own servers answer its chats only, but their turns wait in the same
            # line: it is as long as all the servers run at once.
            slots += await self.models.discover()
            transcriber, synthesizer = self._speech()
            self.tools = await self._start_tools()
            self.engine = ConversationEngine(
                s,
                self.store,
                self.llm,
                EditScheduler(),
                slots=slots,
                transcriber=transcriber,
                synthesizer=synthesizer,
                models=self.models,
                tools=self.tools,
            )
            # A server down, back or resized: the line follows (llm.concurrency fixes the
            # default servers' part).
            if not s.llm.concurrency:
                self.llm.pool.on_capacity(self._resize_queue)
            self.models.on_capacity(self._resize_queue)
            self.commands = Commands(
                s, self.store, platform_commands(), tools=self.tools, models=self.models
            )
            # Every translation is read (and compiled) now, off the event loop: not at the
            # first message in each language.
            await asyncio.to_thread(load_translations)
            if s.storage.retention_days:
                self._tasks.append(asyncio.create_task(self._retention()))
            self._tasks.append(asyncio.create_task(self._forget_handled()))
        except BaseException:
            await self.aclose()
            raise
        return self

    def _resize_queue(self, _capacity: int) -> None:
        default = self.settings.llm.concurrency or self.llm.capacity
        self.engine.queue.resize(default + self.models.capacity)

    @property
    def services(self) -> Services:
        """What a platform adapter gets: the settings, the engine, the commands, the routes."""
        return Services(self.settings, self.engine, self.commands, self.routes)

    async def enabled_platforms(self) -> list[Platform]:
        """The platforms that run: their token is set (or, say, the HTTP API has a key)."""
        return [p for p in platforms() if await p.running(self.settings, self.store)]

    def create_adapter(self, platform: Platform) -> PlatformAdapter:
        """A platform's adapter, connected to this app's engine and commands."""
        return platform.create(self.services)

    async def _backends(self) -> tuple[list[str], Api]:
        s = self.settings.llm
        if urls := configured_urls(s):
            api: Api = "chat" if s.api == "auto" else s.api
            return urls, api
        log_path = Path(self.settings.storage.path).resolve().parent / "llama-server.log"
        self.server = ManagedLlamaServer(s.server, log_path=log_path)
        url = await self.server.start()
        # The bundled model is a base model without a chat template: drive it by raw completion,
        # and greedily (it strays from the facts at 0.7, and varies at any temperature).
        engine = self.settings.engine
        if self.server.uses_bundled_model and "temperature" not in engine.model_fields_set:
            engine.temperature = BUNDLED_MODEL_TEMPERATURE
        if s.api == "auto":
            api = "completion" if self.server.uses_bundled_model else "chat"
        else:
            api = s.api
        return [url, *s.fallback_urls], api

    async def _start_tools(self) -> ToolHub | None:
        """The configured tool servers, coming up in the background (a chat turns tools on or
        off, so they run whenever any is configured); None when there are none."""
        settings = self.settings.tools
        if not settings.servers:
            if settings.enabled:
                log.warning("tools.enabled is on, but no [tools.servers] are configured")
            return None
        from bot.tools.hub import ToolHub  # the MCP SDK, loaded only when tools are configured

        hub = ToolHub(settings)
        await hub.start()
        return hub

    def _speech(self) -> tuple[Transcriber | None, SpeechSynthesizer | None]:
        if not self.speech:
            return None, None
        from bot.speech.stt import Transcriber
        from bot.speech.tts import SpeechSynthesizer

        return Transcriber(self.settings.stt), SpeechSynthesizer(self.settings.tts)

    async def warm_up_speech(self) -> None:
        """Load the speech models now rather than at the first voice note (a few seconds)."""
        engine = self.engine
        try:
            if engine.transcriber is not None:
                await engine.transcriber.warm_up()
            if engine.synthesizer is not None:
                await engine.synthesizer.warm_up()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("speech: %s", problem)

    async def _retention(self) -> None:
        while True:
            deleted = await self.store.purge_older_than(self.settings.storage.retention_days)
            if deleted:
                log.info("retention: deleted %d messages", deleted)
            await asyncio.sleep(_RETENTION_SWEEP_S)

    async def _forget_handled(self) -> None:
        """Platform updates handled long ago cannot come again: their claims go."""
        while True:
            try:
                forgotten = await self.store.purge_handled()
            except StorageError as exc:  # the next sweep tries again
                log.info("handled updates not purged: %s", exc)
            else:
                if forgotten:
                    log.info("forgot %d handled platform updates", forgotten)
            await asyncio.sleep(_RETENTION_SWEEP_S)

    def health_checks(self) -> HealthChecks:
        """The database and LLM checks for /healthz; the CLI adds one per connected platform."""
        checks = HealthChecks()
        checks.add("database", database_check(self.store))
        checks.add("llm", llm_check(self.llm))
        checks.add_detail("llm", llm_status(self.llm, self.engine.queue))
        checks.add_detail("held", self.engine.hold.status)  # messages waiting for the store
        if self.models.status():  # a model's servers down leave its chats only unanswered
            checks.add_detail("models", self.models.status)
        tools = self.tools
        if tools is not None:  # shown, not checked: a tool server down costs no answer
            from bot.tools.status import health_detail

            checks.add_detail("tools", lambda: health_detail(tools.status()))
        return checks

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        engine = getattr(self, "engine", None)
        if engine is not None:
            for part in (engine.transcriber, engine.synthesizer):
                if part is not None:
                    await part.close()
        if self.tools is not None:
            await self.tools.aclose()
        if hasattr(self, "models"):
            await self.models.close()
        if hasattr(self, "llm"):
            await self.llm.close()
        if self.server is not None:
            await self.server.stop()
        await self.store.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
