"""Logging: readable lines by default, JSON lines on request, the level set, secrets redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bot.config import LoggingSettings
from bot.logs import setup_logging

SECRET = "123456:AAE-telegram-secret"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LoggingSettings(), [SECRET])
    logging.getLogger("parley.test").info("polling with %s", SECRET)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("INFO    parley.test: polling with [REDACTED]")


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LoggingSettings(format="json"), [SECRET])
    log = logging.getLogger("parley.test")
    log.warning("token %s refused", SECRET)
    try:
        raise ValueError(f"bad url https://api.telegram.org/bot{SECRET}/getMe")
    except ValueError:
        log.exception("request failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["level"] == "WARNING"
    assert first["logger"] == "parley.test"
    assert first["message"] == "token [REDACTED] refused"
    assert first["time"].endswith("Z")
    assert second["message"] == "request failed"
    assert "ValueError: bad url https://api.telegram.org/bot[REDACTED]/getMe" in second["exception"]
    assert SECRET not in json.dumps([first, second])


def test_the_level_is_configurable(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("parley.test")
    setup_logging(LoggingSettings(level="WARNING"), [])
    log.info("hidden")
    log.warning("shown")
    assert [line.rsplit(": ", 1)[-1] for line in capsys.readouterr().err.splitlines()] == ["shown"]
    setup_logging(LoggingSettings(level="DEBUG"), [])
    log.debug("details")
    assert capsys.readouterr().err.rstrip().endswith("parley.test: details")


def test_a_password_inside_any_url_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """Also a URL no setting names (a redirect, a library's message)."""
    setup_logging(LoggingSettings(), [])
    logging.getLogger("parley.test").warning(
        "retrying http://bob:s3cr3t-pw@10.0.0.5:8080/v1 and redis://:other-pw@cache:6379"
    )
    line = capsys.readouterr().err
    assert "http://bob:[REDACTED]@10.0.0.5:8080/v1" in line
    assert "redis://:[REDACTED]@cache:6379" in line
    assert "s3cr3t-pw" not in line and "other-pw" not in line
