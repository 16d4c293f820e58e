"""Quality A/B: eva against plain iterative DPO (the baseline loop) from the same initial policy.

    python -m benchmarks.quality_ab [--seeds 1 2 3] [--preset cpu-default] [--heldout 64]

For every seed: `eva run` and `eva run --baseline` (fixed seed prompts, no creator; the same preset,
so the same n, lengths, learning rate and number of iterations), then `eva eval` of each run's last
policy against the initial policy on held-out prompts that neither loop trains on: the builtin seed
prompts from position 128 on, while the preset trains on the first 24 (checked: no held-out text is
in either run's prompt buffer). Win rate counts a tie 1/2; the reward is the run's own scorer (the
CPU default: few-shot SmolLM2 judge + MiniLM relevance + well-formedness). The tables report each
arm's budget too (tokens generated, preference pairs, DPO steps, wall time), since the two loops
spend it differently. Writes benchmarks/out/quality_ab.json; keeps the runs under --out-dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks._proc import eva, measure
from eva.buffer import PromptBuffer, load_seed_prompts
from eva.checkpoint import RunDir

OUT = Path(__file__).parent / "out" / "quality_ab.json"
ARMS = ("eva", "baseline")


def heldout_file(folder: Path, offset: int, n: int) -> tuple[Path, set[str]]:
    prompts = load_seed_prompts("builtin:seed")[offset : offset + n]
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.text}) + "\n" for p in prompts))
    return path, {p.text for p in prompts}


def budget(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    last = run.latest()
    metrics = [json.loads((run.iteration_dir(t) / "metrics.json").read_text()) for t in range(1, last + 1)]
    return {
        "iterations": last,
        "tokens": sum(sum(m["tokens_generated"].values()) for m in metrics),
        "train_prompts": sum(m["num_train_prompts"] for m in metrics),
        "pairs": sum(m["num_pairs"] for m in metrics),
        "steps": sum(m["train_steps"] for m in metrics),
        "texts": set(PromptBuffer.load(run.iteration_dir(last) / "prompts.parquet").texts()),
    }


def one_arm(folder: Path, arm: str, seed: int, preset: str, heldout: Path, heldout_texts: set[str]) -> dict:
    run_dir = folder / f"{arm}-seed{seed}"
    flags = ["--baseline"] if arm == "baseline" else []
    timing = measure(eva("run", "--preset", preset, "--set", f"run.dir={run_dir}", "--set", f"run.seed={seed}", *flags), log=folder / f"{arm}-seed{seed}.log")
    b = budget(run_dir)
    leaked = heldout_texts & b.pop("texts")
    if leaked:
        raise RuntimeError(f"{run_dir}: {len(leaked)} held-out prompts are in the training buffer, e.g. {next(iter(leaked))!r}")
    measure(eva("eval", str(run_dir), "--prompts", str(heldout)), log=folder / f"{arm}-seed{seed}-eval.log")
    result = json.loads((run_dir / "eval" / f"iteration_{b['iterations']:04d}.json").read_text())
    return {"arm": arm, "seed": seed, **timing, **b, **{k: result[k] for k in ("n", "win_rate", "win_rate_se", "mean_reward", "mean_reward_initial")}}


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def print_tables(rows: list[dict]) -> None:
    print("\nPer run (held-out prompts, final policy vs the initial policy)\n")
    print("| arm | seed | win rate (± se) | mean reward | initial policy | Δ reward | tokens generated | pairs | DPO steps | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['seed']} | {r['win_rate']:.3f} ± {r['win_rate_se']:.3f} | {r['mean_reward']:.4f} | {r['mean_reward_initial']:.4f} | "
            f"{r['mean_reward'] - r['mean_reward_initial']:+.4f} | {r['tokens']} | {r['pairs']} | {r['steps']} | {r['wall_s']:.0f} |"
        )
    print("\nOver seeds (mean ± sample std)\n")
    print("| arm | seeds | win rate vs initial | mean reward | Δ reward vs initial | tokens generated | DPO steps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            print(
                f"| {arm} | {len(rs)} | {_spread([r['win_rate'] for r in rs])} | {_spread([r['mean_reward'] for r in rs])} | "
                f"{_spread([r['mean_reward'] - r['mean_reward_initial'] for r in rs])} | {statistics.fmean(r['tokens'] for r in rs):.0f} | "
                f"{statistics.fmean(r['steps'] for r in rs):.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--heldout", type=int, default=64, help="Held-out prompts (builtin seed prompts from --offset on).")
    parser.add_argument("--offset", type=int, default=128)
    parser.add_argument("--out-dir", type=Path, default=None, help="Where the runs go (default: a new temp folder).")
    args = parser.parse_args()
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="eva-ab-"))
    folder.mkdir(parents=True, exist_ok=True)
    heldout, texts = heldout_file(folder, args.offset, args.heldout)
    print(f"runs and logs: {folder}")
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append(one_arm(folder, arm, seed, args.preset, heldout, texts))
            r = rows[-1]
            print(f"  {arm} seed {seed}: win rate {r['win_rate']:.3f}, mean reward {r['mean_reward']:.4f} (initial {r['mean_reward_initial']:.4f}), {r['wall_s']:.0f} s", flush=True)
    print_tables(rows)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
