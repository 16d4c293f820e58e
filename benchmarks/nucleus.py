"""Top-p on CPU: vLLM's vocabulary sort against eva's candidate filter (actors/nucleus.py).

    python -m benchmarks.nucleus [--preset cpu-default] [--prompts 32] [--top-p 0.9]

One engine (in this process, one thread, the preset's model and sampling settings) generates the
same seeded prompts with vLLM's own top-p filter and with eva's, twice each in alternating order,
and once with top_p 1 (no filter: the ceiling). Then the logits of the sampling steps of one call
are filtered both ways: how many rows keep a different set (only ties at the boundary can: the
test suite checks the sets on untied rows), and the milliseconds per step of each filter.
Prints a table and writes benchmarks/out/nucleus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-default")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from actors import nucleus
    from actors.engine import GenerationEngine, SamplingSpec
    from actors.models import resolve_model_path
    from eva.buffer import load_seed_prompts
    from eva.config import load_config

    cfg = load_config(preset=args.preset)
    engine = GenerationEngine(resolve_model_path(cfg.model.path), cfg.model, "/tmp/eva-bench")
    import torch
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    ours, vllms = sampler.apply_top_k_top_p, nucleus._installed[0]
    texts = [p.text for p in load_seed_prompts("builtin:seed", "prompt", args.prompts)]
    keys, seeds = [str(i) for i in range(len(texts))], list(range(len(texts)))
    s = cfg.solver

    def generate(top_p: float) -> dict:
        spec = SamplingSpec(s.n_responses, s.temperature, top_p, s.max_new_tokens)
        batch = engine.generate(keys, texts, seeds, spec)
        return {"seconds": batch.seconds, "new_tokens": batch.new_tokens, "tok_per_s": batch.new_tokens / batch.seconds}

    generate(1.0)  # warm-up
    rows: list[dict] = []
    order = [("vllm sort", vllms), ("eva", ours)]
    for repeat in range(2):
        for name, fn in order if repeat == 0 else order[::-1]:
            sampler.apply_top_k_top_p = fn
            rows.append({"filter": name, "top_p": args.top_p, **generate(args.top_p)})
    rows.append({"filter": "none", "top_p": 1.0, **generate(1.0)})

    # the logits of one call's sampling steps, filtered both ways
    caught: list[tuple] = []

    def catch(logits, k, p):
        caught.append((logits.clone(), None if p is None else p.clone()))
        return vllms(logits, k, p)

    sampler.apply_top_k_top_p = catch
    generate(args.top_p)
    sampler.apply_top_k_top_p = ours
    differ = total = 0
    ms = {"vllm sort": 0.0, "eva": 0.0}
    for logits, p in caught:
        outs = {}
        for name, fn in (("vllm sort", vllms), ("eva", ours)):
            t0 = time.perf_counter()
            outs[name] = fn(logits.clone(), None, p) > float("-inf")
            ms[name] += 1000 * (time.perf_counter() - t0)
        differ += int((outs["eva"] != outs["vllm sort"]).any(dim=1).sum())
        total += logits.shape[0]
    steps = {
        "steps": len(caught),
        "rows": total,
        "rows_differing_by_ties": differ,
        "ms_per_step": {k: v / max(1, len(caught)) for k, v in ms.items()},
        "mean_kept_tokens": float(
            torch.cat([(ours(lg.clone(), None, p) > float("-inf")).sum(1).float() for lg, p in caught[:50]]).mean()
        ),
    }

    print(
        f"\ntop-p on CPU, {args.preset} ({cfg.model.path}, {cfg.model.dtype}), {len(texts)} prompts x "
        f"{s.n_responses}, T={s.temperature}, at most {s.max_new_tokens} new tokens\n"
    )
    print(f"{'filter':<10} {'top_p':>5} {'seconds':>8} {'new tokens':>10} {'tok/s':>7}")
    for r in rows:
        print(f"{r['filter']:<10} {r['top_p']:>5} {r['seconds']:>8.1f} {r['new_tokens']:>10} {r['tok_per_s']:>7.1f}")
    print(
        f"\nfilter alone, per sampling step ({steps['steps']} steps, {steps['rows']} rows, "
        f"{steps['mean_kept_tokens']:.0f} tokens kept on average): vLLM sort "
        f"{steps['ms_per_step']['vllm sort']:.1f} ms, eva {steps['ms_per_step']['eva']:.1f} ms; "
        f"rows whose kept set differs (ties at the boundary): {differ} of {total}"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "nucleus.json").write_text(json.dumps({"args": vars(args), "generate": rows, "filter": steps}, indent=2))


if __name__ == "__main__":
    main()
