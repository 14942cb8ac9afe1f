"""The core's shape: bot/ knows no platform; each platform is one package under adapters/."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import adapters
from adapters.console import PLATFORM as CONSOLE
from bot.app import full_settings_class
from bot.config import PlatformSettings
from bot.platform import Platform

ROOT = Path(__file__).resolve().parent.parent
# The composition root: the only core modules that may import adapters/ (and so, indirectly,
# the platform libraries).
COMPOSITION_ROOT = {"bot/app.py", "bot/cli.py"}
PLATFORM_LIBRARIES = {"telegram", "telegramify_markdown", "discord", "nacl", "davey", "adapters"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_core_imports_no_platform_library_and_no_adapter() -> None:
    offenders = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in COMPOSITION_ROOT:
            continue
        bad = {m for m in imported_modules(path) if m.split(".")[0] in PLATFORM_LIBRARIES}
        if bad:
            offenders[relative] = sorted(bad)
    assert offenders == {}


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from adapters.telegram import adapter\n    import discord\n")
    assert {"adapters.telegram", "discord"} <= imported_modules(sneaky)


def test_every_platform_package_is_found_and_complete() -> None:
    packages = sorted(
        p.name for p in (ROOT / "adapters").iterdir() if (p / "__init__.py").is_file()
    )
    found = adapters.platforms()
    assert [p.name for p in found] == packages == ["discord", "telegram"]
    for platform in found:
        assert isinstance(platform, Platform)
        assert issubclass(platform.settings, PlatformSettings)
        assert platform.name == platform.settings.NAME
        folder = ROOT / "adapters" / platform.name
        # Each package owns its config, limits, error translation, doctor check and commands.
        for module in ("config", "limits", "errors", "doctor", "commands", "adapter", "targets"):
            assert (folder / f"{module}.py").is_file(), f"adapters/{platform.name}/{module}.py"


def test_a_new_platform_is_one_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A third platform's folder (here on a second search path of the adapters package) is found,
    # and its settings section composed, without editing anything else.
    folder = tmp_path / "zz_example"
    folder.mkdir()
    (folder / "__init__.py").write_text(
        "from typing import ClassVar\n"
        "from bot.config import PlatformSettings\n"
        "from bot.platform import Platform\n\n"
        "class ExampleSettings(PlatformSettings):\n"
        '    NAME: ClassVar[str] = "zz_example"\n'
        "    greeting: str = 'hi'\n\n"
        "async def _check(settings):\n    return []\n\n"
        "PLATFORM = Platform(settings=ExampleSettings, create=lambda s: None, check=_check)\n"
    )
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "adapters.zz_example", raising=False)
    adapters.platforms.cache_clear()
    try:
        assert [p.name for p in adapters.platforms()] == ["discord", "telegram", "zz_example"]
        settings = full_settings_class()(zz_example={"token": "t", "greeting": "hello"})
        section = settings.platform_sections()[-1]
        assert (section.NAME, section.enabled) == ("zz_example", True)
        assert "t" in settings.secrets()
    finally:
        adapters.platforms.cache_clear()
        sys.modules.pop("adapters.zz_example", None)


def test_the_console_chat_is_a_module_not_a_platform() -> None:
    assert CONSOLE == "console"
    assert CONSOLE not in [p.name for p in adapters.platforms()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(folder: str) -> dict[str, set[str]]:
    """Which of `folder`'s modules each of them imports (TYPE_CHECKING and function level too)."""
    modules = {module_name(path): path for path in (ROOT / folder).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        wanted: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                wanted.add(node.module)  # the module, or the package whose names are taken
                wanted.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {w for w in wanted if w in modules and w != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_core_has_no_import_circle() -> None:
    assert circles(import_graph("bot")) == []


def test_the_circle_check_sees_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
