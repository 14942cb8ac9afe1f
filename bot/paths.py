"""Where Parley keeps its files, and how to install what is missing, by kind of install.

Run from a source checkout (`make run`), Parley keeps its files in ./data and its setup step is
`make run`. Installed as a package (`pip install parley`), it keeps them in the user's data
directory (XDG: $XDG_DATA_HOME/parley, else ~/.local/share/parley), and optional parts come from
pip's extras (`pip install 'parley[models]'`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CHECKOUT_DATA_DIR = Path("data")
APP_DIR_NAME = "parley"
MODELS_EXTRA = "models"  # pyproject.toml's extra with llama-server and the bundled models


def checkout_root() -> Path | None:
    """The source checkout this code runs from, or None when it is an installed package."""
    root = Path(__file__).resolve().parent.parent
    # An installed package sits in site-packages, which has neither of these; the Docker image
    # has the source but no Makefile (`make run` is no help there).
    if (root / "pyproject.toml").is_file() and (root / "Makefile").is_file():
        return root
    return None


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """./data in a checkout (relative, as `make run` uses it), else the user's data directory."""
    if checkout_root() is not None:
        return CHECKOUT_DATA_DIR
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec: a relative path in the variable is invalid and is ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / APP_DIR_NAME


def default_database_path() -> str:
    """The default `storage.path`: parley.db in the data directory."""
    return str(data_dir() / "parley.db")


def install_hint(extra: str = MODELS_EXTRA) -> str:
    """What to run to get an optional part: `make run` in a checkout, else pip with the extra."""
    if checkout_root() is not None:
        return "run `make run`"
    return f"run `pip install 'parley[{extra}]'`"
