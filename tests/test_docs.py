"""The documentation: generated pages current, every setting described, links and keys real."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, SecretStr

from adapters.console import PLATFORM as CONSOLE_PLATFORM
from bot import docs
from bot.app import load as load_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 25_000
# Pages written by hand (the generated ones come from the code, checked by other tests here).
HAND_WRITTEN = sorted(path for path in (ROOT / "docs").glob("*.md") if path not in docs.pages())
# Links to other pages and their anchors: [text](target) with a relative target.
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _fields(model: type[BaseModel], key: str) -> Iterator[tuple[str, Any]]:
    """Every (dotted key, field) under `model`, keyed tables as `.NAME.`."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{key}.{name}")
            continue
        entry = get_args(annotation)[1] if get_origin(annotation) is dict else None
        if isinstance(entry, type) and issubclass(entry, BaseModel):
            yield from _fields(entry, f"{key}.{name}.NAME")
        yield f"{key}.{name}", field


def _every_setting() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for name, field in docs.settings_model().model_fields.items():
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        found += _fields(field.annotation, name)
    return found


def test_the_generated_pages_are_current() -> None:
    stale = [
        path.relative_to(ROOT).as_posix()
        for path, text in docs.pages().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{', '.join(stale)} out of date: run `make docs` and commit the result"


def test_the_generator_writes_the_pages_and_then_has_nothing_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docs, "DOCS", tmp_path)
    (tmp_path / "commands.md").write_text("stale\n", encoding="utf-8")
    assert docs.main() == 0
    first = capsys.readouterr().out
    assert "configuration.md" in first and "commands.md" in first
    assert (tmp_path / "commands.md").read_text(encoding="utf-8") == docs.commands_page()
    assert docs.main() == 0
    assert capsys.readouterr().out == ""  # same input, same pages: nothing rewritten


def test_every_setting_has_a_description() -> None:
    missing = [key for key, field in _every_setting() if not (field.description or "").strip()]
    assert missing == []


def test_the_configuration_page_shows_each_key_with_its_variable_default_and_secrecy() -> None:
    page = docs.configuration_page()
    rows = {}
    for line in page.splitlines():
        if found := re.search(r"\| `(PARLEY_[A-Z_<>]+)` \|", line):
            rows[found.group(1)] = line
    for key, field in _every_setting():
        env = "PARLEY_" + "__".join(
            "<NAME>" if part == "NAME" else part.upper() for part in key.split(".")
        )
        assert env in rows, key
        row = rows[env]
        assert row.startswith(f"| `{key.rsplit('.', 1)[1]}` |"), row
        secret = SecretStr in (field.annotation, *get_args(field.annotation))
        assert ("**secret**" in row) == secret, key
    assert "| `parallel` | integer (1 to 64) | `2` | `PARLEY_LLM__SERVER__PARALLEL` |" in page
    assert '| `voice_listen` | one of `"free"`, `"wake_word"` | `"free"` |' in page


def test_the_documented_variables_set_their_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PARLEY_"):
            monkeypatch.delenv(key)
    page = docs.configuration_page()
    wanted = {
        "PARLEY_LLM__SERVER__MODEL_PATH": "/models/x.gguf",
        "PARLEY_LLM__MODELS__<NAME>__ABOUT": "bigger",
        "PARLEY_DISCORD__SHARD_IDS": "[1]",
        "PARLEY_DISCORD__SHARD_COUNT": "2",
        "PARLEY_ENGINE__TEMPERATURE": "0.2",
    }
    for name, value in wanted.items():
        assert f"`{name}`" in page
        monkeypatch.setenv(name.replace("<NAME>", "qwen"), value)
    settings: Any = load_settings(None)
    assert settings.llm.server.model_path == "/models/x.gguf"
    assert settings.llm.models["qwen"].about == "bigger"
    assert (settings.discord.shard_ids, settings.discord.shard_count) == ([1], 2)
    assert settings.engine.temperature == 0.2


def test_the_commands_page_lists_every_command_and_where_it_is_offered() -> None:
    page = docs.commands_page()
    surfaces = docs.command_surfaces()
    assert list(surfaces) == ["api", "discord", "mqtt", "telegram", "console"]
    for offered in surfaces.values():
        for command in offered:
            assert f"\n### /{command.name}\n" in page
            for entry in command.subcommands:
                assert f"`/{command.name} {entry.usage[1:]}`".replace("|", "\\|") in page
    assert "| [`/join`](#join) |  | yes |  |  |  |" in page
    assert "| [`/start`](#start) |  |  |  | yes | yes |" in page
    assert "| [`/help`](#help) | yes | yes | yes | yes | yes |" in page


def test_the_console_is_named_as_its_module_names_itself() -> None:
    assert docs.CONSOLE == CONSOLE_PLATFORM


def test_the_readme_is_short_and_links_every_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text) < README_LIMIT
    linked = {target.split("#")[0] for target in _LINK.findall(text)}
    pages = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "docs pages the README does not link"


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {docs.anchor(heading) for _, heading in _HEADING.findall(text)}


@pytest.mark.parametrize(
    "page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda path: path.name
)
def test_every_link_between_pages_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        missing_anchor = fragment and linked.suffix == ".md" and fragment not in _anchors(linked)
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


# Dotted keys a page names (`llm.server.model_path`, telegram.admin_ids): not a module
# (discord.py), a call (engine.handle()) nor a page (api.md, tools.md).
_SECTIONS = "|".join(docs.settings_model().model_fields)
_KEY = re.compile(rf"(?<![\w./-])((?:{_SECTIONS})\.(?!md\b)[a-z_]+(?:\.[A-Za-z_]+)*)(?![\w(])")
_VARIABLE = re.compile(r"\bPARLEY_[A-Z_]+\b")
# Not settings: the config file's path, setup's extras, and a mistyped key a page shows.
_NOT_SETTINGS = {"PARLEY_CONFIG", "PARLEY_EXTRAS", "PARLEY_TELEGRAM__TOKN"}


@pytest.mark.parametrize("page", [README, *HAND_WRITTEN], ids=lambda path: path.name)
def test_every_setting_a_page_names_exists(page: Path) -> None:
    known = {key for key, _ in _every_setting()}
    text = page.read_text(encoding="utf-8")
    named = {key.rstrip(".") for key in _KEY.findall(text) if not key.endswith((".py", ".md"))}
    # A keyed table's entries: llm.models.qwen.url is llm.models.NAME.url.
    named = {
        re.sub(r"^(llm\.models|tools\.servers)\.(?!NAME)[a-z0-9_-]+", r"\1.NAME", key)
        for key in named
    }
    variables = set(_VARIABLE.findall(text)) - _NOT_SETTINGS
    named |= {
        variable.removeprefix("PARLEY_").lower().replace("__", ".").rstrip(".")
        for variable in variables
    }
    prefixes = {key.rsplit(".", 1)[0] for key in known} | {key.split(".")[0] for key in known}
    assert sorted(key for key in named if key not in known | prefixes) == []
