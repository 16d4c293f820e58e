"""Cost of the prompt buffer's whole-buffer operations at 10k / 100k / 1M prompts.

    python -m benchmarks.buffer_ops [--sizes 10000,100000,1000000] [--repeats 3]

Times (best of `repeats`, seconds): build the buffer from Prompt records, update_stats with a
6-reward vector per prompt, weighted sampling of k = N/4 by informativeness, mix those k with the
buffer (ratio 0.8), save Parquet, load Parquet.

Then what one iteration of a long run costs at that buffer size, with an iteration's worth of work
(16 children added, 48 prompts estimated, sampled or trained): storing the whole buffer (what every
iteration did before) against storing its changes, and rebuilding the creator's near-duplicate index
from every text against syncing the one the loop keeps with the new rows. Prints a markdown table
and writes benchmarks/out/buffer_ops.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)

from eva.buffer import PromptBuffer
from eva.dedup import BufferIndex, NearDuplicateIndex
from eva.sampling import sample_prompts
from eva.types import Prompt, ScoredPrompt

OPS = ("build", "update_stats", "sample", "mix", "save", "load")
ITERATION_OPS = ("save whole", "save changes", "index rebuild", "index sync")
N_REWARDS = 6
OUT = Path(__file__).parent / "out" / "buffer_ops.json"


def synthetic(n: int, seed: int = 0) -> tuple[list[Prompt], list[ScoredPrompt]]:
    """n prompts (half seeds, half one-step rewrites of them) and one estimate each."""
    n_seeds = max(1, n // 2)
    seeds = [Prompt.seed(f"Synthetic seed prompt {i}: explain topic {i % 997} step by step.") for i in range(n_seeds)]
    kids = [
        seeds[i % n_seeds].child(f"{seeds[i % n_seeds].text} Add constraint {i}.", "constraints", 1)
        for i in range(n - n_seeds)
    ]
    prompts = seeds + kids
    rewards = np.random.default_rng(seed).normal(size=(n, N_REWARDS)).tolist()
    responses = ("response",) * N_REWARDS
    scored = [ScoredPrompt(p, responses, tuple(r), info=max(r) - min(r)) for p, r in zip(prompts, rewards, strict=True)]
    return prompts, scored


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time over `repeats` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_size(n: int, repeats: int, folder: Path) -> dict[str, Any]:
    prompts, scored = synthetic(n)
    times: dict[str, float] = {}
    times["build"], buf = best_of(repeats, lambda: PromptBuffer.from_prompts(prompts))
    times["update_stats"], _ = best_of(repeats, lambda: buf.update_stats(scored, iteration=1))
    k = n // 4
    times["sample"], rows = best_of(repeats, lambda: sample_prompts(buf.info_array(), k, "weighted", seed=0))
    ids = buf.ids()
    evolved = [ids[r] for r in rows]
    times["mix"], mix = best_of(repeats, lambda: buf.mix(evolved, size=round(len(evolved) / 0.8), seed=0))
    path = folder / f"prompts_{n}.parquet"
    times["save"], _ = best_of(repeats, lambda: buf.save(path))
    times["load"], loaded = best_of(repeats, lambda: PromptBuffer.load(path))
    assert len(loaded) == n and len(rows) == k and len(mix) == round(k / 0.8)  # the work really happened
    times.update(iteration_costs(loaded, folder, repeats))
    return {"n": n, "k": k, "mix_size": len(mix), "parquet_mb": path.stat().st_size / 2**20, "seconds": times}


def iteration_costs(buf: PromptBuffer, folder: Path, repeats: int) -> dict[str, float]:
    """One iteration's bookkeeping on a buffer of len(buf) rows (loaded: nothing changed yet)."""
    index = BufferIndex(0.85)
    index.sync(buf)  # what the loop holds when the iteration starts
    parents = buf.prompts(buf.ids()[:48])
    children = [p.child(f"{p.text} Now in one sentence.", "constraints", 2) for p in parents[:16]]
    buf.add(children)
    buf.update_stats([ScoredPrompt(p, ("r",) * N_REWARDS, (0.5,) * N_REWARDS, 0.1) for p in parents], iteration=2)
    buf.mark_trained([p.id for p in parents])
    changes = folder / "changes.parquet"
    out = {
        "save whole": best_of(repeats, lambda: buf.save(folder / "whole.parquet"))[0],
        "save changes": best_of(repeats, lambda: buf.save_changes(changes))[0],
        "index rebuild": best_of(1, lambda: NearDuplicateIndex(0.85, buf.texts()))[0],
        "index sync": best_of(1, lambda: index.sync(buf))[0],
    }
    assert pa.parquet.read_metadata(changes).num_rows == 64 and len(index.index) == len(buf)
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| N | " + " | ".join(f"{op} (s)" for op in OPS) + " | parquet (MB) |"
    rule = "|" + "---:|" * (len(OPS) + 2)
    rows = [
        f"| {r['n']:,} | " + " | ".join(f"{r['seconds'][op]:.4f}" for op in OPS) + f" | {r['parquet_mb']:.1f} |"
        for r in results
    ]
    per_iteration = [
        "",
        "One iteration's bookkeeping (16 children, 48 prompts updated):",
        "",
        "| N | " + " | ".join(f"{op} (s)" for op in ITERATION_OPS) + " |",
        "|" + "---:|" * (len(ITERATION_OPS) + 1),
        *(f"| {r['n']:,} | " + " | ".join(f"{r['seconds'][op]:.4f}" for op in ITERATION_OPS) + " |" for r in results),
    ]
    return "\n".join([head, rule, *rows, *per_iteration])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated buffer sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per operation; the best is reported")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON output path")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            results.append(bench_size(n, args.repeats, Path(tmp)))
            print(f"N={n:,} done", flush=True)
    table = markdown(results)
    print(table)
    report = {
        "benchmark": "buffer_ops",
        "repeats": args.repeats,
        "rewards_per_prompt": N_REWARDS,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": results,
        "markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
