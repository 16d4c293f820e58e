"""Reward-model scoring throughput: in-order fixed-size batches (eva before issue 18, item 11) against
length-sorted token-budget batches with one tokenization per pair (`actors.reward.RewardModelScorer`).

    python -m benchmarks.reward_batching [--pairs 384] [--threads 1]

A small random-init LlamaForSequenceClassification (hidden 256, 4 layers, the SmolLM2 tokenizer and
chat template) scores `pairs` (prompt, response) pairs of mixed length built from
eva/data/reward_eval.jsonl (responses repeated 1-12 times: 40-900 tokens, like sampled answers of
up to max_new_tokens). Both sides run the same model, on CPU; the scores must agree. Prints a
markdown table and writes benchmarks/out/reward_batching.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actors.models import TINY_MODEL, resolve_model_path
from actors.reward import RewardModelScorer, _clip_pair, reward_values

OUT = Path(__file__).parent / "out" / "reward_batching.json"
DATA = Path(__file__).parents[1] / "eva" / "data" / "reward_eval.jsonl"


def build_classifier(out: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(TINY_MODEL))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(n):
        row = rows[i % len(rows)]
        prompts.append(row["prompt"])
        responses.append(" ".join([row["good"] if i % 2 else row["bad"]] * rng.randint(1, 12)))
    return prompts, responses


def score_in_order(scorer: RewardModelScorer, prompts: list[str], responses: list[str], batch: int) -> list[float]:
    """eva's scoring before item 11: batches of `batch` pairs in input order, each pair tokenized to
    clip it and again in the batch, padded to the batch's longest."""
    tok, out = scorer.tokenizer, []
    overhead = len(tok.encode(scorer._chat("", ""), add_special_tokens=False))
    budget = max(8, scorer.max_length - overhead)
    common: dict[str, Any] = dict(truncation=True, max_length=scorer.max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            texts = [
                scorer._chat(*_clip_pair(tok, p, r, budget))
                for p, r in zip(prompts[i : i + batch], responses[i : i + batch], strict=True)
            ]
            encoded = tok(texts, add_special_tokens=False, **common)
            out.extend(float(x) for x in reward_values(scorer.model(**encoded), encoded["input_ids"].shape[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts, responses = pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_classifier(Path(tmp) / "rm")
        rows = []
        reference: list[float] | None = None
        for name, batch_size, batch_tokens in (
            ("in order, batch 8 (before)", 8, None),
            ("in order, batch 16 (before)", 16, None),
            ("sorted, budget 8192 tokens, batch <= 64", 64, 8192),
            ("sorted, budget 16384 tokens, batch <= 64", 64, 16384),
        ):
            scorer = RewardModelScorer(
                path, batch_size, args.max_length, threads=args.threads, batch_tokens=batch_tokens or 16384
            )
            t0 = time.perf_counter()
            if batch_tokens is None:
                scores = score_in_order(scorer, prompts, responses, batch_size)
            else:
                scores = scorer.score(prompts, responses)
            seconds = time.perf_counter() - t0
            reference = reference or scores
            gap = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
            rows.append(
                {
                    "how": name,
                    "seconds": round(seconds, 2),
                    "pairs_per_s": round(len(prompts) / seconds, 1),
                    "max_score_diff": gap,
                }
            )
    lengths = [len(scorer._encode(p, r)["input_ids"]) for p, r in zip(prompts, responses, strict=True)]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {args.threads} thread(s), CPU only (no GPU)",
        "pairs": len(prompts),
        "tokens_per_pair": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths)), "max": max(lengths)},
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"{len(prompts)} pairs, tokens per pair {result['tokens_per_pair']}, {result['machine']}\n")
    print("| batching | seconds | pairs/s | max score diff vs first row |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['how']} | {r['seconds']} | {r['pairs_per_s']} | {r['max_score_diff']:.1e} |")


if __name__ == "__main__":
    main()
