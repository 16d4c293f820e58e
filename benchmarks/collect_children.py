"""Collect real creator outputs (parent, operator, raw reply, parsed child) for hand labelling.

The creator is the cpu-default one (SmolLM2-135M-Instruct, its sampling settings, the eva.evolve
meta-prompts), run in-process without Ray. Generation 1 rewrites a spread of the builtin seed
prompts; each later generation rewrites children of the previous one that passed the filters without
the prompt check (`creator.prompt_filter: off`, the filters before it existed; `eva/data/evolve_labels.jsonl`
was collected so), as a run's lineages did, so drift over several rewrites shows up. Every output is
written, rejected ones included, with the reason those filters gave (`old_reason`).

    python -m benchmarks.collect_children --out /tmp/children.jsonl [--seeds 40 --generations 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from actors.engine import GenerationEngine, SamplingSpec
from actors.models import resolve_model_path
from eva.buffer import load_seed_prompts
from eva.config import load_config
from eva.dedup import NearDuplicateIndex
from eva.evolve import build_evolve_requests, filter_evolved, parse_evolved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=40, help="seed prompts, spread evenly over the builtin set")
    ap.add_argument("--offset", type=int, default=0, help="start of the spread (another offset: other seed prompts)")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--parents-per-generation", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    cfg = load_config(preset="cpu-default")
    c = cfg.creator
    everything = load_seed_prompts("builtin:seed")
    step = max(1, len(everything) // args.seeds)
    parents = everything[args.offset :: step][: args.seeds]
    workdir = tempfile.mkdtemp(prefix="eva-collect-")
    engine = GenerationEngine(resolve_model_path(cfg.model.path), cfg.model, workdir, seed=args.seed)
    spec = SamplingSpec(1, c.temperature, c.top_p, c.max_new_tokens)
    index = NearDuplicateIndex(c.near_duplicate_threshold, [p.text for p in everything])
    rows = []
    for generation in range(1, args.generations + 1):
        t0 = time.perf_counter()
        requests = build_evolve_requests(parents, args.variants, c.operators, args.seed + generation)
        batch = engine.generate(
            [str(i) for i in range(len(requests))], [r.meta_prompt for r in requests], [r.seed for r in requests], spec
        )
        survivors = []
        for request, gen in zip(requests, batch.generations, strict=True):
            parsed = parse_evolved(gen.responses[0])
            kept, report = filter_evolved(
                [(request, parsed)],
                index,
                min_chars=c.min_prompt_chars,
                max_chars=c.max_prompt_chars,
                near_dup_threshold=c.near_duplicate_threshold,
                iteration=generation,
            )
            old_reason = next((k for k, v in report.dropped.items() if v), None)
            rows.append(
                {
                    "parent": request.parent.text,
                    "operator": request.operator,
                    "child": parsed or "",
                    "raw": gen.responses[0],
                    "depth": request.parent.depth + 1,
                    "old_reason": old_reason,
                }
            )
            for child in kept:
                index.add(child.text)
                survivors.append(child)
        print(
            f"generation {generation}: {len(requests)} requests, {len(survivors)} passed, {batch.new_tokens} tokens, "
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        parents = survivors[: args.parents_per_generation]
        if not parents:
            break
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
