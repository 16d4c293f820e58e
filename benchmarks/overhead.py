"""Orchestration overhead of an eva run: per-stage wall time and the share of each iteration spent
outside generation, scoring and training.

    python -m benchmarks.overhead                      # runs `eva run` on cpu-default in a temp dir
    python -m benchmarks.overhead --run-dir runs/cpu-default   # analyses a finished run instead

Every actor records wall-clock spans of its real work (vLLM generate, reward scoring, a TRL training
round: actors.busy); each iteration's metrics.json holds their union (`busy_s`). Overhead is the rest
of the iteration's wall time (events.jsonl, iteration_start to iteration_end, which includes the
commit's manifest): Ray calls, serialization, checkpoint writes (policy save, buffer, manifest), weight
sync, prompt parsing. Target: under 5% of the iteration. Writes benchmarks/out/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._proc import eva, measure
from eva.checkpoint import RunDir

OUT = Path(__file__).parent / "out" / "overhead.json"
STAGES = ("estimate", "sample", "evolve", "mix", "solve", "pairs", "train", "commit")


def analyse(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    events = run.events()
    ends = {e["iteration"]: e["seconds"] for e in events if e["kind"] == "iteration_end"}
    up = [e["seconds"] for e in events if e["kind"] == "actors_up"]
    rows = []
    for t in sorted(ends):
        m = run.iteration(t).metrics()
        x = m.timing
        wall = ends[t]  # the whole iteration, manifest and pruning included
        rows.append(
            {
                "iteration": t,
                "stages": m.stage_seconds,
                "wall_s": wall,
                "generate_s": x.busy_by_kind.get("generate", 0.0),
                "score_s": x.busy_by_kind.get("score", 0.0),
                "train_s": x.busy_by_kind.get("train", 0.0),
                "busy_s": x.busy_s,
                "sync_s": x.sync_s,
                # model.sleep: engines freed for the round and rebuilt after it (the rebuild is the sync),
                # the trainer's policy reloaded at its start; all of it is in the overhead
                "sleep_wake_s": sleep_wake(run.stage_info(t, "train")),
                "save_s": x.save_s,
                "overhead_s": wall - x.busy_s,
                "overhead_share": (wall - x.busy_s) / wall,
            }
        )
    return {"run_dir": str(run_dir), "actors_up_s": up, "iterations": rows}


def sleep_wake(train: dict) -> float:
    """Seconds the train stage spent putting the engines to sleep, waking them (their rebuild from the
    saved policy is the weight sync then) and reloading the trainer's policy (model.sleep); 0 without."""
    if "sleep_s" not in train:
        return train.get("trainer_load_s", 0.0)
    return train["sleep_s"] + train.get("sync_s", 0.0) + train.get("trainer_load_s", 0.0)


def print_tables(result: dict) -> None:
    rows = result["iterations"]
    print("\nStage wall time (s)\n")
    print("| iteration | " + " | ".join(STAGES) + " | iteration |")
    print("|---:|" + "---:|" * (len(STAGES) + 1))
    for r in rows:
        print(
            f"| {r['iteration']} | "
            + " | ".join(f"{r['stages'].get(s, 0.0):.2f}" for s in STAGES)
            + f" | {r['wall_s']:.1f} |"
        )
    print("\nWhere the iteration's wall time went (s); generate is engine-seconds, busy the union of all work\n")
    print(
        "| iteration | generate | score | train | busy (union) | weight sync | policy save | sleep + wake | "
        "overhead | overhead share | without sleep + wake |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rest = (r["overhead_s"] - r["sleep_wake_s"]) / (r["wall_s"] - r["sleep_wake_s"])
        print(
            f"| {r['iteration']} | {r['generate_s']:.1f} | {r['score_s']:.1f} | {r['train_s']:.1f} | "
            f"{r['busy_s']:.1f} | {r['sync_s']:.2f} | {r['save_s']:.2f} | {r['sleep_wake_s']:.1f} | "
            f"{r['overhead_s']:.1f} | **{r['overhead_share']:.1%}** | {rest:.1%} |"
        )
    total_wall = sum(r["wall_s"] for r in rows)
    total_over = sum(r["overhead_s"] for r in rows)
    print(
        f"\nall iterations: overhead {total_over:.1f} s of {total_wall:.1f} s = {total_over / total_wall:.1%} "
        f"(target < 5%)"
    )
    if result.get("actors_up_s"):
        print(
            f"actors start-up (once per run, not in any iteration): "
            f"{', '.join(f'{s:.1f} s' for s in result['actors_up_s'])}"
        )
    if result.get("run"):
        print(
            f"whole `eva run`: {result['run']['wall_s']:.1f} s wall, peak RSS of its process tree "
            f"{result['run']['peak_rss_gb']:.1f} GB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="Analyse this finished run instead of starting one.")
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Extra `eva run --set` overrides.")
    args = parser.parse_args()
    run_info = None
    if args.run_dir is None:
        args.run_dir = Path(tempfile.mkdtemp(prefix="eva-overhead-")) / "run"
        overrides = [a for o in [f"run.dir={args.run_dir}", *args.overrides] for a in ("--set", o)]
        run_info = measure(eva("run", "--preset", args.preset, *overrides), log=args.run_dir.parent / "run.log")
    result = analyse(args.run_dir)
    result["run"] = run_info
    result["args"] = {"preset": args.preset, "overrides": args.overrides}
    print_tables(result)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
