"""A real two-node Ray cluster on loopback: `eva submit` the tiny preset as a Ray Job with one engine
replica per node (STRICT_SPREAD), and check where the actors ran, the run's manifests, and that a
secret in the nodes' environment reaches neither the run directory nor the job's logs.

The cluster processes are started in their own sessions and ended by process id at the end (never
`ray stop`, which would also stop other Ray clusters on this machine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eva.checkpoint import RunDir

REPO = Path(__file__).resolve().parents[2]


def run_eva(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not check or proc.returncode == 0, (
        f"eva {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECRET = "hf_do_not_leak_7c1e9a"
TOKEN = secrets.token_hex(16)  # the cluster's Ray auth token: auth on, as the manifests keep it
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines() if line.strip()) if int(s) == sid]


def _end_sessions(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, every process in the sessions this test started (by pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            for pid in _session_pids(proc.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(3)
    for proc in procs:
        proc.wait(timeout=30)


def _alive_nodes(gcs: str, env: dict) -> int:
    out = subprocess.run([RAY, "status", "--address", gcs], env=env, capture_output=True, text=True, timeout=60).stdout
    active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


class Cluster:
    """A head node and worker nodes on loopback, 2 CPUs each, with Ray's token authentication on."""

    def __init__(self, tmp_path: Path) -> None:
        self.port, self.dash_port = _free_port(), _free_port()
        self.gcs = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": TOKEN,  # every node and every client of this cluster needs it
            "OMP_NUM_THREADS": "1",
            "EVA_CACHE_DIR": os.environ.get("EVA_CACHE_DIR", "/tmp/evacache"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "HF_TOKEN": SECRET,  # a secret in the nodes' environment, as a Kubernetes Secret would put it
        }
        self.env.pop("RAY_ADDRESS", None)
        self.logs = tmp_path / "raylogs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        # Every per-node port chosen free: the defaults (52365 for the dashboard agent's HTTP server, ...)
        # are shared by every Ray instance on the machine, and the test session's own local Ray already
        # holds them. An agent that cannot bind serves no Job API ("No available agent to submit job").
        ports = [
            f"--{flag}={_free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        ]
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports]
        proc = subprocess.Popen(
            [RAY, "start", *args, *common],
            env=self.env,
            stdout=open(self.logs / f"{name}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def _wait_nodes(self, n: int, name: str) -> None:
        deadline = time.time() + 120
        while _alive_nodes(self.gcs, self.env) < n:
            assert time.time() < deadline, (self.logs / f"{name}.log").read_text()[-3000:]
            time.sleep(2)

    def start_head(self) -> None:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=2",
                "--resources",
                json.dumps({"head": 1}),
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dash_port}",
                "--include-dashboard=true",
            ],
        )
        self._wait_nodes(1, "head")

    def add_worker(self) -> None:
        name = f"worker{len(self.workers)}"
        self.workers.append(
            self._start(name, [f"--address={self.gcs}", "--num-cpus=2", "--resources", json.dumps({"worker": 1})])
        )
        self._wait_nodes(1 + sum(1 for w in self.workers if w.poll() is None), name)

    def kill_worker(self) -> None:
        """Node loss: SIGKILL every process of the newest worker node (raylet, its workers, actors)."""
        worker = self.workers[-1]
        for pid in _session_pids(worker.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait(timeout=30)

    def close(self) -> None:
        _end_sessions(self.procs)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_head()
        c.add_worker()
        yield c
    finally:
        c.close()


def _client(address: str):
    """A job client of this test process, with the cluster's token in its own header: Ray caches the
    token a process first loaded (the test session's local Ray has another one)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {TOKEN}"})


def _wait_job(client, job_id: str, limit_s: float = 900):
    from ray.job_submission import JobStatus

    t0 = time.time()
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() - t0 > limit_s:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {limit_s} s:\n{client.get_job_logs(job_id)[-4000:]}")
        time.sleep(3)
    return status


def test_tiny_run_as_ray_job_spreads_engines_over_both_nodes(cluster, tmp_path):
    from ray.job_submission import JobStatus

    dash, env = cluster.dashboard, cluster.env
    run = tmp_path / "run"
    t0 = time.time()
    proc = run_eva(
        "submit",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--iterations",
        "1",
        "--address",
        dash,
        "--set",
        "ray.engine.replicas=2",
        "--set",
        "ray.placement=STRICT_SPREAD",
        "--set",
        "ray.placement_timeout_s=120",
        "--set",
        "ray.timeout_s=600",
        env=env,
    )
    assert "ray job logs -f" in proc.stdout
    # Token auth is on: a client without the token, or with another one, is turned away (exit 2, no traceback).
    for bad in (
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
        {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""},
    ):
        refused = run_eva(
            "submit",
            "--preset",
            "tiny",
            "--run-dir",
            str(tmp_path / "nope"),
            "--address",
            dash,
            env={**env, **bad},
            check=False,
        )
        assert (
            refused.returncode == 2 and "authentication" in refused.stderr.lower() and "Traceback" not in refused.stderr
        ), refused.stderr[-2000:]
    job_id = proc.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    client = _client(dash)
    # `eva status` on the shared run directory while the job runs: it reads, never waits or writes.
    deadline = time.time() + 600
    while not any(e.get("kind") == "stage_end" for e in RunDir(run).events()):
        assert time.time() < deadline and client.get_job_status(job_id) not in {JobStatus.FAILED, JobStatus.STOPPED}, (
            client.get_job_logs(job_id)[-4000:]
        )
        time.sleep(0.5)
    during = run_eva("status", str(run), env=env)
    # the job holds the run directory's writer lock: status names it as running (it reads, never waits)
    assert "incomplete" in during.stdout and "running: " in during.stdout, during.stdout
    status = _wait_job(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "complete: 1 iterations committed" in run_eva("status", str(run), env=env).stdout
    print(f"job {job_id} succeeded in {time.time() - t0:.0f}s")

    rd = RunDir(run)
    assert rd.verify_all() == []
    assert rd.committed(1)
    [up] = [e for e in rd.events() if e["kind"] == "actors_up"]
    engines = up["nodes"]["engine"]
    assert len(engines) == 2 and len(set(engines)) == 2, up  # STRICT_SPREAD: one replica per node
    all_nodes = {n for ids in up["nodes"].values() for n in ids}
    assert all_nodes == set(engines)  # the cluster has exactly these two nodes

    # The secret was in every node's environment; it must not be written anywhere the run keeps.
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".jsonl", ".json", ""}:
            assert SECRET not in path.read_text(errors="ignore"), path
    assert SECRET not in logs and TOKEN not in logs
    for path in run.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".jsonl", ".json", ""}:
            assert TOKEN not in path.read_text(errors="ignore"), path


def test_worker_node_lost_mid_rollout_then_resume_finishes(cluster, tmp_path):
    """Kill the worker node during the estimate stage: the run recovers through retries or stops with
    no half-written iteration; `eva resume` on the cluster (a worker back) then finishes it."""
    from ray.job_submission import JobStatus

    run = tmp_path / "run"
    proc = run_eva(
        "submit",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--iterations",
        "1",
        "--address",
        cluster.dashboard,
        "--set",
        "ray.engine.replicas=2",
        "--set",
        "ray.placement=SPREAD",
        "--set",
        "ray.timeout_s=300",
        env=cluster.env,
    )
    job_id = proc.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    client = _client(cluster.dashboard)
    deadline = time.time() + 600
    while not any(e.get("kind") == "stage_start" and e.get("stage") == "estimate" for e in RunDir(run).events()):
        assert time.time() < deadline and client.get_job_status(job_id) not in {JobStatus.FAILED, JobStatus.STOPPED}, (
            client.get_job_logs(job_id)[-4000:]
        )
        time.sleep(0.5)
    cluster.kill_worker()
    status = _wait_job(client, job_id)
    rd = RunDir(run)
    assert rd.verify_all() == []  # whatever happened, nothing committed is half-written
    if status == JobStatus.SUCCEEDED:
        assert rd.committed(1) and any(e["kind"] == "retry" for e in rd.events()), "a recovery must log its retries"
        print("recovered through retries")
        return
    assert not rd.committed(1), "a failed job must not leave iteration 1 committed"
    cluster.add_worker()
    # resume, as a Ray Job again
    proc = run_eva("submit", "--resume", str(run), "--address", cluster.dashboard, env=cluster.env)
    assert f"eva resume {run}" in proc.stdout
    resumed = proc.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    assert _wait_job(client, resumed) == JobStatus.SUCCEEDED, client.get_job_logs(resumed)[-4000:]
    assert "1 iteration(s) committed" in client.get_job_logs(resumed)
    assert rd.committed(1) and rd.verify_all() == []
    print("stopped resumable; eva submit --resume finished it")


def test_submit_follow_and_jobs_exit_with_the_job_status(cluster, tmp_path):
    """`eva submit --follow` streams the job's logs and exits with its status: a job whose `eva
    resume` refuses its input ends FAILED with eva's exit 2 and its last lines; `eva jobs follow`
    gives 0 for a job that succeeds and the driver's own code for one that fails; `eva jobs` lists
    and stops jobs."""
    dash, env = cluster.dashboard, cluster.env
    missing = tmp_path / "no-such-run"  # not on this machine either: the job itself finds out
    proc = run_eva("submit", "--resume", str(missing), "--follow", "--address", dash, env=env, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{missing} is not a run directory (no run.yaml)" in " ".join((proc.stdout + proc.stderr).split())
    assert "FAILED (exit 2)" in proc.stderr and "last" in proc.stdout and "Traceback" not in proc.stderr
    client = _client(dash)
    ok = client.submit_job(entrypoint=f"{sys.executable} -c \"print('hello from the job')\"")
    proc = run_eva("jobs", "follow", ok, "--address", dash, env=env, check=False)
    assert proc.returncode == 0 and "hello from the job" in proc.stdout and f"job {ok} SUCCEEDED" in proc.stdout
    bad = client.submit_job(entrypoint=f"{sys.executable} -c \"import sys; print('boom'); sys.exit(3)\"")
    proc = run_eva("jobs", "follow", bad, "--address", dash, env=env, check=False)
    assert proc.returncode == 3 and proc.stdout.splitlines().count("boom") == 2  # streamed, then in the last lines
    assert "log stream ended" not in proc.stdout
    slow = client.submit_job(entrypoint=f'{sys.executable} -c "import time; time.sleep(600)"')
    listed = run_eva("jobs", "list", "--address", dash, env=env).stdout
    assert all(j in listed for j in (ok, bad, slow)) and "SUCCEEDED" in listed and "FAILED" in listed
    run_eva("jobs", "stop", slow, "--address", dash, env=env)
    assert _wait_job(client, slow, limit_s=120).value == "STOPPED"
