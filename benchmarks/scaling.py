"""How an iteration's cost grows: with the number of prompts, and with engine replicas on a local
multi-node Ray cluster. The tiny preset (a random-init model: every stage real, outputs noise).

    python -m benchmarks.scaling [--prompts 64 256 1024] [--replicas 1 2] [--replica-prompts 256]

Prompts: one `eva run --preset tiny` iteration per size on a fresh local Ray (2 CPUs); the prompt set
is the builtin seed prompts, repeated with a case number past the 255 there are. Replicas: a head and
one worker node (2 CPUs each, on loopback, so on this 2-core machine they share the same cores), the
run joins it (`ray.address`) with `ray.engine.replicas` = 1, 2 and `ray.placement=SPREAD`.
Peak memory is the summed RSS of every process of the run (driver, Ray, actors; for the cluster also
its nodes). Writes benchmarks/out/scaling.json. Buffer operations at 1M prompts: benchmarks.buffer_ops.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._proc import LocalCluster, eva, measure
from eva.buffer import load_seed_prompts
from eva.checkpoint import RunDir

OUT = Path(__file__).parent / "out" / "scaling.json"


def prompt_file(folder: Path, n: int) -> Path:
    seeds = [p.text for p in load_seed_prompts("builtin:seed")]
    texts = [seeds[i % len(seeds)] + (f" (Case {i // len(seeds) + 1}.)" if i >= len(seeds) else "") for i in range(n)]
    path = folder / f"prompts-{n}.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def one_run(folder: Path, name: str, prompts: Path, overrides: list[str], also: tuple[int, ...] = ()) -> dict:
    run_dir = folder / name
    sets = [f"run.dir={run_dir}", "run.iterations=1", f"prompts.path={prompts}", "prompts.limit=null", *overrides]
    timing = measure(
        eva("run", "--preset", "tiny", *[a for s in sets for a in ("--set", s)]), log=folder / f"{name}.log", also=also
    )
    run = RunDir(run_dir)
    m = run.iteration(1).metrics()
    events = run.events()
    return {
        **timing,
        "iteration_s": next(e["seconds"] for e in events if e["kind"] == "iteration_end"),
        "actors_up_s": next(e["seconds"] for e in events if e["kind"] == "actors_up"),
        "stages": m.stage_seconds,
        "train_prompts": m.num_train_prompts,
        "pairs": m.num_pairs,
        "steps": m.train_steps,
        "tokens": sum(m.tokens_generated.values()),
        "overhead_share": m.timing.overhead_share,
        "nodes": next(e.get("nodes") for e in events if e["kind"] == "actors_up"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--replica-prompts", type=int, default=256)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="eva-scaling-"))
    print(f"runs and logs: {folder}")
    by_size = []
    for n in args.prompts:
        r = one_run(folder, f"prompts-{n}", prompt_file(folder, n), [])
        by_size.append({"prompts": n, **r})
        print(f"  {n} prompts: iteration {r['iteration_s']:.1f} s, peak {r['peak_rss_gb']:.1f} GB", flush=True)
    by_replicas = []
    if args.replicas:
        cluster = LocalCluster(folder)
        try:
            cluster.add_node()
            cluster.add_node()
            path = prompt_file(folder, args.replica_prompts)
            for k in args.replicas:
                r = one_run(
                    folder,
                    f"replicas-{k}",
                    path,
                    [f"ray.address={cluster.address}", f"ray.engine.replicas={k}", "ray.placement=SPREAD"],
                    also=cluster.pids,
                )
                by_replicas.append({"replicas": k, **r})
                print(f"  {k} replicas: iteration {r['iteration_s']:.1f} s", flush=True)
        finally:
            cluster.close()

    print("\nIteration cost vs prompts (tiny preset, 1 iteration, local Ray with 2 CPUs)\n")
    print(
        "| prompts | train prompts | tokens generated | DPO steps | estimate (s) | evolve (s) | solve (s) | "
        "train (s) | iteration (s) | s / prompt | overhead | peak RSS (GB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in by_size:
        st = r["stages"]
        print(
            f"| {r['prompts']} | {r['train_prompts']} | {r['tokens']} | {r['steps']} | {st['estimate']:.1f} | "
            f"{st['evolve']:.1f} | {st['solve']:.1f} | "
            f"{st['train']:.1f} | {r['iteration_s']:.1f} | {r['iteration_s'] / r['prompts']:.3f} | "
            f"{r['overhead_share']:.1%} | {r['peak_rss_gb']:.1f} |"
        )
    if by_replicas:
        print(
            f"\nIteration cost vs engine replicas ({args.replica_prompts} prompts, head + 1 worker node on "
            f"loopback, SPREAD)\n"
        )
        print(
            "| replicas | engines on nodes | estimate (s) | solve (s) | iteration (s) | actors up (s) | peak RSS (GB) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in by_replicas:
            st = r["stages"]
            spread = len(set((r["nodes"] or {}).get("engine", [])))
            print(
                f"| {r['replicas']} | {spread} | {st['estimate']:.1f} | {st['solve']:.1f} | "
                f"{r['iteration_s']:.1f} | {r['actors_up_s']:.1f} | {r['peak_rss_gb']:.1f} |"
            )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"prompts": by_size, "replicas": by_replicas}, indent=2))


if __name__ == "__main__":
    main()
