"""The loop's bookkeeping without actors: iteration 0's durable policy copy, stage markers that
record the config, redoing stages of a changed config, and stopping after iterations without pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eva.checkpoint import RunDir
from eva.config import load_config
from eva.types import IterationMetrics
from pipelines.loop import (
    Ctx,
    RunStalled,
    check_not_stalled,
    init_iteration_zero,
    pairless_streak,
    redo_stale_stages,
    stage,
)


class Lines(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def progress(self, *args, **kwargs) -> None:
        pass


def _policy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 64)
    (folder / "nested" / "extra.json").write_text("{}")
    (folder / "EVA_SOURCE").write_text("builtin:tiny")  # left out of the copy
    return folder


def test_iteration_zero_policy_copy_is_fsynced_before_and_after_its_rename(tmp_path: Path, durable_writes) -> None:
    cfg = load_config(preset="tiny", overrides=["prompts.limit=4"])
    run = RunDir(tmp_path / "run")
    run.init(cfg)
    init_iteration_zero(cfg, run, str(_policy(tmp_path)))
    policy = run.iteration(0).policy
    assert sorted(p.relative_to(policy).as_posix() for p in policy.rglob("*")) == [
        "config.json",
        "model.safetensors",
        "nested",
        "nested/extra.json",
    ]
    durable_writes.assert_folder(policy)
    assert run.committed(0) and run.verify_all() == []
    assert not [p for p in run.iteration_dir(0).iterdir() if p.name.startswith(".")]


def _ctx(cfg, run: RunDir) -> Ctx:
    return Ctx(cfg=cfg, run=run, actors=None, report=Lines())  # type: ignore[arg-type]


def test_stage_markers_record_the_config_and_a_changed_config_redoes_them(tmp_path: Path) -> None:
    old = load_config(preset="tiny")
    new = load_config(preset="tiny", overrides=["solver.beta=0.2"])
    run = RunDir(tmp_path / "run")
    run.init(old)
    ctx = _ctx(old, run)
    for name in ("estimate", "sample"):
        with stage(ctx, 1, name) as counts:
            counts["n"] = 1
    marker = json.loads((run.iteration_dir(1) / "stages" / "sample.done").read_text())
    assert marker["config_hash"] == old.fingerprint() and marker["info"]["n"] == 1
    assert redo_stale_stages(ctx, 1) == [] and run.stages_done(1) == ["estimate", "sample"]
    run.init(new, allow_changes=["solver.beta"])  # eva run --allow-change solver.beta
    ctx = _ctx(new, run)
    assert redo_stale_stages(ctx, 1) == ["estimate", "sample"]
    assert run.stages_done(1) == [] and "stages estimate, sample ran under a different config" in ctx.report[-1]
    # a mutable field (run.iterations) changes nothing
    longer = load_config(preset="tiny", overrides=["solver.beta=0.2", "run.iterations=5"])
    with stage(ctx, 1, "estimate"):
        pass
    assert redo_stale_stages(_ctx(longer, run), 1) == []


def _commit(run: RunDir, t: int, pairs: int) -> None:
    run.iteration(t).write_metrics(IterationMetrics(iteration=t, num_pairs=pairs))
    run.commit(t)


def test_the_loop_stops_after_the_configured_iterations_without_pairs(tmp_path: Path) -> None:
    cfg = load_config(preset="tiny", overrides=["run.max_iterations_without_pairs=2", "run.iterations=9"])
    run = RunDir(tmp_path / "run")
    run.init(cfg)
    for t, pairs in enumerate([0, 5, 0, 3, 0, 0]):  # iteration 0 never has pairs and never counts
        _commit(run, t, pairs)
    assert [pairless_streak(run, t) for t in range(6)] == [0, 0, 1, 0, 1, 2]
    for t in range(5):
        check_not_stalled(run, t, cfg)
    with pytest.raises(
        RunStalled,
        match=r"iterations 4-5 built no preference pair \(2 in a row; run.max_iterations_without_pairs is 2\)",
    ) as err:
        check_not_stalled(run, 5, cfg)
    assert "--allow-change" in str(err.value) and f"eva resume {run.root}" in str(err.value)
    assert [e for e in run.events() if e["kind"] == "stalled"][-1]["iterations_without_pairs"] == 2
    check_not_stalled(run, 5, load_config(preset="tiny", overrides=["run.max_iterations_without_pairs=3"]))
