"""A real two-node Ray cluster on loopback: `eva submit` the tiny preset as a Ray Job with one engine
replica per node (STRICT_SPREAD), and check where the actors ran, the run's manifests, and that a
secret in the nodes' environment reaches neither the run directory nor the job's logs.

The cluster processes are started in their own sessions and ended by process id at the end (never
`ray stop`, which would also stop other Ray clusters on this machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eva.checkpoint import RunDir

REPO = Path(__file__).resolve().parents[2]


def run_eva(*args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"eva {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECRET = "hf_do_not_leak_7c1e9a"
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


@pytest.fixture
def two_node_cluster(tmp_path):
    """(dashboard address, env): a head node and a worker node, 2 CPUs each, token auth off (loopback only)."""
    port, dash = _free_port(), _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "EVA_CACHE_DIR": os.environ.get("EVA_CACHE_DIR", "/tmp/evacache"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HF_TOKEN": SECRET,  # a secret in the nodes' environment, as a Kubernetes Secret would put it
    }
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    logs = tmp_path / "raylogs"
    logs.mkdir()
    procs = [subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--resources", json.dumps({"head": 1}),
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", *common],
        env=env, stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)]
    gcs = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while _alive_nodes(gcs, env) < 1:
            assert time.time() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(2)
        procs.append(subprocess.Popen(
            [RAY, "start", f"--address={gcs}", "--num-cpus=2", "--resources", json.dumps({"worker": 1}), *common],
            env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        while _alive_nodes(gcs, env) < 2:
            assert time.time() < deadline, (logs / "worker.log").read_text()[-3000:]
            time.sleep(2)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _end_sessions(procs)


def test_tiny_run_as_ray_job_spreads_engines_over_both_nodes(two_node_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    dash, env = two_node_cluster
    run = tmp_path / "run"
    t0 = time.time()
    proc = run_eva(
        "submit", "--preset", "tiny", "--run-dir", str(run), "--iterations", "1", "--address", dash,
        "--set", "ray.engine.replicas=2", "--set", "ray.placement=STRICT_SPREAD", "--set", "ray.placement_timeout_s=120",
        "--set", "ray.timeout_s=600", env=env,
    )
    assert "ray job logs -f" in proc.stdout
    job_id = proc.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    client = JobSubmissionClient(dash)
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() - t0 > 900:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after 900 s:\n{client.get_job_logs(job_id)[-4000:]}")
        time.sleep(5)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
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
    assert SECRET not in logs
