"""What `make run` and `make test` would install, from setup's own plan (`--dry-run`).

The machine is simulated with setup's overrides: a venv folder that does not exist yet,
PARLEY_PG_BIN pointing nowhere (no PostgreSQL) and a PATH without chromium or chromedriver.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What scripts/setup.sh runs, and apt-get: present, so the plan is the one root would carry out.
TOOLS = ("bash", "cat", "cut", "dirname", "id", "sha256sum", "apt-get")
POSTGRES = "postgresql-15"
BROWSER = "chromium chromium-driver"


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without PostgreSQL and Chromium, and without a venv."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (tools / tool).symlink_to(found)
    return {
        "PATH": str(tools),
        "HOME": str(tmp_path),
        "PARLEY_VENV": str(tmp_path / "venv"),
        "PARLEY_PG_BIN": str(tmp_path / "no-postgresql"),
    }


def _setup_command(target: str) -> str:
    """The line `make TARGET` runs scripts/setup.sh with (from `make -n`, which runs nothing)."""
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (line,) = [line for line in shown.splitlines() if "scripts/setup.sh" in line]
    return line


def plan(target: str, env: dict[str, str]) -> str:
    """What `make TARGET`'s setup would do on the machine described by `env`."""
    done = subprocess.run(
        ["/bin/sh", "-c", f"{_setup_command(target)} --dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_neither_postgresql_nor_chromium(machine: dict[str, str]) -> None:
    shown = plan("run", machine)
    assert "extras: models)" in shown, shown
    assert "postgresql" not in shown.lower() and "chromium" not in shown.lower(), shown
    # Running installs only the default voice chain's last voice, and says why.
    installs = [line for line in shown.splitlines() if "apt-get" in line]
    assert installs == [
        "  - apt-get install espeak-ng: espeak-ng, the offline voice of French and every language "
        "but English (the bundled piper voice speaks English only)"
    ], shown
    assert "dev:" not in shown


def test_make_test_names_what_it_installs_with_apt_and_why(machine: dict[str, str]) -> None:
    shown = plan("test", machine)
    assert "extras: models,dev)" in shown, shown
    assert f"apt-get install {POSTGRES}: PostgreSQL 15 for the storage tests" in shown, shown
    assert f"apt-get install {BROWSER}: Chromium and chromium-driver for the admin" in shown
    assert "dev: the test, lint and type-check tools" in shown


def test_the_plan_without_root_says_to_install_them_by_hand(machine: dict[str, str]) -> None:
    (Path(machine["PATH"]) / "apt-get").unlink()  # no apt-get: as on a machine without it
    shown = plan("test", machine)
    assert "apt-get install" not in shown
    assert f"install it yourself ({POSTGRES}: PostgreSQL 15" in shown, shown
    assert f"install it yourself ({BROWSER}: Chromium" in shown, shown


def _stamp(venv: Path, extras: str) -> None:
    """A venv that setup finished with these extras, from the current files."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "scripts/setup.sh"):
        digest.update((ROOT / name).read_bytes())
    (venv / ".parley-setup").write_text(f"{digest.hexdigest()} {extras}\n")


def test_make_test_after_make_run_adds_the_dev_extras(machine: dict[str, str]) -> None:
    _stamp(Path(machine["PARLEY_VENV"]), "models")
    assert plan("run", machine).startswith("Nothing to do")
    shown = plan("test", machine)
    assert "extras: models,dev)" in shown, shown
    assert "dev: the test, lint and type-check tools" in shown
    assert f"apt-get install {POSTGRES}" in shown


def test_make_run_after_make_test_installs_nothing(machine: dict[str, str]) -> None:
    _stamp(Path(machine["PARLEY_VENV"]), "models,dev")
    assert (
        plan("run", machine)
        == f"Nothing to do: {machine['PARLEY_VENV']} is set up (extras: models,dev).\n"
    )
    assert plan("test", machine).startswith("Nothing to do")


def test_a_dry_run_by_environment_variable_changes_nothing(machine: dict[str, str]) -> None:
    env = {**machine, "PARLEY_SETUP_DRY_RUN": "1", "PARLEY_EXTRAS": "models"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Setup plan for {machine['PARLEY_VENV']} (extras: models):")
    assert not os.path.exists(machine["PARLEY_VENV"])
