"""Fast checks of the cluster path without a cluster: job runtime_env, secrets, run-dir writability."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.cluster import ACTOR_ENV
from eva.checkpoint import RunDirError, check_writable
from pipelines.cli import is_secret_name, job_runtime_env

REPO = Path(__file__).resolve().parents[2]


def test_job_runtime_env_carries_actor_env_and_refuses_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("EVA_CACHE_DIR", "/tmp/somewhere")
    env = job_runtime_env(["FOO=1"], None)["env_vars"]
    assert env == {**ACTOR_ENV, "EVA_CACHE_DIR": "/tmp/somewhere", "FOO": "1"}  # nothing from the environment but these
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET", "RAY_AUTH_TOKEN"):
        with pytest.raises(ValueError, match=name):
            job_runtime_env([f"{name}=x"], None)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        job_runtime_env(["NOEQUALS"], None)
    assert job_runtime_env([], Path("/src"))["working_dir"] == "/src"
    assert is_secret_name("wandb_api_key") and not is_secret_name("TOKENIZERS_PARALLELISM")


def _eva(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_submit_rejects_bad_input_before_contacting_a_cluster():
    bad = _eva("submit", "--preset", "tiny", "--set", "ray.placement=EVERYWHERE", "--address", "http://127.0.0.1:9")
    assert bad.returncode == 2 and "ray.placement" in bad.stderr
    secret = _eva("submit", "--preset", "tiny", "--env", "HF_TOKEN=hf_x", "--address", "http://127.0.0.1:9")
    assert secret.returncode == 2 and "HF_TOKEN" in secret.stderr and "hf_x" not in secret.stdout + secret.stderr
    down = _eva("submit", "--preset", "tiny", "--address", "http://127.0.0.1:9")
    assert down.returncode == 2 and "cannot submit" in down.stderr
    mixed = _eva("submit", "--resume", "/mnt/shared/runs/x", "--preset", "tiny", "--address", "http://127.0.0.1:9")
    assert mixed.returncode == 2 and "--resume continues a run with the config in its run.yaml; drop --preset" in mixed.stderr
    not_a_run = _eva("submit", "--resume", str(REPO), "--address", "http://127.0.0.1:9")
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr


def test_unwritable_run_dir_fails_early(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works as root too (chmod would not stop root)
    with pytest.raises(RunDirError, match="not writable"):
        check_writable(blocker / "run")
    check_writable(tmp_path / "ok" / "run")  # probes the nearest existing parent, creates nothing
    assert list(tmp_path.iterdir()) == [blocker]
    # the CLI: exit 2 before anything starts or is written
    proc = _eva("run", "--preset", "tiny", "--run-dir", str(blocker / "run"))
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr
    proc = _eva("run", "--preset", "tiny", "--run-dir", "s3://bucket/runs/x")
    assert proc.returncode == 2 and "run.dir" in proc.stderr and "mount the bucket" in proc.stderr and not (REPO / "s3:").exists()
    assert list(tmp_path.iterdir()) == [blocker]
