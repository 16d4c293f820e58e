"""eva's vLLM engine under different settings: start time, tokens/s and memory on this machine.

    python -m benchmarks.engine_settings [--prompts 64] [--max-tokens 96] [--variants eager-32,eager-256,compiled-32]

Each variant is a `GenerationEngine` (the class the actors run) in a fresh process with one thread,
generating n=1 sample of `--max-tokens` new tokens for each of `--prompts` seed prompts (seeded, so
every variant generates the same requests), after one warm-up call:

- `eager-N`: `model.enforce_eager: true`, `model.max_num_seqs: N` (N sequences at once; auto on CPU
  is 32), the KV cache sized for them (`model.kv_cache_gib: auto`);
- `compiled-N`: the same with `enforce_eager: false` (torch.compile; paid once per start);
- a suffix `-fp32` runs the model in float32, `-bf16native` in bf16 with vLLM's own kernels even on a
  CPU without native bf16, where eva computes bf16 layers in float32 (actors.cpu_gemm; no suffix: bf16
  as eva runs it). `--variants eager-32,eager-32-bf16native,eager-32-fp32` compares the three.

Reports the engine's start seconds, generation tokens/s, the process PSS after generating, and
whether the responses equal the first variant's. Writes benchmarks/results/engine_settings.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(variant: str, model: str, prompts: int, max_tokens: int) -> dict:
    """Runs in the child process."""
    import psutil

    from actors.engine import GenerationEngine, SamplingSpec
    from actors.models import resolve_model_path
    from eva.buffer import load_seed_prompts
    from eva.config import ModelSection

    mode, seqs, *rest = variant.split("-")
    dtype = rest[0] if rest else "bf16"
    if dtype == "bf16native":  # vLLM's own bf16 kernels even where the CPU has no bf16 dot product
        import actors.engine

        actors.engine.native_bf16 = lambda cpuinfo=None: True
    path = resolve_model_path(model)
    section = ModelSection(
        path=path,
        max_model_len=1024,
        enforce_eager=mode == "eager",
        max_num_seqs=int(seqs),
        dtype="float32" if dtype == "fp32" else "bfloat16",
    )
    engine = GenerationEngine(path, section, f"/tmp/eva-engine-settings-{variant}")
    texts = [p.text for p in load_seed_prompts("builtin:seed", "prompt", prompts)]
    spec = SamplingSpec(1, 0.7, 0.9, max_tokens)
    engine.generate(["w"], texts[:1], [0], spec)  # warm-up (compiled: the first shapes)
    batch = engine.generate([str(i) for i in range(len(texts))], texts, list(range(len(texts))), spec)
    return {
        "variant": variant,
        "start_s": round(engine.start_seconds, 1),
        "tok_per_s": round(batch.new_tokens / batch.seconds, 1),
        "new_tokens": batch.new_tokens,
        "pss_gb": round(psutil.Process().memory_full_info().pss / 1e9, 2),
        "kv_cache_tokens": engine.ready()["kv_cache_tokens"],
        "responses": [g.responses[0] for g in batch.generations],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--variants", default="eager-32,eager-256,compiled-32")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one(args.child, args.model, args.prompts, args.max_tokens)), flush=True)
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.engine_settings", "--child", variant, "--model", args.model]
        cmd += ["--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent, check=False)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"{variant} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"{variant}: done", flush=True)
    first = rows[0]["responses"]
    print(f"\n{args.prompts} prompts x 1 sample x {args.max_tokens} new tokens, {args.model}, one thread")
    print(f"{'variant':<20} {'start s':>8} {'tokens/s':>9} {'PSS GB':>7} {'KV tokens':>10} {'same responses':>15}")
    for r in rows:
        same = r["responses"] == first
        print(
            f"{r['variant']:<20} {r['start_s']:>8.1f} {r['tok_per_s']:>9.1f} {r['pss_gb']:>7.2f} "
            f"{r['kv_cache_tokens']:>10,} {str(same):>15}"
        )
        r["same_responses_as_first"] = same
    out_path = HERE / "results" / "engine_settings.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": [{**r, "responses": None} for r in rows]}, indent=1)
    )
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
