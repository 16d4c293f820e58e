"""A long job on the tiny preset: how disk, memory, seconds per iteration and resume time grow.

    python -m benchmarks.soak                         # 30 iterations with this checkout
    python -m benchmarks.soak --repo /path/to/checkout --label before --iterations 30

Runs `eva run --preset tiny` for N iterations (the tiny random-init model: every stage is real, the
outputs are noise, so what grows is the bookkeeping, not the work: the work per iteration is constant),
sampling the summed PSS of the job's process tree (the driver and its local Ray cluster) every 2 s.
Then times, on the finished run: `eva resume` with nothing left to do (verification plus loading
what a resume continues from), `eva status` and `eva report`. Per iteration it reports the wall time,
the bytes the iteration wrote outside its policy folder (the policy's size is fixed by the model),
the buffer size and the peak PSS while it ran. Writes benchmarks/results/soak-<label>.json.

`--repo` runs another checkout (a detached `git worktree` of an older commit) so that a before/after
pair runs the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._proc import run_sampled, tree_pss

HERE = Path(__file__).resolve().parent


def run(args: list[str], repo: Path, log: Path, samples: list[tuple[float, int]] | None = None) -> float:
    """Run `python -m pipelines.cli ARGS` in `repo`; returns the wall seconds. With `samples`, appends
    (time.time(), tree PSS) every 2 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    env.pop("RAY_ADDRESS", None)

    def sample(pid: int) -> None:
        if samples is not None:
            samples.append((time.time(), tree_pss(pid)))

    rc, wall = run_sampled([sys.executable, "-m", "pipelines.cli", *args], env, repo, log, sample, 2.0)
    if rc != 0:
        raise RuntimeError(f"eva {' '.join(args)} exited {rc}; see {log}")
    return wall


def folder_bytes(path: Path, skip: str | None = None) -> int:
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and (skip is None or skip not in p.relative_to(path).parts)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="checkout to run (default: this one)")
    parser.add_argument("--label", default="current")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eva-soak-"))
    run_dir = args.run_dir or tmp / "run"
    log = tmp / "soak.log"
    print(f"run: {run_dir}  log: {log}", flush=True)
    samples: list[tuple[float, int]] = []
    wall = run(
        ["run", "--preset", "tiny", "--iterations", str(args.iterations), "--run-dir", str(run_dir)],
        args.repo,
        log,
        samples,
    )
    resume_s = run(["resume", str(run_dir), "--iterations", str(args.iterations)], args.repo, log)
    status_s = run(["status", str(run_dir)], args.repo, log)
    report_s = run(["report", str(run_dir), "--out", str(tmp / "report.html")], args.repo, log)
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    rows = analyse(run_dir, events, samples)
    result = {
        "label": args.label,
        "iterations": args.iterations,
        "wall_s": round(wall, 1),
        "resume_noop_s": round(resume_s, 2),
        "status_s": round(status_s, 2),
        "report_s": round(report_s, 2),
        "run_bytes": folder_bytes(run_dir / "iterations"),
        "run_bytes_without_policies": folder_bytes(run_dir / "iterations", skip="policy"),
        "peak_pss_gb": round(max((p for _, p in samples), default=0) / 1e9, 3),
        "rows": rows,
    }
    out = HERE / "results" / f"soak-{args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {out}")


def analyse(run_dir: Path, events: list[dict], samples: list[tuple[float, int]]) -> list[dict]:
    """Per iteration: wall seconds, bytes written outside policy/, buffer size, peak PSS while it ran."""
    starts = {e["iteration"]: e["ts"] for e in events if e["kind"] == "iteration_start"}
    ends = {e["iteration"]: (e["ts"], e["seconds"]) for e in events if e["kind"] == "iteration_end"}
    rows = []
    for t in sorted(ends):
        folder = run_dir / "iterations" / f"{t:04d}"
        metrics = json.loads((folder / "metrics.json").read_text())
        window = [pss for when, pss in samples if starts[t] <= when <= ends[t][0]]
        rows.append(
            {
                "iteration": t,
                "wall_s": ends[t][1],
                "bytes": folder_bytes(folder, skip="policy"),
                "buffer": metrics["buffer_size"],
                "peak_pss_gb": round(max(window) / 1e9, 3) if window else None,
            }
        )
    return rows


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(f"\n{result['label']}: {result['iterations']} iterations of the tiny preset in {result['wall_s']:.0f} s")
    print(f"{'iter':>4} {'wall s':>7} {'bytes (no policy)':>18} {'buffer':>7} {'peak PSS GB':>12}")
    for r in rows:
        if r["iteration"] in (1, 2) or r["iteration"] % 5 == 0:
            print(
                f"{r['iteration']:>4} {r['wall_s']:>7.1f} {r['bytes']:>18,} {r['buffer']:>7} "
                f"{r['peak_pss_gb'] or 0:>12.2f}"
            )
    print(
        f"run dir {result['run_bytes'] / 1e6:.1f} MB ({result['run_bytes_without_policies'] / 1e6:.2f} MB without "
        f"policies); peak PSS {result['peak_pss_gb']:.2f} GB; resume (nothing to do) {result['resume_noop_s']:.1f} s, "
        f"status {result['status_s']:.1f} s, report {result['report_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
