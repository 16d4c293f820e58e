"""Held-out responses of `eva eval`: one row per prompt, outcomes that count the reported win rate,
a Parquet file in the run's eval/ folder that `datasets` opens, and the biggest wins and losses."""

from __future__ import annotations

import math
from pathlib import Path

import datasets

from eva.checkpoint import RunDir
from eva.config import RunConfig
from eva.evaluation import biggest_changes, eval_responses_table, win_rate

BASE = [0.5, 0.2, 0.9, 0.4, float("nan"), 0.3]
NEW = [0.7, 0.2, 0.1, 0.45, 0.8, 0.6]


def table():
    ids = [f"id{i}" for i in range(6)]
    return eval_responses_table(
        ids,
        [f"prompt {i}" for i in range(6)],
        [f"old {i}" for i in range(6)],
        [f"new {i}" for i in range(6)],
        BASE,
        NEW,
    )


def test_outcomes_and_deltas_count_the_win_rate():
    t = table()
    assert t.column("outcome").to_pylist() == ["win", "tie", "loss", "win", "nonfinite", "win"]
    deltas = t.column("delta").to_pylist()
    assert [round(d, 6) for d in deltas if not math.isnan(d)] == [0.2, 0.0, -0.8, 0.05, 0.3]
    points = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    scored = [points[o] for o in t.column("outcome").to_pylist() if o != "nonfinite"]
    assert sum(scored) / len(scored) == win_rate(NEW, BASE)["win_rate"] == 3.5 / 5


def test_biggest_wins_and_losses():
    t = table()
    assert [r["prompt_id"] for r in biggest_changes(t, 2)] == ["id5", "id0"]  # +0.3, +0.2
    assert [r["prompt_id"] for r in biggest_changes(t, 5, losses=True)] == ["id2"]  # only one lost
    assert biggest_changes(t, 1)[0]["response"] == "new 5" and biggest_changes(t, 1)[0]["response_initial"] == "old 5"


def test_the_run_directory_owns_the_file_and_datasets_opens_it(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    run.init(RunConfig())
    path = run.write_eval_responses(3, table())
    assert path == tmp_path / "run" / "eval" / "iteration_0003.responses.parquet"
    assert run.eval_responses(3).to_pandas().equals(table().to_pandas())  # NaN where NaN was
    assert 3 not in run.eval_paths()  # eval_paths lists the JSON results only
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.num_rows == 6 and ds[2]["response"] == "new 2" and ds[2]["outcome"] == "loss"
