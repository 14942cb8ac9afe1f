"""Logging: human-readable or JSON lines, with every configured secret redacted.

Lines go to stderr, or to a file while the console chat has the terminal (its conversation
stays readable; `--verbose` brings the lines back to the terminal).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

from bot.config import LoggingSettings, StorageSettings

_REDACTED = "[REDACTED]"
# A password inside a URL (http://user:password@host), also one no setting names (a URL a
# server redirected to): the configured URLs' passwords are among the secrets as well.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):[^@\s/]+@")


class RedactSecrets(logging.Filter):
    """Replaces secret values, and any password inside a URL, wherever they appear in a
    record's message, arguments or exception."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        return _URL_PASSWORD.sub(rf"\1:{_REDACTED}@", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


CONSOLE_LOG_NAME = "parley.log"
# The console chat's log file is kept to this size, with one older file beside it.
CONSOLE_LOG_BYTES = 5 * 1024 * 1024


def console_log_path(storage: StorageSettings) -> Path:
    """Where the console chat writes its log: beside the database, like llama-server's log."""
    return Path(storage.path).expanduser().parent / CONSOLE_LOG_NAME


def setup_logging(
    settings: LoggingSettings, secrets: list[str], *, file: Path | None = None
) -> None:
    """Configure the root logger once, for the whole process: stderr, or `file` when given.

    Raises OSError when the file cannot be opened. With a file, Python's own warnings are
    logged there too, so nothing but the conversation reaches the terminal.
    """
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(
            file, maxBytes=CONSOLE_LOG_BYTES, backupCount=1, encoding="utf-8"
        )
        logging.captureWarnings(True)
    if settings.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        # A file outlives the day it was started on: its lines carry the date.
        clock = "%H:%M:%S" if file is None else "%Y-%m-%d %H:%M:%S"
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", clock)
        )
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # These log full request URLs: Telegram's carry the bot token, an MCP server's may carry a key.
    for noisy in ("httpx", "httpx2", "httpcore", "aiosqlite", "asyncio", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
