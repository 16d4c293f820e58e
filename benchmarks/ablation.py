"""Does the creator earn its compute? Arms from the same initial policy on the `cpu-arithmetic` preset.

    python -m benchmarks.ablation [--arms B0 B1 B2 eva] [--seeds 1 2 3] [--out-dir benchmarks/out/ablation]

Every arm starts from SmolLM2-135M-Instruct with the preset's DPO settings (lr, beta, epochs, batch),
its n, lengths and iterations, on the seed problems of `task.seed = run.seed` (the same problems for
every arm of a seed), and spends about the same generated tokens per iteration:

- B0   plain iterative DPO on the fixed seed problems (`--baseline`), with twice the responses per
       problem (8): the baseline has no estimate, so its solve stage spends the estimate's tokens.
- B1   eva with uniform sampling (no informativeness), the family's mutations as children.
- B2   informativeness selection without evolution (`creator.kind: select`): the prompts sampled by
       informativeness themselves take the evolved share of the training set.
- eva  the preset: informativeness-weighted sampling (gap) and the family's mutations.
- eva-learn, eva-frontier, eva-both: the changes tried when eva did not win (README: the ablation):
       the learnability metric p(1-p) instead of gap, mutations toward the parent's frontier, both.

Held-out: one JSONL of the family's held-out problems (the split that no seed, mutation or training
set reaches), stratified by level, written once to --out-dir; each run's policies at iterations 0, 2
and 4 answer it greedily, graded exact (`eva eval --problems`). The success rule, fixed before the
first run: eva - B0 in held-out exact match at the last iteration > 0 with the paired bootstrap 95%
interval (resampling seeds, then problems) excluding 0.

Resumes a partly finished grid from its own output (benchmarks/results/ablation.json, kept in the
repository, and the run folders under --out-dir):
finished (arm, seed) pairs are skipped, an interrupted run is resumed. Prints the tables and writes
benchmarks/results/ablation.svg (held-out exact match against generated tokens, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from benchmarks._proc import eva, measure, run_or_resume
from eva.checkpoint import RunDir
from eva.config import load_config
from eva.tasks import write_problems
from pipelines.evaluate import heldout_problems
from pipelines.report_svg import Series, color, line_chart

PRESET = "cpu-arithmetic"
OUT = Path(__file__).parent / "results" / "ablation.json"  # tracked: the grid resumes from it
SVG = Path(__file__).parent / "results" / "ablation.svg"
EVAL_AT = (0, 2, 4)
ARMS: dict[str, tuple[list[str], list[str]]] = {  # name -> (eva run flags, --set overrides)
    "B0": (["--baseline"], ["solver.n_responses=8"]),
    "B1": ([], ["creator.sample_method=uniform"]),
    "B2": ([], ["creator.kind=select", "creator.sample_frac=0.5"]),
    "eva": ([], []),
    "eva-learn": ([], ["creator.metric=learnability"]),
    "eva-frontier": ([], ["creator.direction_rule=frontier"]),
    "eva-both": ([], ["creator.metric=learnability", "creator.direction_rule=frontier"]),
}


def run_arm(folder: Path, arm: str, seed: int, heldout: Path) -> dict:
    """One run (resumed if a crash left it unfinished) and its held-out evaluation."""
    run_dir = folder / f"{arm}-seed{seed}"
    flags, sets = ARMS[arm]
    sets = [f"run.dir={run_dir}", f"run.seed={seed}", f"task.seed={seed}", *sets]
    log = folder / f"{arm}-seed{seed}.log"
    timing = run_or_resume(run_dir, PRESET, flags, sets, log)
    run = RunDir(run_dir)
    iterations = [t for t in EVAL_AT if t <= run.latest()]
    measure(
        eva(
            "eval", str(run_dir), "--problems", str(heldout), *[a for t in iterations for a in ("--iteration", str(t))]
        ),
        log=folder / f"{arm}-seed{seed}-eval.log",
    )
    metrics = [run.iteration(t).metrics() for t in range(1, run.latest() + 1)]
    tokens = [0]
    for m in metrics:
        tokens.append(tokens[-1] + sum(m.tokens_generated.values()))
    evals = {t: json.loads(run.eval_path(t).read_text()) for t in iterations}
    return {
        "arm": arm,
        "seed": seed,
        "sets": sets[3:],
        **timing,
        "tokens": tokens,  # cumulative generated tokens after each iteration (0 = before training)
        "pairs": [m.num_pairs for m in metrics],
        "steps": [m.train_steps for m in metrics],
        "tie_share": [m.health.tie_share for m in metrics],
        "solve_exact": [m.health.solve_exact for m in metrics],
        "sampled_info": [m.health.sampled_info for m in metrics],
        "estimated_info": [m.health.estimated_info for m in metrics],
        "train_levels": [m.health.train_levels for m in metrics],
        "accuracy": {t: e["levels"]["all"]["accuracy"] for t, e in evals.items()},
        "levels": {t: {k: v["accuracy"] for k, v in e["levels"].items()} for t, e in evals.items()},
        "grades": {t: e["grades"] for t, e in evals.items()},
    }


def paired_bootstrap(
    rows: list[dict], a: str, b: str, t: int, draws: int = 10000, seed: int = 0
) -> tuple[float, float, float] | None:
    """Mean held-out exact-match difference a - b at iteration t, paired by seed and problem, with a
    95% interval: resample seeds, then problems (the same problems for both arms of a seed)."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted(s for s in {r["seed"] for r in rows} if (a, s) in by and (b, s) in by)
    if not seeds:
        return None
    diffs = {
        s: [
            (x >= 1.0) - (y >= 1.0)
            for x, y in zip(by[(a, s)]["grades"][str(t)], by[(b, s)]["grades"][str(t)], strict=True)
        ]
        for s in seeds
    }
    point = statistics.fmean(statistics.fmean(d) for d in diffs.values())
    rng = random.Random(seed)
    stats = []
    for _ in range(draws):
        picked = [diffs[rng.choice(seeds)] for _ in seeds]
        stats.append(statistics.fmean(statistics.fmean(d[rng.randrange(len(d))] for _ in d) for d in picked))
    stats.sort()
    return point, stats[int(0.025 * draws)], stats[int(0.975 * draws) - 1]


