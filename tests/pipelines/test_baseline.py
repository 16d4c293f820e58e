"""The fixed-prompt baseline (plain iterative DPO) on the tiny preset: same loop, creator stages skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eva.buffer import PromptBuffer, load_pairs
from eva.checkpoint import RunDir

pytestmark = pytest.mark.ray


def _train_ids(run: RunDir, t: int) -> list[str]:
    return json.loads((run.iteration_dir(t) / "train_prompts.json").read_text())["ids"]


def test_baseline_samples_fixed_prompts_and_stays_a_baseline(eva, tmp_path: Path):
    run_dir = tmp_path / "baseline"
    eva("run", "--preset", "tiny", "--baseline", "--run-dir", str(run_dir), "--set", "prompts.baseline_sample=6")
    run = RunDir(run_dir)
    assert run.latest() == 2 and run.verify_all() == [] and run.config().run.baseline
    seeds = PromptBuffer.load(run.iteration_dir(0) / "prompts.parquet")
    draws = []
    for t in (1, 2):
        folder = run.iteration_dir(t)
        assert sorted(run.stages_done(t)) == ["commit", "pairs", "solve", "train"]
        assert not (folder / "estimate.parquet").exists() and not (folder / "evolved.parquet").exists()
        ids = _train_ids(run, t)
        assert len(ids) == len(set(ids)) == 6 and set(ids) <= set(seeds.ids())
        draws.append(ids)
        buffer = run.iteration(t).buffer()
        assert buffer.ids() == seeds.ids()  # no creator: the buffer never grows
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["num_train_prompts"] == 6 and metrics["num_evolved"] == 0 and metrics["num_sampled"] == 0
        assert metrics["num_pairs"] == len(load_pairs(folder / "pairs.parquet")) > 0
        assert all(buffer.stats(i)["times_trained"] >= 1 for i in ids)
    assert draws[0] != draws[1]  # a fresh sample each iteration (seeded: the 16-choose-6 draws differ)

    # The loop is part of the run's identity: the eva loop on this run directory is refused ...
    before = run.manifest(2)
    proc = eva(
        "run",
        "--preset",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--set",
        "prompts.baseline_sample=6",
        "--iterations",
        "3",
        check=False,
    )
    assert proc.returncode == 2 and "run.baseline" in proc.stderr and "Traceback" not in proc.stderr
    assert run.manifest(2) == before and run.latest() == 2
    # ... and resume goes on with the baseline, as run.yaml says.
    eva("resume", str(run_dir), "--iterations", "3")
    assert run.latest() == 3 and sorted(run.stages_done(3)) == ["commit", "pairs", "solve", "train"]
    assert len(_train_ids(run, 3)) == 6
