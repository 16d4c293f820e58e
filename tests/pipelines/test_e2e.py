"""End to end on the tiny preset: two iterations, then status / inspect / diff / export on the result."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from eva.checkpoint import RunDir
from eva.config import load_config
from eva.iteration import METRICS

pytestmark = pytest.mark.ray


def test_two_iterations_commit_everything(eva, reference_run: Path):
    run = RunDir(reference_run)
    cfg = load_config(preset="tiny")
    assert run.latest() == 2 and run.verify_all() == []
    assert [t for t in run.iterations() if run.committed(t)] == [0, 1, 2]
    seeds = run.iteration(0).buffer()
    assert len(seeds) == cfg.prompts.limit
    previous = seeds
    for t in (1, 2):
        folder = run.iteration(t)
        # the layout users are promised (DESIGN.md), spelled out on purpose
        for name in (
            "prompts.changes.parquet",
            "evolved.parquet",
            "pairs.parquet",
            "metrics.json",
            "policy/model.safetensors",
            "MANIFEST.json",
        ):
            assert folder.file(name).exists(), name
        assert sorted(run.stages_done(t)) == sorted(
            ["estimate", "sample", "evolve", "mix", "solve", "pairs", "train", "commit"]
        )
        buffer = folder.buffer()
        evolved = folder.evolved()
        metrics = folder.metrics()
        # metrics.json holds exactly IterationMetrics' fields (timing nested, no legacy `extra`)
        assert json.loads(folder.file(METRICS).read_text()) == metrics.to_dict()
        # The buffer only grows, by exactly the evolved children (never pruned).
        assert set(previous.ids()) <= set(buffer.ids())
        assert len(buffer) == len(previous) + len(evolved) == metrics.buffer_size
        # The iteration stores only the buffer rows it touched: its children, X_{t-1} (estimated) and X'_t.
        changed = pq.read_table(folder.file("prompts.changes.parquet"), columns=["id"]).column("id").to_pylist()
        touched = {p.id for p in evolved} | set(run.iteration(t - 1).train_ids()) | set(folder.train_ids())
        assert sorted(changed) == sorted(touched) and run.stage_info(t, "commit")["buffer_rows_written"] == len(touched)
        # Lineage: every child points at a prompt of the previous buffer that was sampled this iteration.
        sampled = folder.sampled_ids()
        assert metrics.num_sampled == len(sampled) == -(-len(run.iteration(t - 1).train_ids()) // 4)
        for child in evolved:
            parent = previous.get(child.parent_id)
            assert child.parent_id in sampled
            assert child.depth == parent.depth + 1 and child.root_id == parent.root_id and child.iteration == t
            assert buffer.ancestry(child.id)[0].is_seed
        pairs = folder.pairs()
        assert metrics.num_pairs == len(pairs) > 0
        assert all(p.chosen_reward > p.rejected_reward for p in pairs)
        assert metrics.train_steps > 0 and metrics.train_loss is not None
        assert metrics.reward_summary["count"] == metrics.num_train_prompts * cfg.solver.n_responses
        # overhead accounting: every kind of work was seen inside the iteration, and none exceeds it
        timing = metrics.timing
        assert all(timing.busy_by_kind[k] > 0 for k in ("generate", "score", "train"))
        stages_s = sum(metrics.stage_seconds.values())
        assert (
            0 < timing.busy_s <= timing.wall_s
            and stages_s - metrics.stage_seconds["commit"] <= timing.wall_s <= stages_s + 5.0
        )
        assert timing.busy_by_kind["train"] <= metrics.stage_seconds["train"]
        assert timing.overhead_s == pytest.approx(timing.wall_s - timing.busy_s, abs=1e-3)
        previous = buffer
    events = [e["kind"] for e in run.events()]
    assert events.count("iteration_end") == 2 and "actors_up" in events


def test_status_inspect_diff_export(eva, reference_run: Path, tmp_path: Path):
    run = RunDir(reference_run)
    status = eva("status", str(reference_run)).stdout
    assert "complete: 2 iterations committed" in status
    buffer = run.iteration(2).buffer()
    child = next(p for p in buffer.prompts() if p.depth >= 1)
    lineage = eva("inspect", str(reference_run), "--lineage", child.id).stdout
    assert child.id in lineage and child.parent_id in lineage
    assert "reward gap" in lineage and child.operator in lineage
    one = run.iteration(1).buffer()
    for sort, value in (
        ("reward", lambda p: one.stats(p.id)["mean_reward"]),
        ("informativeness", lambda p: one.stats(p.id)["info"]),
        ("depth", lambda p: p.depth),
    ):
        table = eva("inspect", str(reference_run), "--iteration", "1", "--top", "3", "--sort", sort).stdout
        shown = [p for p in one.prompts() if f" {p.id} " in table]
        assert len(shown) == 3, f"--sort {sort}: {len(shown)} rows"
        ranked = sorted((value(p) for p in one.prompts() if value(p) is not None), reverse=True)
        assert sorted((value(p) for p in shown), reverse=True) == ranked[:3], f"--sort {sort}: not the top 3"
    proc = eva("inspect", str(reference_run), "--sort", "length", check=False)
    assert proc.returncode == 2 and "--sort must be one of" in proc.stderr
    diff = eva("diff", str(reference_run), "0", "2").stdout
    seeds = run.iteration(0).buffer()
    added = [p for p in buffer.prompts() if p.id not in seeds]
    assert f"+{len(added)} added, -0 dropped" in diff
    for op in {p.operator for p in added}:  # the table of counts by operator
        assert re.search(rf"{op}\s*│\s*{sum(p.operator == op for p in added)}\s", diff), f"{op} count missing:\n{diff}"
    out = tmp_path / "pairs.jsonl"
    eva("export", str(reference_run), "--iteration", "2", "--what", "pairs", "--out", str(out))
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"} <= set(ds.column_names)
    assert ds.num_rows == len(run.iteration(2).pairs())
    out = tmp_path / "prompts.parquet"
    eva("export", str(reference_run), "--what", "prompts", "--out", str(out))
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert ds.num_rows == len(buffer) and {"id", "text", "parent_id", "info"} <= set(ds.column_names)
    # JSONL too; prompts never estimated have no stats yet: null, never a bare NaN datasets refuses
    out = tmp_path / "prompts.jsonl"
    eva("export", str(reference_run), "--what", "prompts", "--out", str(out))
    assert "NaN" not in out.read_text()
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == len(buffer) and sorted(ds["id"]) == sorted(buffer.ids())
    # the seeds: no stats yet
    eva("export", str(reference_run), "--iteration", "0", "--what", "prompts", "--out", str(out))
    assert "NaN" not in out.read_text()
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == cfg_limit(reference_run) and all(row["info"] is None and row["rewards"] == [] for row in ds)


def cfg_limit(run_dir: Path) -> int:
    return RunDir(run_dir).config().prompts.limit


def test_export_json_has_no_nan():
    from pipelines.cli import _json_safe

    row = {
        "rewards": [0.5, float("nan"), float("inf")],
        "info": float("nan"),
        "stats": {"m": float("-inf")},
        "n": 3,
        "t": "x",
    }
    assert _json_safe(row) == {"rewards": [0.5, None, None], "info": None, "stats": {"m": None}, "n": 3, "t": "x"}


def test_tensorboard_scalars_match_metrics(reference_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(reference_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for t in (1, 2):
        metrics = RunDir(reference_run).iteration(t).metrics()
        for tag, expected in (
            ("train_loss", metrics.train_loss),
            ("num_pairs", metrics.num_pairs),
            ("reward_summary/mean", metrics.reward_summary["mean"]),
            ("stage_seconds/solve", metrics.stage_seconds["solve"]),
        ):
            assert tag in tags
            [value] = [e.value for e in events.Scalars(tag) if e.step == t]
            assert value == pytest.approx(expected, rel=1e-6)


def test_eval_against_the_initial_policy_leaves_the_run_alone(eva, reference_run: Path, tmp_path: Path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(
        "".join(
            json.dumps({"question": q}) + "\n"
            for q in ("What is rain?", "Name a color.", "Count to three.", "Say hello.", "Unused.")
        )
    )
    copy = tmp_path / "run"  # a copy: other tests read the reference run's eval/ folder
    shutil.copytree(reference_run, copy)
    run = RunDir(copy)
    before = [run.manifest(t) for t in (0, 1, 2)]
    out = eva("eval", str(copy), "--prompts", str(heldout), "--column", "question", "--limit", "4").stdout
    result = json.loads(run.eval_path(2).read_text())
    assert result["n"] + result["nonfinite"] == 4 and result["n"] > 0 and result["iteration"] == 2
    assert (
        0 <= result["win_rate"] <= 1
        and math.isfinite(result["mean_reward"])
        and math.isfinite(result["mean_reward_initial"])
    )
    assert f"win rate {result['win_rate']:.3f}" in out
    assert [run.manifest(t) for t in (0, 1, 2)] == before and run.verify_all() == []
    proc = eva("eval", str(copy), "--prompts", str(tmp_path / "missing.jsonl"), check=False)
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_input_exits_2_and_leaves_the_run_alone(eva, reference_run: Path, tmp_path: Path):
    before = RunDir(reference_run).manifest(2)
    proc = eva("run", "--preset", "tiny", "--run-dir", str(reference_run), "--set", "solver.beta=0.5", check=False)
    assert proc.returncode == 2 and "solver.beta" in proc.stderr
    proc = eva("run", "--preset", "tiny", "--set", "creator.sample_frac=2", check=False)
    assert proc.returncode == 2 and "creator.sample_frac" in proc.stderr and "Traceback" not in proc.stderr
    proc = eva("inspect", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
    proc = eva("inspect", str(reference_run), "--iteration", "7", check=False)
    assert proc.returncode == 2 and "not committed" in proc.stderr
    assert RunDir(reference_run).manifest(2) == before and RunDir(reference_run).verify_all() == []


def test_verify_refuses_a_corrupted_run(eva, reference_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference_run, copy)
    target = copy / "iterations/0001/pairs.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    proc = eva("resume", str(copy), "--iterations", "3", check=False)
    assert proc.returncode == 2 and "iterations/0001/pairs.parquet" in proc.stderr


def test_two_writers_on_one_run_dir_exactly_one_proceeds(tmp_path: Path):
    """Two `eva run` on the same new run directory at once: one runs, the other exits 2 naming it
    (eva.runlock), and the finished run verifies."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "contended"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "run",
                "--preset",
                "tiny",
                "--run-dir",
                str(run_dir),
                "--iterations",
                "1",
            ],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [(c, o[1][-2000:]) for c, o in zip(codes, outputs, strict=True)]
    winner, loser = (procs[0], procs[1]) if codes[0] == 0 else (procs[1], procs[0])
    message = outputs[procs.index(loser)][1]
    assert f"{run_dir} is in use by another" in message and "Traceback" not in message
    assert f"pid {winner.pid}" in message or "has not recorded itself yet" in message
    run = RunDir(run_dir)
    assert run.latest() == 1 and run.verify_all() == [] and not (run_dir / "run.lock").exists()
    assert [e["kind"] for e in run.events()].count("actors_up") == 1  # the loser started nothing