def print_tables(rows: list[dict]) -> None:
    last = str(max(EVAL_AT))
    print("\nPer arm: held-out exact match (mean ± sample std over seeds), budget and creator health per iteration\n")
    print(
        "| arm | seeds | iteration 0 | iteration 2 | iteration 4 | tokens / iteration | pairs / iteration | "
        "DPO steps | tie share | solve exact | wall s / run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue

        def spread(values: list[float]) -> str:
            return (
                f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
                if len(values) > 1
                else f"{values[0]:.3f}"
            )

        accs = [
            spread([r["accuracy"][str(t)] for r in rs if str(t) in r["accuracy"]])
            if all(str(t) in r["accuracy"] for r in rs)
            else "-"
            for t in EVAL_AT
        ]
        per_it = statistics.fmean(r["tokens"][-1] / (len(r["tokens"]) - 1) for r in rs)
        print(
            f"| {arm} | {len(rs)} | {' | '.join(accs)} | {per_it:,.0f} | "
            f"{statistics.fmean(statistics.fmean(r['pairs']) for r in rs):.1f} | "
            f"{statistics.fmean(sum(r['steps']) for r in rs):.0f} | "
            f"{statistics.fmean(statistics.fmean(r['tie_share']) for r in rs):.2f} | "
            f"{statistics.fmean(statistics.fmean(x for x in r['solve_exact'] if x is not None) for r in rs):.3f} "
            f"| {statistics.fmean(r['wall_s'] for r in rs):.0f} |"
        )
    print(f"\nPaired differences at iteration {last} (held-out exact match; bootstrap over seeds and problems)\n")
    print("| comparison | difference | 95% interval | excludes 0 |")
    print("|---|---:|---|---|")
    for a, b in [
        ("eva", "B0"),
        ("eva", "B2"),
        ("eva", "B1"),
        ("B2", "B0"),
        ("eva-learn", "B0"),
        ("eva-frontier", "B0"),
        ("eva-both", "B0"),
    ]:
        res = paired_bootstrap(rows, a, b, int(last))
        if res:
            point, lo, hi = res
            print(f"| {a} − {b} | {point:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |")


def plot(rows: list[dict], svg: Path = SVG) -> None:
    series = []
    for i, arm in enumerate(a for a in ARMS if any(r["arm"] == a for r in rows)):
        rs = [r for r in rows if r["arm"] == arm]
        points = []
        for t in EVAL_AT:
            have = [r for r in rs if str(t) in r["accuracy"] and t < len(r["tokens"])]
            if have:
                points.append(
                    (
                        statistics.fmean(r["tokens"][t] for r in have) / 1000,
                        statistics.fmean(r["accuracy"][str(t)] for r in have),
                    )
                )
        series.append(Series(arm, points, color(i), dashed=arm.startswith("B")))
    chart = line_chart(
        series,
        "held-out exact match",
        "held-out accuracy against generated tokens",
        x_label="generated tokens (thousands)",
        fmt="{:.3f}",
        continuous_x=True,
    )
    legend = "".join(
        f'<text x="{70 + 110 * i}" y="14" fill="{s.color}" font-size="12">{s.name}</text>' for i, s in enumerate(series)
    )
    if chart:
        svg.write_text(chart.replace("</svg>", f"{legend}</svg>"))


def commit() -> str:
    """The checkout's commit, with "+dirty" when it has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=["B0", "B1", "B2", "eva"], choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "out" / "ablation")
    parser.add_argument(
        "--results",
        type=Path,
        default=OUT,
        help="The grid's JSON (resumed from; default the tracked one). Another file keeps a check on other "
        "code apart from the grid.",
    )
    parser.add_argument(
        "--keep-policies",
        action="store_true",
        help="Keep every run's policies (about 270 MB per iteration); default: drop them after the evaluation.",
    )
    args = parser.parse_args()
    folder = args.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    heldout = folder / "heldout.jsonl"
    if not heldout.is_file():
        write_problems(heldout, heldout_problems(load_config(preset=PRESET)))
    out = args.results
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["arm"], r["seed"]) for r in rows}
    print(f"runs and logs: {folder}; {sum(1 for _ in heldout.open())} held-out problems; {len(done)} runs done before")
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            row = json.loads(json.dumps(run_arm(folder, arm, seed, heldout)))  # str keys, as read back
            row["commit"] = commit()  # the code the run ran on: a grid resumed on newer code mixes versions
            rows.append(row)
            if not args.keep_policies:  # evaluated: keep the initial and the last policy (the manifests say so)
                RunDir(folder / f"{arm}-seed{seed}").prune_policies(1)
            print(
                f"  {arm} seed {seed}: exact match {row['accuracy']}, {row['tokens'][-1]:,} tokens, pairs "
                f"{row['pairs']}, {row['wall_s']:.0f} s",
                flush=True,
            )
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps({"preset": PRESET, "eval_at": EVAL_AT, "runs": rows}, indent=1))
    print_tables(rows)
    plot(rows, SVG if out == OUT else out.with_suffix(".svg"))


if __name__ == "__main__":
    main()
