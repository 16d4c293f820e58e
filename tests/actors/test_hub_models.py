"""Models by Hugging Face Hub name (org/name), offline: a model folder in the Hub cache exactly where
a first online download leaves it, with HF_HUB_OFFLINE=1 (never a network call). The name itself goes
to vLLM and transformers; the run copies the initial policy from the cached snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hubcache import cache_hub_model
from typer.testing import CliRunner

from actors.models import ModelError, model_config_file, model_folder, resolve_model_path
from pipelines import cli


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "a-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "original.pth").write_bytes(b"not needed")
    cache_hub_model(cache, "acme/reward-1b", folder)
    return cache


def test_a_hub_name_resolves_as_itself_and_to_its_cached_snapshot(hub_cache: Path):
    assert resolve_model_path("acme/reward-1b") == "acme/reward-1b"  # vLLM / transformers get the name
    config = model_config_file("acme/reward-1b")
    assert json.loads(config.read_text())["architectures"] == ["LlamaForSequenceClassification"]
    folder = Path(model_folder("acme/reward-1b"))
    assert folder.parent.parent.name == "models--acme--reward-1b"
    assert (folder / "model.safetensors").read_bytes() == b"weights" and (folder / "tokenizer.json").is_file()


def test_a_missing_hub_model_is_a_model_error_naming_it(hub_cache: Path, tmp_path: Path):
    with pytest.raises(ModelError, match=r"model 'acme/absent': not a local folder.*HF_HUB_OFFLINE is set"):
        resolve_model_path("acme/absent")
    with pytest.raises(ModelError, match=r"not a model folder \(no config.json\), nor a Hugging Face Hub model name"):
        resolve_model_path(str(tmp_path / "no" / "such" / "folder"))


def test_eva_run_refuses_a_missing_hub_model_before_anything_starts(hub_cache: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli.app, ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "reward.model=acme/absent"]
    )
    assert result.exit_code == 2, result.output
    assert "reward.model: model 'acme/absent'" in " ".join(result.stderr.split())
    assert not run_dir.exists()
