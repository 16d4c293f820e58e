"""The online form of eva on the arithmetic family: does the creator pay, online, at equal rollouts?

    python -m benchmarks.online [--arms eva uniform eva-sixth] [--seeds 1 2 3] [--out-dir benchmarks/out/online]

Every arm is the `cpu-arithmetic-online` preset (SmolLM2-135M-Instruct, RLOO, minibatches of 6
problems x 4 answers, 8 optimizer steps per commit) from the same initial policy, for the same number
of optimizer steps: every arm generates the same rollouts (6 x 4 per step; the creator's mutations
are code and generate nothing):

- eva        the preset: minibatches from the prioritized buffer (learnability priorities, 20% seed
             problems), the family's mutations of the problems just seen every 8 steps; 36 seed problems
             (3 levels x 12).
- uniform    online uniform sampling (`--baseline`): every minibatch drawn uniformly from the 36 seed
             problems, no creator. The paper's "default online training".
- eva-sixth  eva given 1/6 of the seed problems (3 levels x 2 = 6, a subset of the 36): the paper's
             prompt-efficiency claim in small (eva with 1x the prompts against default training with 6x).

Held-out: the family's held-out problems (a split no seed, mutation or training set reaches) of the
preset's evaluation levels, written once to --out-dir; each run's initial and last policy answer them
greedily, graded exact (`eva eval --problems`). Reported: exact match per arm (mean +- std over
seeds) by level, and paired differences eva - uniform and eva-sixth - uniform with paired bootstrap
95% intervals (resampling seeds, then problems; benchmarks.ablation's), overall and by level.

Resumes a partly finished grid from its own output (--results, default benchmarks/results/online.json,
kept in the repository, and the run folders under --out-dir): finished (arm, seed) pairs are skipped,
an interrupted run is resumed. Sized for about 90 minutes on a 2-core machine with the defaults
(3 arms x 3 seeds, 4 commits of 8 steps each; benchmarks/RESULTS.md has the measured times).
A smoke of every arm: `--seeds 1 --iterations 1 --steps-per-commit 2 --eval-per-level 4
--results /tmp/online-smoke.json --out-dir /tmp/online-smoke`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks._proc import eva, measure, run_or_resume
from benchmarks.ablation import paired_bootstrap
from eva.checkpoint import RunDir
from eva.config import load_config
from eva.tasks import write_problems
from pipelines.evaluate import heldout_problems

PRESET = "cpu-arithmetic-online"
OUT = Path(__file__).parent / "results" / "online.json"  # tracked: the grid resumes from it
ARMS: dict[str, tuple[list[str], list[str]]] = {  # name -> (eva run flags, --set overrides)
    "eva": ([], []),
    "uniform": (["--baseline"], []),
    "eva-sixth": ([], ["task.per_level=2"]),
}
COMPARISONS = (("eva", "uniform"), ("eva-sixth", "uniform"), ("eva", "eva-sixth"))


def run_arm(folder: Path, arm: str, seed: int, heldout: Path, sizes: list[str]) -> dict:
    """One run (resumed if a crash left it unfinished), its held-out evaluation, and what it spent."""
    run_dir = folder / f"{arm}-seed{seed}"
    flags, sets = ARMS[arm]
    sets = [f"run.dir={run_dir}", f"run.seed={seed}", f"task.seed={seed}", *sizes, *sets]
    log = folder / f"{arm}-seed{seed}.log"
    timing = run_or_resume(run_dir, PRESET, flags, sets, log)
    run = RunDir(run_dir)
    last = run.latest()
    assert last is not None
    evaluated = sorted({0, last})
    measure(
        eva("eval", str(run_dir), "--problems", str(heldout), *[a for t in evaluated for a in ("--iteration", str(t))]),
        log=folder / f"{arm}-seed{seed}-eval.log",
    )
    metrics = [run.iteration(t).metrics() for t in range(1, last + 1)]
    tokens = [0]
    for m in metrics:
        tokens.append(tokens[-1] + sum(m.tokens_generated.values()))
    evals = {t: json.loads(run.eval_path(t).read_text()) for t in evaluated}
    steps = [s for m in metrics for s in m.steps]
    return {
        "arm": arm,
        "seed": seed,
        "sets": sets[3:],
        **timing,
        "seeds": len(run.iteration(0).train_ids()),
        "tokens": tokens,  # cumulative generated tokens after each commit (0 = before training)
        "rollouts": sum(s["sequences"] for s in steps),  # sampled responses trained on
        "steps": len(steps),
        "step_s": statistics.fmean(s["rollout_s"] + s["train_s"] + s["sync_s"] for s in steps),
        "reward": [m.reward_summary.get("mean") for m in metrics],
        "signal_share": [sum(s["signal_groups"] for s in m.steps) / max(1, m.num_train_prompts) for m in metrics],
        "child_share": statistics.fmean(1 - s["seed_prompts"] / s["prompts"] for s in steps),
        "train_levels": [m.health.train_levels for m in metrics],
        "accuracy": {t: e["levels"]["all"]["accuracy"] for t, e in evals.items()},
        "levels": {t: {k: v["accuracy"] for k, v in e["levels"].items()} for t, e in evals.items()},
        "grades": {t: e["grades"] for t, e in evals.items()},
    }


def by_level(rows: list[dict], levels: list[str], level: str) -> list[dict]:
    """The rows with each evaluation's grades cut to the held-out problems of one level."""
    keep = [i for i, lv in enumerate(levels) if lv == level]
    return [{**r, "grades": {t: [g[i] for i in keep] for t, g in r["grades"].items()}} for r in rows]


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_tables(rows: list[dict], levels: list[str]) -> None:
    names = sorted(set(levels))
    print("\nPer arm: held-out exact match (mean ± sample std over seeds) before and after, and what it spent\n")
    print("| arm | runs | seed problems | initial | last | steps | rollouts | tokens | children drawn | s / step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        last = [r["accuracy"][str(max(int(t) for t in r["accuracy"]))] for r in rs]
        print(
            f"| {arm} | {len(rs)} | {rs[0]['seeds']} | {spread([r['accuracy']['0'] for r in rs])} | {spread(last)} | "
            f"{statistics.fmean(r['steps'] for r in rs):.0f} | {statistics.fmean(r['rollouts'] for r in rs):,.0f} | "
            f"{statistics.fmean(r['tokens'][-1] for r in rs):,.0f} | "
            f"{statistics.fmean(r['child_share'] for r in rs):.2f} | {statistics.fmean(r['step_s'] for r in rs):.1f} |"
        )
    print("\nBy level at the last commit (mean over seeds)\n")
    print("| arm | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            cells = [spread([r["levels"][max(r["levels"], key=int)][lv] for r in rs]) for lv in names]
            print(f"| {arm} | " + " | ".join(cells) + " |")
    last_t = max(int(t) for r in rows for t in r["accuracy"])
    print(f"\nPaired differences at iteration {last_t} (bootstrap over seeds, then problems)\n")
    print("| comparison | level | difference | 95% interval | excludes 0 |")
    print("|---|---|---:|---|---|")
    for a, b in COMPARISONS:
        for level in ["all", *names]:
            cut = rows if level == "all" else by_level(rows, levels, level)
            res = paired_bootstrap(cut, a, b, last_t)
            if res:
                point, lo, hi = res
                excludes = "yes" if lo > 0 or hi < 0 else "no"
                print(f"| {a} − {b} | {level} | {point:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {excludes} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "out" / "online")
    parser.add_argument("--results", type=Path, default=OUT, help="The grid's JSON (resumed from).")
    parser.add_argument("--iterations", type=int, default=4, help="Commits per run.")
    parser.add_argument("--steps-per-commit", type=int, default=None, help="Default: the preset's (8).")
    parser.add_argument("--eval-per-level", type=int, default=None, help="Held-out problems per level (preset: 70).")
    args = parser.parse_args()
    folder = args.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [f"run.iterations={args.iterations}"]
    if args.steps_per_commit is not None:
        sizes.append(f"online.steps_per_commit={args.steps_per_commit}")
    heldout = folder / "heldout.jsonl"
    if not heldout.is_file():
        overrides = [] if args.eval_per_level is None else [f"task.eval_per_level={args.eval_per_level}"]
        write_problems(heldout, heldout_problems(load_config(preset=PRESET, overrides=overrides)))
    levels = [json.loads(line)["meta"]["level"] for line in heldout.read_text().splitlines()]
    rows = json.loads(args.results.read_text())["runs"] if args.results.is_file() else []
    done = {(r["arm"], r["seed"]) for r in rows}
    print(f"runs and logs: {folder}; {len(levels)} held-out problems; {len(done)} runs done before")
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            row = json.loads(json.dumps(run_arm(folder, arm, seed, heldout, sizes)))  # str keys, as read back
            rows.append(row)
            RunDir(folder / f"{arm}-seed{seed}").prune_policies(1)  # evaluated: keep the initial and the last
            print(
                f"  {arm} seed {seed}: exact match {row['accuracy']}, {row['rollouts']:,} rollouts, "
                f"{row['tokens'][-1]:,} tokens, {row['wall_s']:.0f} s",
                flush=True,
            )
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps({"preset": PRESET, "sizes": sizes, "runs": rows}, indent=1))
    print_tables(rows, levels)


if __name__ == "__main__":
    main()
