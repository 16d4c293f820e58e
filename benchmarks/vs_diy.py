"""eva against a DIY script doing the same iteration (benchmarks/diy_iteration.py) on this machine.

    python -m benchmarks.vs_diy [--run-dir RUN]     # without --run-dir: `eva run` cpu-default, 1 iteration

The DIY script reads eva's iteration 1 (its seed prompts, the prompts it trained on, its number of
preference pairs) and redoes the work with `transformers.generate`, the same reward computed with
transformers, and TRL's DPOTrainer, in one process with the machine's default torch threads. Both
sides are timed from "models loaded" to "policy saved" (eva: the iteration's wall time in events.jsonl;
its actors' start-up is reported apart, like the DIY's model loading). Writes benchmarks/out/vs_diy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks._proc import eva, measure
from eva.checkpoint import RunDir

OUT = Path(__file__).parent / "out" / "vs_diy.json"
STAGES = ("estimate", "sample", "evolve", "solve", "train", "commit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="An eva run with iteration 1 committed (default: run one).")
    parser.add_argument("--preset", default="cpu-default")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eva-vs-diy-"))
    eva_run = None
    if args.run_dir is None:
        args.run_dir = work / "eva"
        eva_run = measure(
            eva("run", "--preset", args.preset, "--set", f"run.dir={args.run_dir}", "--set", "run.iterations=1"),
            log=work / "eva.log",
        )
    run = RunDir(args.run_dir)
    events = run.events()
    eva_iter = next(e["seconds"] for e in events if e["kind"] == "iteration_end" and e["iteration"] == 1)
    eva_up = next(e["seconds"] for e in events if e["kind"] == "actors_up")
    eva_metrics = run.iteration(1).metrics()
    eva_stages = eva_metrics.stage_seconds

    log = work / "diy.log"
    # the DIY script runs as a user would run it: no thread settings (torch takes every core)
    diy_proc = measure(
        [sys.executable, "-m", "benchmarks.diy_iteration", "--eva-run", str(args.run_dir), "--out", str(work / "diy")],
        env={"OMP_NUM_THREADS": None},
        log=log,
    )
    diy = json.loads(next(line for line in log.read_text().splitlines() if line.startswith("RESULT"))[6:])
    d = diy["stages"]
    diy_stages = {
        "estimate": d["estimate"],
        "sample": d["sample"],
        "evolve": d["evolve"],
        "solve": d["solve"],
        "train": d["train"],
        "commit": d["save"],
    }
    eva_cmp = {
        **eva_stages,
        "sample": eva_stages.get("sample", 0) + eva_stages.get("mix", 0),
        "train": eva_stages.get("train", 0) + eva_stages.get("pairs", 0),
    }

    print(
        f"\nOne iteration of {args.preset}: {diy['estimate_prompts']} prompts estimated, "
        f"{diy['train_prompts']} trained on, "
        f"{diy['pairs']} pairs / {diy['steps']} DPO steps (eva: {eva_metrics.num_pairs} pairs / "
        f"{eva_metrics.train_steps} steps)\n"
    )
    print("| stage | eva (s) | DIY script (s) | DIY / eva |\n|---|---:|---:|---:|")
    for s in STAGES:
        a, b = eva_cmp.get(s, 0.0), diy_stages[s]
        print(
            f"| "
            f"{s}{' + mix' if s == 'sample' else ''}{' + pairs' if s == 'train' else ''}"
            f"{' (DIY: save)' if s == 'commit' else ''} "
            f"| {a:.1f} | {b:.1f} | {f'{b / a:.1f}x' if a > 0.05 else '-'} |"
        )
    print(
        f"| **iteration** | **{eva_iter:.1f}** | **{diy['iteration_s']:.1f}** | "
        f"**{diy['iteration_s'] / eva_iter:.2f}x** |"
    )
    print(f"| start-up (actors / model loading) | {eva_up:.1f} | {diy['load_s']:.1f} | |")
    if eva_run:
        print(
            f"| whole process, peak RSS | {eva_run['wall_s']:.0f} s, {eva_run['peak_rss_gb']:.1f} GB | "
            f"{diy_proc['wall_s']:.0f} s, {diy_proc['peak_rss_gb']:.1f} GB | |"
        )
    print(f"\neva / DIY iteration wall time: {eva_iter / diy['iteration_s']:.2f} (target <= 0.5)")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "eva": {"iteration_s": eva_iter, "actors_up_s": eva_up, "stages": eva_stages, "process": eva_run},
                "diy": {**diy, "process": diy_proc},
                "run_dir": str(args.run_dir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
