"""Generation throughput (vLLM engine vs plain `transformers.generate`) and weight sync vs a train step.

    python -m benchmarks.generation [--prompts 32] [--max-tokens 96] [--model builtin:smollm2-135m-instruct]

One run, the same prompts for both engines, sampled with the same settings (n=1, T=0.7, top_p=0.9,
fixed max new tokens). Each side runs in its own process, one after the other, with one thread each
(the setting the actors use), so neither competes with the other for the two cores. Then: the
trainer (a Ray actor) does DPO steps on SmolLM2 and its weights are pushed into a running engine
actor through the object store, the way the loop syncs weights.
Prints a table and writes benchmarks/out/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def _prompts(n: int) -> list[str]:
    from eva.buffer import load_seed_prompts

    return [p.text for p in load_seed_prompts("builtin:seed", "prompt", n)]


def bench_vllm(model: str, n: int, max_tokens: int) -> dict:
    from actors.engine import GenerationEngine, SamplingSpec
    from actors.models import resolve_model_path
    from eva.config import ModelSection

    path = resolve_model_path(model)
    engine = GenerationEngine(path, ModelSection(path=path, max_model_len=1024), "/tmp/eva-bench")
    texts = _prompts(n)
    spec = SamplingSpec(1, 0.7, 0.9, max_tokens)
    engine.generate(["w"], texts[:1], [0], spec)  # warm-up
    batch = engine.generate([str(i) for i in range(n)], texts, list(range(n)), spec)
    return {
        "engine": "vllm",
        "new_tokens": batch.new_tokens,
        "seconds": batch.seconds,
        "tok_per_s": batch.new_tokens / batch.seconds,
        "start_s": engine.start_seconds,
    }


def bench_hf(model: str, n: int, max_tokens: int, batch_size: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.models import resolve_model_path

    torch.set_num_threads(1)
    path = resolve_model_path(model)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in _prompts(n)
    ]
    torch.manual_seed(0)
    new_tokens, t0 = 0, time.perf_counter()
    for i in range(0, n, batch_size):
        enc = tok(chats[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = lm.generate(
                **enc,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                max_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id,
            )
        gen = out[:, enc["input_ids"].shape[1] :]
        # count tokens up to and including the first eos, like vLLM does
        for row in gen.tolist():
            new_tokens += next((j + 1 for j, x in enumerate(row) if x == tok.eos_token_id), len(row))
    seconds = time.perf_counter() - t0
    return {
        "engine": f"transformers.generate (bf16, batch {batch_size})",
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tok_per_s": new_tokens / seconds,
    }


def bench_sync(model: str, steps_pairs: int = 8) -> dict:
    """Trainer actor: one DPO round; engine actor: push the trainer's weights (as the loop does)."""
    import ray

    from actors.cluster import actor_env
    from actors.engine import GenerationEngine
    from actors.models import resolve_model_path
    from actors.trainer import PolicyTrainer
    from eva.config import ModelSection, SolverSection
    from eva.types import PreferencePair

    path = resolve_model_path(model)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": actor_env()}
    )
    try:
        engine = ray.remote(num_cpus=1)(GenerationEngine).remote(
            path, ModelSection(path=path, max_model_len=1024), "/tmp/eva-bench"
        )
        solver = SolverSection(per_device_batch_size=2, max_length=512, max_prompt_length=256, learning_rate=1e-6)
        trainer = ray.remote(num_cpus=1)(PolicyTrainer).remote(path, path, solver, "bfloat16", "/tmp/eva-bench", 0)
        ray.get([engine.ready.remote(), trainer.ready.remote()], timeout=600)
        texts = _prompts(steps_pairs)
        pairs = [
            PreferencePair(str(i), t, "A helpful, complete answer to: " + t, "no", 1.0, 0.0, 1)
            for i, t in enumerate(texts)
        ]
        train = ray.get(trainer.train.remote(pairs, 1), timeout=1200)
        t0 = time.perf_counter()
        weights = trainer.state_dict.remote()
        engine_s = ray.get(engine.update_weights.remote(weights), timeout=600)
        round_trip = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "train_steps": train["steps"],
        "s_per_step": train["seconds_per_step"],
        "sync_engine_s": engine_s,
        "sync_round_trip_s": round_trip,
    }


def _child(kind: str, args: argparse.Namespace) -> dict:
    """Run one side in a fresh process (vLLM patches torch threading in its process)."""
    code = (
        f"import json,sys; from benchmarks.generation import bench_{kind} as f; "
        f"print('RESULT'+json.dumps(f({args.model!r}, {args.prompts}, {args.max_tokens})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[6:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--skip-sync", action="store_true")
    args = parser.parse_args()
    rows = [_child("vllm", args), _child("hf", args)]
    sync = None if args.skip_sync else bench_sync(args.model)
    print(
        f"\nGeneration, {args.prompts} prompts x {args.max_tokens} max new tokens, n=1, T=0.7, 1 thread each "
        f"({args.model})\n"
    )
    print("| engine | new tokens | seconds | tokens/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['new_tokens']} | {r['seconds']:.1f} | {r['tok_per_s']:.0f} |")
    print(f"\nvLLM / transformers throughput: {rows[0]['tok_per_s'] / rows[1]['tok_per_s']:.1f}x")
    if sync:
        print(
            "\n| DPO step (full, batch 2, 1 thread) | weight sync into engine | sync round trip (object store) "
            "| sync / step |\n|---|---|---|---|"
        )
        print(
            f"| {sync['s_per_step']:.2f} s | {sync['sync_engine_s']:.3f} s | {sync['sync_round_trip_s']:.3f} s "
            f"| {sync['sync_round_trip_s'] / sync['s_per_step']:.1%} |"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "generation.json").write_text(json.dumps({"args": vars(args), "generation": rows, "sync": sync}, indent=2))


if __name__ == "__main__":
    main()
