"""The core's shape: bot/ knows no platform; each platform is one package under adapters/; and
no module of either imports one that imports it."""

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
PLATFORM_LIBRARIES = {
    "telegram",
    "telegramify_markdown",
    "discord",
    "nacl",
    "davey",
    "aiomqtt",
    "paho",
    "adapters",
}


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


def module_name(root: Path, path: Path) -> str:
    """The dotted name of a source file under `root`; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(
    root: Path, packages: tuple[str, ...] = ("bot", "adapters")
) -> dict[str, set[str]]:
    """Which of the modules under `root`'s `packages` each of them imports, at any depth.

    TYPE_CHECKING and function-level imports count; relative imports are resolved. `from p import
    n` imports the package `p` (its __init__), and also the module `p.n` when that is one.
    Packages a submodule import runs implicitly are left out: every module has those.
    """
    files = {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {module for module in found if module in files and module != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    """Each group of modules that import each other (strongly connected), as a circle from its
    first module by name, naming the group's other members when the circle misses some."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    found = []
    for group in groups:
        circle = _walk_around(graph, group)
        missed = sorted(group - set(circle))
        found.append(" -> ".join(circle) + (f" (also {', '.join(missed)})" if missed else ""))
    return sorted(found)


def _walk_around(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path through the group's imports from its first module back to it."""
    start = min(group)
    seen = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(graph[module] & group):
            if target == start:
                return [*seen[module], start]
            if target not in seen:
                seen[target] = [*seen[module], target]
                queue.append(target)
    raise AssertionError(f"no way around {sorted(group)}")


def test_no_module_imports_one_that_imports_it() -> None:
    circles = import_circles(import_graph(ROOT))
    assert not circles, "modules that import each other:\n" + "\n".join(circles)


def test_the_circle_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    # Under TYPE_CHECKING, relative, through a package's __init__, function-level, and a ring.
    write("bot/__init__.py", "")
    write(
        "bot/a.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bot.b import B\n"
    )
    write("bot/b.py", "from .a import A\nfrom bot import c\n")
    write("bot/c.py", "import bot.b\n")  # in the same group: named after its circle
    write("adapters/__init__.py", "")
    write("adapters/p/__init__.py", "def create():\n    from adapters.p.adapter import X\n")
    write("adapters/p/adapter.py", "from adapters.p import sharding\n")
    write("adapters/p/sharding.py", "import json\n")
    write("adapters/p/ok.py", "import adapters.p.sharding\nfrom . import sharding\n")
    write("adapters/r/__init__.py", "")
    write("adapters/r/x.py", "from ..r import y\n")
    write("adapters/r/y.py", "from adapters.r.z import Z\n")
    write("adapters/r/z.py", "def later():\n    import adapters.r.x\n")
    assert import_circles(import_graph(tmp_path)) == [
        "adapters.p -> adapters.p.adapter -> adapters.p",
        "adapters.r.x -> adapters.r.y -> adapters.r.z -> adapters.r.x",
        "bot.a -> bot.b -> bot.a (also bot.c)",
    ]


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
    assert [p.name for p in found] == packages == ["api", "discord", "mqtt", "telegram"]
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
        names = [p.name for p in adapters.platforms()]
        assert names == ["api", "discord", "mqtt", "telegram", "zz_example"]
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
