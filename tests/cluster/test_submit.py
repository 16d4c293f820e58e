"""Fast checks of the cluster path without a cluster: the actors' environment, job runtime_env,
secrets, the job API's retry, run-dir writability."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.cluster import ACTOR_ENV, PASSTHROUGH_ENV, actor_env, init_ray
from eva.checkpoint import RunDirError, check_writable
from eva.config import load_config
from pipelines.submit import SubmitError, is_secret_name, job_address, job_runtime_env, submit_job

REPO = Path(__file__).resolve().parents[2]


def test_job_runtime_env_carries_actor_env_and_refuses_secrets(monkeypatch):
    for name in PASSTHROUGH_ENV:
        monkeypatch.delenv(name, raising=False)
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


@pytest.mark.parametrize(
    "value, kind",
    [
        ("postgres://eva:hunter2@db.internal:5432/runs", "a URL with a password"),
        ("https://user:p%40ss@example.com/", "a URL with a password"),
        ("AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
        ("sk-proj-abcdefghijklmnopqrstuvwx", "an API token"),
        ("hf_" + "a1B2c3D4e5" * 4, "a Hugging Face token"),
        ("ghp_" + "x" * 36, "a GitHub token"),
        ("xoxb-1234567890-abcdefghij", "a Slack token"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc", "a private key"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig", "a JSON web token"),
    ],
)
def test_env_values_that_look_like_credentials_are_refused_without_echoing_them(value, kind):
    with pytest.raises(ValueError, match=f"--env DATABASE: the value looks like {kind}") as err:
        job_runtime_env([f"DATABASE={value}"], None)
    assert value not in str(err.value)


@pytest.mark.parametrize(
    "value", ["https://example.com/data", "http://host:8265", "s3://bucket/path", "sk-short", "task-ask-1", "1", ""]
)
def test_ordinary_env_values_pass(value):
    assert job_runtime_env([f"SOME_SETTING={value}"], None)["env_vars"]["SOME_SETTING"] == value


def test_actor_env_passes_through_only_what_is_set():
    assert actor_env({"PYTHONPATH": "", "HOME": "/root", "HF_TOKEN": "x"}) == ACTOR_ENV
    assert actor_env({"XDG_CACHE_HOME": "/x", "EVA_CACHE_DIR": "/c"}) == {
        **ACTOR_ENV,
        "XDG_CACHE_HOME": "/x",
        "EVA_CACHE_DIR": "/c",
    }
    assert ACTOR_ENV["OMP_NUM_THREADS"] == "1" and ACTOR_ENV["HF_HUB_OFFLINE"] == "1"


def test_every_ray_start_gives_actors_the_same_environment(monkeypatch):
    """init_ray (eva run), eva submit's runtime_env and the tests' Ray session all pass actor_env()."""
    import ray

    monkeypatch.setenv("EVA_CACHE_DIR", "/tmp/cache-a")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    monkeypatch.setenv("PYTHONPATH", "/src")
    for name in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(name, raising=False)
    expected = {**ACTOR_ENV, "EVA_CACHE_DIR": "/tmp/cache-a", "XDG_CACHE_HOME": "/tmp/xdg", "PYTHONPATH": "/src"}
    assert actor_env() == expected
    starts: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: starts.append(kwargs))
    init_ray(load_config(preset="tiny"))
    spec = importlib.util.spec_from_file_location("eva_root_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    session = conftest.ray_session.__wrapped__()  # the fixture's own code, with ray.init recorded
    next(session)
    session.close()
    assert [start["runtime_env"]["env_vars"] for start in starts] == [expected, expected]
    assert job_runtime_env([], None)["env_vars"] == expected


class FakeClient:
    """Stands in for ray.job_submission.JobSubmissionClient: raises the queued errors, then accepts."""

    errors: list[Exception] = []
    calls = 0

    def __init__(self, address: str) -> None:
        self.address = address

    def submit_job(self, entrypoint: str, runtime_env: dict, submission_id: str | None) -> str:
        FakeClient.calls += 1
        if FakeClient.errors:
            raise FakeClient.errors.pop(0)
        return submission_id or "raysubmit_1"


@pytest.fixture
def fake_client(monkeypatch):
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    FakeClient.errors, FakeClient.calls = [], 0
    return FakeClient


def test_submit_job_waits_for_the_job_agent_then_submits(fake_client):
    fake_client.errors = [RuntimeError("500: No available agent to submit job"), RuntimeError("No available agent")]
    waits: list[str] = []
    assert submit_job("http://head:8265", "eva run", {}, None, poll_s=0, on_wait=waits.append) == "raysubmit_1"
    assert fake_client.calls == 3 and waits == ["the cluster's job agent is not up yet; retrying in 0 s"] * 2


def test_submit_job_errors_say_what_to_check(fake_client):
    from ray.exceptions import AuthenticationError

    waits: list[str] = []
    fake_client.errors = [RuntimeError("No available agent")]
    with pytest.raises(
        SubmitError,
        match="cannot submit to the Ray job API at http://h:1: No available agent\nthe head's dashboard agent serves "
        "no HTTP",
    ):
        submit_job("http://h:1", "eva run", {}, None, wait_s=0, poll_s=0, on_wait=waits.append)  # the wait is over
    fake_client.errors = [ConnectionError("connection refused")]
    with pytest.raises(SubmitError, match="^cannot submit to the Ray job API at http://h:1: connection refused$"):
        submit_job("http://h:1", "eva run", {}, None, poll_s=0, on_wait=waits.append)  # not transient: no retry
    fake_client.errors = [AuthenticationError("token mismatch\ndetails")]
    with pytest.raises(
        SubmitError,
        match="refused the submission: token mismatch\nthe cluster uses token authentication: set RAY_AUTH_MODE=token",
    ):
        submit_job("http://h:1", "eva run", {}, "job-7", on_wait=waits.append)
    assert waits == [] and fake_client.calls == 3
    assert submit_job("http://h:1", "eva run", {}, "job-7") == "job-7"


def test_job_address_order():
    assert job_address("http://given:1", {"RAY_ADDRESS": "http://r:2"}) == "http://given:1"
    assert job_address(None, {"RAY_API_SERVER_ADDRESS": "http://api:3", "RAY_ADDRESS": "http://r:2"}) == "http://api:3"
    assert job_address(None, {"RAY_ADDRESS": "http://r:2"}) == "http://r:2"
    assert job_address(None, {}) == "http://127.0.0.1:8265"


def _eva(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_submit_rejects_bad_input_before_contacting_a_cluster():
    bad = _eva("submit", "--preset", "tiny", "--set", "ray.placement=EVERYWHERE", "--address", "http://127.0.0.1:9")
    assert bad.returncode == 2 and "ray.placement" in bad.stderr
    secret = _eva("submit", "--preset", "tiny", "--env", "HF_TOKEN=hf_x", "--address", "http://127.0.0.1:9")
    assert secret.returncode == 2 and "HF_TOKEN" in secret.stderr and "hf_x" not in secret.stdout + secret.stderr
    down = _eva("submit", "--preset", "tiny", "--address", "http://127.0.0.1:9")
    assert down.returncode == 2 and "cannot submit" in down.stderr
    mixed = _eva("submit", "--resume", "/mnt/shared/runs/x", "--preset", "tiny", "--address", "http://127.0.0.1:9")
    assert (
        mixed.returncode == 2
        and "--resume continues a run with the config in its run.yaml; drop --preset" in mixed.stderr
    )
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
    assert (
        proc.returncode == 2
        and "run.dir" in proc.stderr
        and "mount the bucket" in proc.stderr
        and not (REPO / "s3:").exists()
    )
    assert list(tmp_path.iterdir()) == [blocker]
