"""The most important test: a run killed with SIGKILL at any stage and resumed ends where the
uninterrupted run ends — same committed prompt buffers, evolved prompts and pairs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from eva.checkpoint import RunDir


pytestmark = pytest.mark.ray

# Crash points, in the order one run meets them: before a stage's output, after the trainer saved
# the policy but before the stage marker, and after metrics.json but before the MANIFEST commit.
FAULTS = ["1:estimate", "1:evolve", "1:train:saved", "2:commit:manifest"]


def _tables(run_dir: Path, t: int) -> dict[str, list]:
    folder = RunDir(run_dir).iteration_dir(t)
    return {name: pq.read_table(folder / name).to_pylist() for name in ("prompts.parquet", "evolved.parquet", "pairs.parquet")}


def test_sigkill_at_every_stage_then_resume_equals_uninterrupted(eva, reference_run: Path, tmp_path: Path):
    run_dir = tmp_path / "killed"
    for i, fault in enumerate(FAULTS):
        args = ["run", "--preset", "tiny", "--run-dir", str(run_dir)] if i == 0 else ["resume", str(run_dir)]
        proc = eva(*args, env={"EVA_FAULT_AT": fault}, check=False)
        assert proc.returncode == -9, f"{fault}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-2000:]}"
        run = RunDir(run_dir)
        t = int(fault.split(":")[0])
        assert not run.committed(t), f"{fault}: iteration {t} must not be committed"
    eva("resume", str(run_dir))
    run = RunDir(run_dir)
    assert run.latest() == 2 and run.verify_all() == []
    for t in (1, 2):
        assert _tables(run_dir, t) == _tables(reference_run, t), f"iteration {t} differs after resume"
    resumed = [e for e in run.events() if e["kind"] == "stage_start"]
    assert len(resumed) > 8  # stages were started more than once: the faults really interrupted them


def test_extend_a_finished_run(eva, reference_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "extend"
    shutil.copytree(reference_run, copy)
    eva("resume", str(copy), "--iterations", "3")
    run = RunDir(copy)
    assert run.latest() == 3 and run.verify_all() == []
    for t in (1, 2):
        assert _tables(copy, t) == _tables(reference_run, t)
