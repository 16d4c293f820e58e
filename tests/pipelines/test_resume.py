"""The most important test: a run killed with SIGKILL at any stage and resumed ends where the
uninterrupted run ends — same committed prompt buffers, evolved prompts and pairs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from eva.checkpoint import RunDir
from pipelines.loop import STAGES

EVA_CLI = [sys.executable, "-m", "pipelines.cli"]  # as conftest.run_eva, but as a process we can signal
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.ray

# Crash points, in the order one run meets them: before a stage's output, after the trainer saved
# the policy but before the stage marker, and after metrics.json but before the MANIFEST commit.
FAULTS = ["1:estimate", "1:evolve", "1:train:saved", "2:commit:manifest"]
# Every stage of iteration 2: each resumed process starts its engines from a committed policy >= 1,
# which an uninterrupted run's engines never do (they receive every policy by push). Iteration 3
# repeats those code paths with policy 2, so it is killed at its two ends only (its first stage and
# its commit): 12 resumed processes instead of 20, about 5 minutes of CI.
LATE_FAULTS = [f"2:{where}" for where in (*STAGES[:-1], "train:saved", "commit", "commit:manifest")] + [
    "3:estimate",
    "3:commit:manifest",
]
COMPARED = ("prompts.changes.parquet", "estimate.parquet", "evolved.parquet", "rollouts.parquet", "pairs.parquet")


def _tables(
    run_dir: Path, t: int, names: tuple[str, ...] = ("prompts.changes.parquet", "evolved.parquet", "pairs.parquet")
) -> dict[str, list]:
    """The named tables of iteration t, and the whole buffer version t (built from the changes)."""
    folder = RunDir(run_dir).iteration(t)
    return {"buffer": folder.buffer().to_table().to_pylist()} | {
        name: pq.read_table(folder.file(name)).to_pylist() for name in names
    }


def _policy(run_dir: Path, t: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(RunDir(run_dir).iteration(t).policy / "model.safetensors"))


def _assert_same_run(run_dir: Path, reference: Path, iterations: range) -> None:
    """Every committed table and the policy weights of each iteration equal the reference's."""
    for t in iterations:
        assert _tables(run_dir, t, COMPARED) == _tables(reference, t, COMPARED), f"iteration {t} differs"
        mine, ref = _policy(run_dir, t), _policy(reference, t)
        assert mine.keys() == ref.keys() and all(mine[k].equal(ref[k]) for k in ref), f"policy of iteration {t} differs"


def test_sigkill_at_every_stage_then_resume_equals_uninterrupted(eva, reference_run: Path, tmp_path: Path):
    """Killed at every stage of a run whose engines and trainer take turns with the memory (model.sleep,
    cpu-default's setting; the tiny preset and the reference run keep them resident): the run resumes to
    the reference run's tables, so sleeping changes nothing, and a kill while the engines sleep (after
    the policy is saved, before they wake: 1:train:saved) resumes exactly too."""
    run_dir = tmp_path / "killed"
    for i, fault in enumerate(FAULTS):
        args = (
            ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "model.sleep=true"]
            if i == 0
            else ["resume", str(run_dir)]
        )
        proc = eva(*args, env={"EVA_FAULT_AT": fault}, check=False)
        assert proc.returncode == -9, f"{fault}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-2000:]}"
        run = RunDir(run_dir)
        t = int(fault.split(":")[0])
        assert not run.committed(t), f"{fault}: iteration {t} must not be committed"
    eva("resume", str(run_dir))
    run = RunDir(run_dir)
    assert run.latest() == 2 and run.verify_all() == [] and run.config().model.sleep is True
    _assert_same_run(run_dir, reference_run, range(1, 3))
    trained = [e["counts"] for e in run.events() if e["kind"] == "stage_end" and e["stage"] == "train"]
    assert len(trained) == 2 and all(c["sleep_s"] > 0 and c["sync_s"] > 0 for c in trained)
    assert all("sleep_s" not in e["counts"] for e in RunDir(reference_run).events() if e["kind"] == "stage_end")
    started = [e for e in run.events() if e["kind"] == "stage_start"]
    # every stage of both iterations once, plus once more for each stage a fault cut short
    assert len(started) == 2 * len(STAGES) + len(FAULTS)


