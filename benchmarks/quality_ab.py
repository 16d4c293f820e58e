"""Quality A/B: eva against plain iterative DPO (the baseline loop) from the same initial policy.

    python -m benchmarks.quality_ab [--seeds 1 2 3] [--preset cpu-default] [--offset 32] [--heldout 0]

Three arms per seed, all from the preset's initial policy with the same n, lengths, learning rate,
scorer and number of iterations:

- `eva`: `eva run` (the creator evolves the prompts).
- `baseline`: `eva run --baseline` on the same seed prompts, each iteration a fresh uniform sample of
  as many of them as eva trained on per iteration (`prompts.baseline_sample`): the same training
  budget (prompts, hence pairs and DPO steps, up to ties), but fewer generated tokens, since it has
  no estimate and no evolve stage.
- `baseline_gen`: the same, with `solver.n_responses` raised until it generates as many tokens as
  eva did (best-of-n against worst-of-n pairs from more samples): the same training *and*
  generation budget.

Then `eva eval` of each run's last policy against the initial policy on held-out prompts that no arm
trains on: the builtin seed prompts from position --offset on (the preset trains on the first 24;
checked: no held-out text is in any run's prompt buffer). Win rate counts a tie 1/2; the reward is
the run's own scorer (the CPU default: few-shot SmolLM2 judge + MiniLM relevance + well-formedness),
which is also what the arms optimize. Writes benchmarks/out/quality_ab.json; keeps the runs under
--out-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from benchmarks._proc import eva, measure
from eva.buffer import load_seed_prompts
from eva.checkpoint import RunDir
from eva.config import load_config

OUT = Path(__file__).parent / "out" / "quality_ab.json"
ARMS = ("eva", "baseline", "baseline_gen")


def heldout_file(folder: Path, offset: int, n: int) -> tuple[Path, set[str]]:
    prompts = load_seed_prompts("builtin:seed")[offset : offset + n if n else None]
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.text}) + "\n" for p in prompts))
    return path, {p.text for p in prompts}


def budget(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    last = run.latest()
    metrics = [run.iteration(t).metrics() for t in range(1, last + 1)]
    return {
        "iterations": last,
        "tokens": sum(sum(m.tokens_generated.values()) for m in metrics),
        "train_prompts": sum(m.num_train_prompts for m in metrics),
        "pairs": sum(m.num_pairs for m in metrics),
        "steps": sum(m.train_steps for m in metrics),
        "texts": set(run.iteration(last).buffer().texts()),
    }


def one_arm(
    folder: Path, arm: str, seed: int, preset: str, sets: list[str], heldout: Path, heldout_texts: set[str]
) -> dict:
    name = f"{arm}-seed{seed}"
    run_dir = folder / name
    flags = ["--baseline"] if arm != "eva" else []
    sets = [f"run.dir={run_dir}", f"run.seed={seed}", *sets]
    timing = measure(
        eva("run", "--preset", preset, *flags, *[a for s in sets for a in ("--set", s)]), log=folder / f"{name}.log"
    )
    b = budget(run_dir)
    leaked = heldout_texts & b.pop("texts")
    if leaked:
        raise RuntimeError(
            f"{run_dir}: {len(leaked)} held-out prompts are in the training buffer, e.g. {next(iter(leaked))!r}"
        )
    measure(eva("eval", str(run_dir), "--prompts", str(heldout)), log=folder / f"{name}-eval.log")
    result = json.loads(RunDir(run_dir).eval_path(b["iterations"]).read_text())
    keep = ("n", "win_rate", "win_rate_se", "mean_reward", "mean_reward_initial")
    return {"arm": arm, "seed": seed, "sets": sets[2:], **timing, **b, **{k: result[k] for k in keep}}


def one_seed(folder: Path, seed: int, preset: str, heldout: Path, texts: set[str]) -> list[dict]:
    """eva first: the baselines' budgets are read off its run."""
    n = load_config(preset=preset).solver.n_responses
    rows = [one_arm(folder, "eva", seed, preset, [], heldout, texts)]
    per_iteration = max(1, round(rows[0]["train_prompts"] / rows[0]["iterations"]))
    sample = [f"prompts.baseline_sample={per_iteration}"]
    rows.append(one_arm(folder, "baseline", seed, preset, sample, heldout, texts))
    n_gen = max(n, round(n * rows[0]["tokens"] / rows[1]["tokens"]))
    rows.append(one_arm(folder, "baseline_gen", seed, preset, [*sample, f"solver.n_responses={n_gen}"], heldout, texts))
    return rows


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def print_tables(rows: list[dict]) -> None:
    print("\nPer run (held-out prompts, final policy vs the initial policy)\n")
    print(
        "| arm | seed | settings | win rate (± se) | mean reward | initial policy | Δ reward | tokens "
        "generated | train prompts | pairs | DPO steps | wall (s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['seed']} | {' '.join(r['sets']) or '-'} | {r['win_rate']:.3f} ± "
            f"{r['win_rate_se']:.3f} | {r['mean_reward']:.4f} | "
            f"{r['mean_reward_initial']:.4f} | {r['mean_reward'] - r['mean_reward_initial']:+.4f} | "
            f"{r['tokens']} | {r['train_prompts']} | "
            f"{r['pairs']} | {r['steps']} | {r['wall_s']:.0f} |"
        )
    print(
        "\nOver seeds (mean ± sample std over seeds; held-out prompts per eval: "
        + ", ".join(sorted({str(r["n"]) for r in rows}))
        + ")\n"
    )
    print(
        "| arm | seeds | win rate vs initial | mean reward | Δ reward vs initial | tokens generated | pairs | "
        "DPO steps |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            print(
                f"| {arm} | {len(rs)} | {_spread([r['win_rate'] for r in rs])} | "
                f"{_spread([r['mean_reward'] for r in rs])} | "
                f"{_spread([r['mean_reward'] - r['mean_reward_initial'] for r in rs])} | "
                f"{statistics.fmean(r['tokens'] for r in rs):.0f} | "
                f"{statistics.fmean(r['pairs'] for r in rs):.1f} | {statistics.fmean(r['steps'] for r in rs):.1f} |"
            )
    eva_rows = {r["seed"]: r for r in rows if r["arm"] == "eva"}
    for arm in ARMS[1:]:
        deltas = [
            eva_rows[r["seed"]]["mean_reward"] - r["mean_reward"]
            for r in rows
            if r["arm"] == arm and r["seed"] in eva_rows
        ]
        if len(deltas) > 1:
            se = statistics.stdev(deltas) / math.sqrt(len(deltas))
            print(
                f"\neva − {arm}, held-out mean reward, paired by seed: {statistics.fmean(deltas):+.4f} ± "
                f"{se:.4f} (se over {len(deltas)} seeds)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument(
        "--offset", type=int, default=32, help="Held-out prompts: the builtin seed prompts from this position on."
    )
    parser.add_argument("--heldout", type=int, default=0, help="How many held-out prompts (0: all from --offset on).")
    parser.add_argument("--out-dir", type=Path, default=None, help="Where the runs go (default: a new temp folder).")
    args = parser.parse_args()
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="eva-ab-"))
    folder.mkdir(parents=True, exist_ok=True)
    heldout, texts = heldout_file(folder, args.offset, args.heldout)
    print(f"runs and logs: {folder}; {len(texts)} held-out prompts")
    rows: list[dict] = []
    for seed in args.seeds:
        for r in one_seed(folder, seed, args.preset, heldout, texts):
            rows.append(r)
            print(
                f"  {r['arm']} seed {seed}: win rate {r['win_rate']:.3f}, mean reward {r['mean_reward']:.4f} "
                f"(initial {r['mean_reward_initial']:.4f}), "
                f"{r['tokens']} tokens, {r['pairs']} pairs, {r['wall_s']:.0f} s",
                flush=True,
            )
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))
    print_tables(rows)


if __name__ == "__main__":
    main()
