"""Run a command and measure it: wall time and the peak of the summed RSS of its process tree; and
PSS helpers (`tree_pss`), the measure to report.

The tree is the command and every descendant (a local Ray cluster started by `eva run` is: GCS,
raylet, the actors' workers). Summed RSS over-counts pages that processes share (Ray workers map the
same libraries), so it is an upper bound on the memory the job needs; summed PSS divides each shared
page among the processes that map it, so it adds up to what the job holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(
    args: list[str], env: dict, cwd: Path, log: Path | None, sample: Callable[[int], None], every_s: float = 1.0
) -> tuple[int, float]:
    """Run `args` to the end, calling `sample(pid)` every `every_s` seconds while it runs (from a
    thread); output to `log` (appended) or nowhere. Returns (exit code, wall seconds)."""
    out = open(log, "a") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def loop() -> None:
            while not done.wait(every_s):
                sample(proc.pid)

        sampler = threading.Thread(target=loop, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    return rc, time.perf_counter() - t0


def measure(
    args: list[str],
    env: dict | None = None,
    every_s: float = 1.0,
    log: Path | None = None,
    also: tuple[int, ...] = (),
    cwd: Path = REPO,
) -> dict:
    """Run `args` (from `cwd`, default the repo root), sampling the tree's RSS every `every_s`; raise if
    it fails. `env` adds to the environment (OMP_NUM_THREADS=1 unless given); a None value removes a
    variable. `also`: more process trees to count (the nodes of a cluster the command joins)."""
    merged = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    peak = 0

    def sample(pid: int) -> None:
        nonlocal peak
        peak = max(peak, sum(tree_rss(p) for p in (pid, *also)))

    if log:
        log.write_text("")
    env_ = {k: v for k, v in merged.items() if v is not None}
    rc, wall = run_sampled(args, env_, cwd, log, sample, every_s)
    if rc != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"{' '.join(args)} exited {rc}\n{tail}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(peak / 1e9, 2)}


# --- PSS: proportional set size (a shared page counts 1/n in each of the n processes that map it) ---------


def pss(proc: psutil.Process) -> int:
    """PSS of one process in bytes (0 once it is gone or unreadable)."""
    try:
        return proc.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return 0


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_pss(pid: int) -> int:
    """Summed PSS of a process tree: unlike summed RSS, shared library pages are counted once."""
    return sum(pss(p) for p in tree(pid))


def eva(*args: str) -> list[str]:
    """The `eva` command line, run with this interpreter."""
    return [sys.executable, "-m", "pipelines.cli", *args]


class LocalCluster:
    """A Ray head and worker nodes on loopback (`ray start`), each in its own session, every port free.

    Ended by process id (never `ray stop`, which would stop every Ray instance on the machine).
    """

    def __init__(self, folder: Path, cpus_per_node: int = 2) -> None:
        import socket

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        self.free_port, self.cpus, self.folder = free_port, cpus_per_node, folder
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []

    def add_node(self) -> None:
        name = "head" if not self.nodes else f"worker{len(self.nodes)}"
        role = (
            ["--head", f"--port={self.address.split(':')[1]}", "--include-dashboard=false"]
            if not self.nodes
            else [f"--address={self.address}"]
        )
        ports = [
            f"--{flag}={self.free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        ]
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            *role,
            f"--num-cpus={self.cpus}",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            *ports,
        ]
        self.nodes.append(
            subprocess.Popen(
                cmd,
                env=self.env,
                stdout=open(self.folder / f"{name}.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.time() + 180
        while self.alive_nodes() < len(self.nodes):
            if time.time() > deadline:
                raise RuntimeError(f"node {name} did not join: {(self.folder / f'{name}.log').read_text()[-2000:]}")
            time.sleep(2)

    def alive_nodes(self) -> int:
        ray = str(Path(sys.executable).with_name("ray"))
        out = subprocess.run(
            [ray, "status", "--address", self.address], env=self.env, capture_output=True, text=True, timeout=60
        ).stdout
        return sum(1 for line in out.split("Active:", 1)[-1].split("Pending:", 1)[0].splitlines() if "node_" in line)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.nodes)

    def close(self) -> None:
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            for node in self.nodes:
                for p in psutil.process_iter(["pid"]):
                    try:
                        if os.getsid(p.pid) == node.pid:
                            os.kill(p.pid, sig)
                    except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                        pass
            time.sleep(2)
        for node in self.nodes:
            node.wait(timeout=30)


def run_or_resume(run_dir: Path, preset: str, flags: list[str], sets: list[str], log: Path) -> dict:
    """`eva run` one benchmark run, or `eva resume` it where a crash left it unfinished; its timing."""
    if (run_dir / "run.yaml").is_file():
        return measure(eva("resume", str(run_dir)), log=log)
    return measure(eva("run", "--preset", preset, *flags, *[a for s in sets for a in ("--set", s)]), log=log)
