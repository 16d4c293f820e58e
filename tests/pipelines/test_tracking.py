"""run.report_to: TensorBoard and Weights & Biases (offline, no network) get every number of an
iteration's metrics.json at its step, W&B also a table of evolved prompts; a tracker the config names
but the environment lacks stops `eva run` with exit 2 before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wandb_log import history

from eva.checkpoint import RunDir
from eva.config import ConfigError, load_config
from eva.types import IterationMetrics, Prompt
from pipelines import cli, tracking
from pipelines.tracking import Trackers, check_trackers, scalars


def metrics(t: int) -> dict:
    return IterationMetrics(
        iteration=t,
        buffer_size=16 + 4 * t,
        num_evolved=4,
        num_pairs=3 * t,
        train_loss=0.69 / t,
        reward_summary={"mean": 0.1 * t, "std": 0.02},
        stage_seconds={"estimate": 1.5 * t, "solve": 2.25},
        health={"pair_yield": 0.25 * t, "tie_share": float("nan")},
    ).to_dict()


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "eva-test")


def test_tensorboard_and_wandb_get_the_iteration_scalars(tmp_path: Path, offline_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(preset="tiny", overrides=[f"run.dir={tmp_path / 'run'}", "run.report_to=[tensorboard, wandb]"])
    run = RunDir(cfg.run.run_dir)
    run.init(cfg)
    seed = Prompt.seed("Write a haiku about rivers")
    children = [seed.child(f"Write a haiku about rivers in month {i}", "deepen", 1) for i in range(20)]
    trackers = Trackers(cfg, run)
    trackers.log_iteration(1, metrics(1), children)
    trackers.log_iteration(2, metrics(2), [])
    trackers.close()
    logged = history(run.root)
    events = EventAccumulator(str(run.root / "tensorboard"))
    events.Reload()
    for t in (1, 2):
        expected = scalars(metrics(t))
        assert {"train_loss", "reward_summary/mean", "stage_seconds/estimate", "health/pair_yield"} <= expected.keys()
        assert "health/tie_share" not in expected  # nan: not a scalar
        for key, value in expected.items():
            assert logged[t][key] == pytest.approx(value, rel=1e-9), key
            [tb] = [e.value for e in events.Scalars(key) if e.step == t]
            assert tb == pytest.approx(value, rel=1e-6), key
        assert logged[t]["iteration"] == t
    assert logged[1]["train_loss"] == pytest.approx(0.69) and logged[2]["num_pairs"] == 6
    assert logged[1]["evolved_prompts/_type"] == "table-file"
    assert (logged[1]["evolved_prompts/nrows"], logged[1]["evolved_prompts/ncols"]) == (tracking.SAMPLE_PROMPTS, 5)
    [files] = (run.root / "wandb").glob("offline-run-*/files")
    table = json.loads((files / logged[1]["evolved_prompts/path"]).read_text())
    assert table["columns"] == ["id", "parent_id", "operator", "depth", "text"]
    assert table["data"][3] == [children[3].id, seed.id, "deepen", 1, children[3].text]
    assert not any(k.startswith("evolved_prompts") for k in logged[2])  # nothing evolved


def test_report_to_defaults_and_validation(tmp_path: Path, monkeypatch):
    assert load_config(preset="tiny").run.trackers(lambda name: True) == ["tensorboard"]
    assert load_config(preset="tiny").run.trackers(lambda name: False) == []
    assert load_config(preset="tiny", overrides=["run.report_to=all"]).run.trackers(lambda n: n == "wandb") == ["wandb"]
    assert load_config(preset="tiny", overrides=["run.report_to=none"]).run.trackers(lambda name: True) == []
    with pytest.raises(ConfigError, match=r"run.report_to: .*unknown tracker\(s\) \['mlflow'\]"):
        load_config(preset="tiny", overrides=["run.report_to=[mlflow]"])
    monkeypatch.setattr(tracking, "installed", lambda name: name != "wandb")
    with pytest.raises(
        ConfigError, match=r"run.report_to names wandb, but its package is not installed: pip install wandb"
    ):
        check_trackers(load_config(preset="tiny", overrides=["run.report_to=wandb"]))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli.app, ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "run.report_to=wandb"]
    )
    message = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "pip install wandb (or pip install 'eva-rlhf[wandb]')" in message
    assert not run_dir.exists()
