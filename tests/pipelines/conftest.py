"""The `eva` CLI run for real (subprocess, local Ray, vLLM, TRL) on the tiny preset."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted two-iteration tiny run: the end-to-end test reads it, resume tests compare to it."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    run_eva("run", "--preset", "tiny", "--run-dir", str(run_dir))
    return run_dir


@pytest.fixture
def eva():
    """`eva(*args, env=None, check=True)`: the CLI in a subprocess."""
    return run_eva
