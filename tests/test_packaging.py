"""A wheel that works: built, installed without -e into a fresh venv, run from elsewhere."""

from __future__ import annotations

import asyncio
import os
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
