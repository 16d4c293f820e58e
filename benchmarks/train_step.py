"""Cost of one training round of the TRL solver actor (`actors.trainer.PolicyTrainer`), one thread.

    python -m benchmarks.train_step [--configs tiny-full,smollm2-full,smollm2-lora] [--steps 6]

Each configuration runs in a fresh subprocess (so peak RSS is its own): load the policy, train one
DPO (sigmoid) round of `steps` steps at batch 2, take `state_dict()` and `save()`. Pairs are the
labelled prompts of eva/data/reward_eval.jsonl with answers repeated to ~`--response-tokens` tokens.
Prints a markdown table and writes benchmarks/out/train_step.json. `changed` is the share of weight
elements that differ after the round once rounded to the save dtype (bf16 can swallow tiny updates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out" / "train_step.json"
DATA = Path(__file__).parent.parent / "eva" / "data" / "reward_eval.jsonl"
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-full": dict(model="builtin:tiny", dtype="float32", finetune="full", learning_rate=1e-3),
    "smollm2-full": dict(model="builtin:smollm2-135m-instruct", dtype="bfloat16", finetune="full", learning_rate=1e-6),
    "smollm2-lora": dict(model="builtin:smollm2-135m-instruct", dtype="bfloat16", finetune="lora", learning_rate=5e-5),
}


def run_one(name: str, steps: int, response_tokens: int, max_length: int, lr: float | None = None) -> dict[str, Any]:
    """Runs in the child process; `lr` overrides the configuration's learning rate."""
    import torch

    from actors.models import resolve_model_path
    from actors.trainer import PolicyTrainer
    from eva.config import SolverSection
    from eva.types import PreferencePair

    cfg = {**CONFIGS[name], **({"learning_rate": lr} if lr else {})}
    path = resolve_model_path(cfg["model"])
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][: 2 * steps]
    work = tempfile.mkdtemp(prefix="eva-train-bench-")
    solver = SolverSection(
        loss_type="sigmoid",
        finetune=cfg["finetune"],
        learning_rate=cfg["learning_rate"],
        epochs=1,
        per_device_batch_size=2,
        max_length=max_length,
        max_prompt_length=max_length // 2,
    )
    t0 = time.perf_counter()
    trainer = PolicyTrainer(path, path, solver, cfg["dtype"], work, seed=0)
    load_s = time.perf_counter() - t0
    tok = trainer.tokenizer

    def lengthen(text: str) -> str:
        n = max(1, len(tok.encode(text, add_special_tokens=False)))
        return " ".join([text] * max(1, response_tokens // n))

    pairs = [
        PreferencePair(str(i), r["prompt"], lengthen(r["good"]), lengthen(r["bad"]), 1.0, 0.0, 1)
        for i, r in enumerate(rows)
    ]
    seq_tokens = sum(len(tok.encode(p.prompt + p.chosen)) + len(tok.encode(p.prompt + p.rejected)) for p in pairs) / (
        2 * len(pairs)
    )
    before = trainer.state_dict()
    t0 = time.perf_counter()
    metrics = trainer.train(pairs, iteration=1)
    round_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = trainer.state_dict()
    state_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.save(os.path.join(work, "policy"))
    save_s = time.perf_counter() - t0
    changed = sum(int((before[k] != after[k]).sum()) for k in before) / sum(t.numel() for t in before.values())
    return {
        "config": name,
        "dtype": cfg["dtype"],
        "finetune": cfg["finetune"],
        "lr": cfg["learning_rate"],
        "batch": 2,
        "max_length": max_length,
        "tokens_per_seq": round(seq_tokens),
        "steps": metrics["steps"],
        "s_per_step": round(metrics["seconds_per_step"], 3),
        "round_s": round(round_s, 2),
        "load_s": round(load_s, 2),
        "state_dict_s": round(state_s, 3),
        "save_s": round(save_s, 3),
        "changed": round(changed, 4),
        "loss_first": round(metrics["losses"][0], 4),
        "loss_last": round(metrics["last_loss"], 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--response-tokens", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, help="override every configuration's learning rate")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps, args.response_tokens, args.max_length, args.lr)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for name in args.configs.split(","):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.train_step",
            "--child",
            name,
            "--steps",
            str(args.steps),
            "--response-tokens",
            str(args.response_tokens),
            "--max-length",
            str(args.max_length),
        ]
        cmd += ["--lr", str(args.lr)] if args.lr else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"done {name}", file=sys.stderr)
    cols = [
        "config",
        "finetune",
        "dtype",
        "lr",
        "tokens_per_seq",
        "steps",
        "s_per_step",
        "round_s",
        "state_dict_s",
        "save_s",
        "changed",
        "loss_first",
        "loss_last",
        "peak_rss_gb",
    ]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
