"""The `eva` CLI run for real (subprocess, local Ray, vLLM, TRL) on the tiny preset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EVA = [sys.executable, "-m", "pipelines.cli"]
REPO = Path(__file__).resolve().parents[2]


def run_eva(
    *args: str, env: dict | None = None, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `eva ARGS` in a new session (so a SIGKILL fault takes its Ray processes with it)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [*EVA, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"eva {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- "
            f"stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """`eva run --preset tiny ARGS` into a run directory made once per pytest session: under xdist the
    workers share it (the first to ask runs it, the others wait on a file lock), so two workers do not
    each spend minutes on the same reference run. Tests only read it (or copy it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, shared by popen-gwK/
    run_dir, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():  # none yet, or a worker failed or was killed while running it
            shutil.rmtree(run_dir, ignore_errors=True)
            run_eva("run", "--preset", "tiny", "--run-dir", str(run_dir), *args)
            done.touch()
    return run_dir


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted two-iteration tiny run: the end-to-end test reads it, resume tests compare to it."""
    return shared_run(tmp_path_factory, "reference")


@pytest.fixture(scope="session")
def reference_run_3(tmp_path_factory) -> Path:
    """An uninterrupted three-iteration tiny run, in one process."""
    return shared_run(tmp_path_factory, "reference3", "--iterations", "3")


@pytest.fixture
def eva():
    """`eva(*args, env=None, check=True)`: the CLI in a subprocess."""
    return run_eva
