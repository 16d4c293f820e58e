"""Peak memory of an eva run, per actor, as PSS (proportional set size).

    python -m benchmarks.memory                          # cpu-default, 1 iteration, this checkout
    python -m benchmarks.memory --iterations 4 --label four
    python -m benchmarks.memory --repo /path/to/old/checkout --label before

Runs `eva run --preset P` in a temporary run directory and samples every process of the job (the
driver and the local Ray cluster it starts) once a second. PSS divides each shared page (torch, vLLM
and Ray's libraries are mapped by every worker) among the processes that map it, so the per-process
figures add up to what the job holds; summed RSS would count those pages once per process.

Processes are grouped by role: an actor by the class in its Ray process title (`ray::PolicyTrainer`,
`ray::GenerationEngine`, `ray::RewardActor`; once a worker has shown an actor's title it keeps that
role), the driver (`eva run`), Ray's own processes (GCS, raylet, agents, monitors) and the pool of
task workers (`ray::IDLE`; `ray::rollout` in checkouts from before the rollouts ran in driver
threads). The table shows, per role, its peak and its share of the job's peak (the moment the summed
PSS was highest), the stage the run was in at that moment (from its events.jsonl), and the peak of
each stage. Writes benchmarks/results/memory-<label>.json, with the summed PSS at every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from benchmarks._proc import pss, run_sampled, tree

HERE = Path(__file__).resolve().parent
ACTOR_TITLE = re.compile(r"^ray::([A-Z]\w*)")  # ray::PolicyTrainer, ray::GenerationEngine.generate, ...


class Roles:
    """The role of each process of the job, remembered by pid (a worker that ran an actor is that
    actor's process for life; its title shows the method while a call runs)."""

    def __init__(self, driver: int) -> None:
        self.driver = driver
        self.by_pid: dict[int, str] = {}

    def of(self, proc: psutil.Process) -> str:
        if proc.pid == self.driver:
            return "driver (eva run)"
        known = self.by_pid.get(proc.pid)
        if known is not None:
            return known
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "other"
        match = ACTOR_TITLE.match(cmd)
        if match and match.group(1) != "IDLE":  # a pooled worker's title until it runs something
            role = match.group(1)
            self.by_pid[proc.pid] = role
            return role
        if cmd.startswith("ray::"):
            return "Ray task workers"  # ray::IDLE, ray::rollout: pooled, no fixed role (yet)
        return "Ray's own processes"  # gcs_server, raylet, dashboard agent, log monitor, ...


def measure(repo: Path, preset: str, iterations: int, run_dir: Path, log: Path, sets: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "pipelines.cli", "run", "--preset", preset, "--iterations", str(iterations)]
    args += ["--run-dir", str(run_dir), *(x for s in sets for x in ("--set", s))]
    samples: list[tuple[float, dict[str, int]]] = []
    roles: Roles | None = None

    def sample(pid: int) -> None:
        nonlocal roles
        roles = roles or Roles(pid)
        by_role: dict[str, int] = defaultdict(int)
        for proc in tree(pid):
            by_role[roles.of(proc)] += pss(proc)
        samples.append((time.time(), dict(by_role)))

    log.write_text("")
    rc, wall = run_sampled(args, env, repo, log, sample)
    if rc != 0:
        raise RuntimeError(f"eva run exited {rc}; see {log}")
    peak_t, peak = max(samples, key=lambda s: sum(s[1].values()))
    names = sorted({r for _, s in samples for r in s})
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    by_stage: dict[str, int] = {}
    for t, s in samples:
        where = stage_at(events, t)
        by_stage[where] = max(by_stage.get(where, 0), sum(s.values()))
    return {
        "preset": preset,
        "iterations": iterations,
        "sets": sets,
        "wall_s": round(wall, 1),
        "peak_pss_gb": round(sum(peak.values()) / 1e9, 3),
        "peak_by_role_gb": {r: round(max(s.get(r, 0) for _, s in samples) / 1e9, 3) for r in names},
        "at_peak_gb": {r: round(peak.get(r, 0) / 1e9, 3) for r in names},
        "peak_in": stage_at(events, peak_t),
        "peak_by_stage_gb": {where: round(v / 1e9, 3) for where, v in by_stage.items()},
        "curve": [(round(t - samples[0][0], 1), round(sum(s.values()) / 1e9, 3)) for t, s in samples],
    }


def stage_at(events: list[dict], when: float) -> str:
    """The run's step at time `when`, from its events.jsonl's events: "[2] train" (a stage that had
    started and not ended), "after [1] solve" (between stages), "starting actors" (before the first)."""
    last = "starting actors"
    for event in events:
        if event["ts"] > when:
            break
        if event["kind"] == "stage_start":
            last = f"[{event['iteration']}] {event['stage']}"
        elif event["kind"] == "stage_end":
            last = f"after [{event['iteration']}] {event['stage']}"
    return last


def print_table(result: dict) -> None:
    print(
        f"\n{result['label']}: {result['preset']}, {result['iterations']} iteration(s), {result['wall_s']:.0f} s; "
        f"peak summed PSS {result['peak_pss_gb']:.2f} GB, in {result['peak_in']}"
    )
    print(f"{'process':<24} {'own peak GB':>12} {'at job peak GB':>15}")
    for role, peak in sorted(result["peak_by_role_gb"].items(), key=lambda kv: -kv[1]):
        print(f"{role:<24} {peak:>12.2f} {result['at_peak_gb'][role]:>15.2f}")
    print(f"\n{'stage':<24} {'peak summed PSS GB':>19}")
    for where, peak in result["peak_by_stage_gb"].items():
        print(f"{where:<24} {peak:>19.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="checkout to run (default: this one)")
    parser.add_argument("--label", default="current")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a config override, repeatable")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eva-memory-"))
    print(f"run: {tmp / 'run'}  log: {tmp / 'run.log'}", flush=True)
    result = {
        "label": args.label,
        **measure(args.repo, args.preset, args.iterations, tmp / "run", tmp / "run.log", args.sets),
    }
    out = HERE / "results" / f"memory-{args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