def test_extend_a_finished_run(eva, reference_run: Path, tmp_path: Path):
    copy = tmp_path / "extend"
    shutil.copytree(reference_run, copy)
    before = RunDir(copy).manifest(2)
    # `eva run` on an existing run extends it
    eva("run", "--preset", "tiny", "--run-dir", str(copy), "--iterations", "3")
    run = RunDir(copy)
    assert run.latest() == 3 and run.verify_all() == [] and run.config().run.iterations == 3
    assert run.manifest(2) == before
    for t in (1, 2):
        assert _tables(copy, t) == _tables(reference_run, t)
    proc = eva("resume", str(copy), "--iterations", "0", check=False)
    assert proc.returncode == 2 and "--iterations" in proc.stderr and run.config().run.iterations == 3


def test_ctrl_c_stops_at_a_safe_point_and_resume_finishes_the_same_run(reference_run: Path, tmp_path: Path):
    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*EVA_CLI, "run", "--preset", "tiny", "--run-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 600
    while not (events.is_file() and '"stage": "solve"' in events.read_text()):  # inside iteration 1
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it reached the solve stage"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped at a safe point" in stderr and f"eva resume {run_dir}" in stderr
    run = RunDir(run_dir)
    assert not run.committed(1) and "solve" in run.stages_done(1) and run.verify_all() == []
    subprocess.run([*EVA_CLI, "resume", str(run_dir)], cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    assert run.latest() == 2
    for t in (1, 2):
        assert _tables(run_dir, t) == _tables(reference_run, t)


def test_sigkill_at_every_stage_of_later_iterations_then_resume_equals_uninterrupted(
    eva, reference_run_3: Path, tmp_path: Path
):
    """Iteration 2 killed at every stage (and between stages and commits), iteration 3 at both ends, each
    time resumed in a fresh process: the committed tables and policy weights equal the uninterrupted run's."""
    run_dir = tmp_path / "killed-late"
    for i, fault in enumerate(LATE_FAULTS):
        args = (
            ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--iterations", "3"]
            if i == 0
            else ["resume", str(run_dir)]
        )
        proc = eva(*args, env={"EVA_FAULT_AT": fault}, check=False)
        assert proc.returncode == -9, f"{fault}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-2000:]}"
        assert not RunDir(run_dir).committed(int(fault.split(":")[0])), f"{fault}: must not be committed"
    eva("resume", str(run_dir))
    run = RunDir(run_dir)
    assert run.latest() == 3 and run.verify_all() == []
    _assert_same_run(run_dir, reference_run_3, range(1, 4))


def test_sigkill_at_random_times_then_resume_equals_uninterrupted(reference_run_3: Path, tmp_path: Path):
    """Kills at (seeded) random moments after the actors are up, wherever the run happens to be."""
    import random

    run_dir = tmp_path / "killed-random"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    rng = random.Random(7)
    for i in range(3):
        args = (
            ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--iterations", "3"]
            if i == 0
            else ["resume", str(run_dir)]
        )
        proc = subprocess.Popen(
            [*EVA_CLI, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        events = run_dir / "events.jsonl"
        ups = events.read_text().count('"actors_up"') if events.is_file() else 0
        deadline = time.monotonic() + 600
        while not (events.is_file() and events.read_text().count('"actors_up"') > ups):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its actors were up"
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 25.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    subprocess.run([*EVA_CLI, "resume", str(run_dir)], cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    run = RunDir(run_dir)
    assert run.latest() == 3 and run.verify_all() == []
    _assert_same_run(run_dir, reference_run_3, range(1, 4))
