"""Pairwise accuracy of reward designs on the labelled set `eva/data/reward_eval.jsonl`.

Each line is (prompt, good, bad, kind); a design is right on a line when it scores good above bad
(a tie counts one half, a nan counts wrong). Every component is scored once on all 2N pairs, through
the scorer classes the pipeline uses; designs are combinations of those raw scores through
`CombinedScorer.combine`, so the numbers are the shipped arithmetic. Weights of the searched
combinations are chosen on the even lines only; the odd lines are the held-out check.

    python -m benchmarks.reward_accuracy [--model builtin:smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from actors.models import DEFAULT_MODEL, MINILM_MODEL, resolve_model_path
from actors.reward import (
    CombinedScorer,
    JudgeScorer,
    RelevanceScorer,
    Scorer,
    WellformedScorer,
    judge_engine,
)
from eva.config import RewardSection
from eva.judge import JUDGE_TEMPLATES, expected_label

KINDS = ("off_topic", "wrong", "truncated", "repetitive", "rude", "unhelpful")
GRID = [round(0.1 * i, 1) for i in range(11)]


def load_triples(path: str | Path | None = None) -> list[dict[str, str]]:
    text = Path(path).read_text() if path else (resources.files("eva.data") / "reward_eval.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pairwise_accuracy(good: list[float], bad: list[float]) -> float:
    """Share of lines with good > bad; ties count 1/2, a nan on either side counts as wrong."""

    def point(g: float, b: float) -> float:
        if not (math.isfinite(g) and math.isfinite(b)):
            return 0.0
        return 1.0 if g > b else 0.5 if g == b else 0.0

    return sum(point(g, b) for g, b in zip(good, bad, strict=True)) / max(1, len(good))


def evaluate(scores: list[float], triples: list[dict[str, str]]) -> dict[str, float]:
    """Accuracy overall, per kind, and on the even / odd lines. `scores` = goods then bads."""
    n = len(triples)
    good, bad = scores[:n], scores[n:]

    def acc(idx: list[int]) -> float:
        return pairwise_accuracy([good[i] for i in idx], [bad[i] for i in idx])

    row = {"overall": acc(list(range(n))), "even": acc(list(range(0, n, 2))), "odd": acc(list(range(1, n, 2)))}
    for kind in KINDS:
        idx = [i for i, t in enumerate(triples) if t["kind"] == kind]
        if idx:
            row[kind] = acc(idx)
    return row


def pairwise_ab(engine: Any, triples: list[dict[str, str]]) -> list[float]:
    """The A/B judge (benchmark only: the pipeline needs pointwise rewards). P(A better), averaged
    over both orders to cancel position bias; returned as goods then bads like the other designs."""
    from vllm import SamplingParams

    tok = engine.tokenizer
    ids = [tok.encode(x, add_special_tokens=False)[0] for x in ("A", "B")]
    ask = "Question: {q}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nWhich answer is better, A or B? Reply with one letter."
    texts = []
    for t in triples:
        for a, b in ((t["good"], t["bad"]), (t["bad"], t["good"])):
            texts.append(engine.apply_chat_template(ask.format(q=t["prompt"], a=a, b=b)) + "Better answer: ")
    params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
    outs = engine.llm.generate(texts, params, use_tqdm=False)
    p_first = [expected_label([o.outputs[0].logprobs[0][i].logprob for i in ids], [1.0, 0.0]) for o in outs]
    p_good = [(p_first[2 * k] + 1 - p_first[2 * k + 1]) / 2 for k in range(len(triples))]
    return p_good + [1 - p for p in p_good]


def search_weights(
    names: list[str], scorers: dict[str, Scorer], raw: dict[str, list[float]], triples: list[dict[str, str]]
) -> tuple[dict[str, float], list[float]]:
    """Best weights (on a 0.1 grid, summing to 1) for the components `names`, chosen on even lines."""
    best: tuple[tuple[float, float], dict[str, float], list[float]] | None = None
    for ws in itertools.product(GRID, repeat=len(names) - 1):
        last = round(1 - sum(ws), 1)
        if last < 0:
            continue
        weights = dict(zip(names, (*ws, last), strict=True))
        scores = combine(weights, scorers, raw)
        row = evaluate(scores, triples)
        key = (row["even"], min(row[k] for k in KINDS if k in row))  # ties: the less lopsided design
        if best is None or key > best[0]:
            best = (key, weights, scores)
    assert best is not None
    return best[1], best[2]


def combine(weights: dict[str, float], scorers: dict[str, Scorer], raw: dict[str, list[float]]) -> list[float]:
    names = [n for n, w in weights.items() if w]
    return CombinedScorer([(weights[n], scorers[n]) for n in names]).combine([raw[n] for n in names])


def default_design(raw_keys: set[str]) -> dict[str, float]:
    """RewardSection()'s default components as weights over the benchmark's component names."""
    reward = RewardSection()
    specs = reward.components if reward.kind == "combined" else ()
    weights: dict[str, float] = {}
    for spec in specs:
        key = f"judge:{spec.judge_template or reward.judge_template}" if spec.kind == "judge" else spec.kind
        if key not in raw_keys:
            raise SystemExit(f"default component {key} is not benchmarked here")
        weights[key] = weights.get(key, 0.0) + spec.weight
    return weights or {f"judge:{reward.judge_template}": 1.0}


def markdown(rows: dict[str, dict[str, float]]) -> str:
    cols = ["overall", *KINDS, "even", "odd"]
    lines = ["| design | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" if c in row else "-" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="judge model (builtin name or path)")
    ap.add_argument("--data", default=None, help="labelled JSONL (default: the packaged set)")
    ap.add_argument("--out", default="benchmarks/out/reward_accuracy.json")
    ap.add_argument(
        "--judge-dtype", default=RewardSection().judge_dtype, help="the judge engine's dtype (reward.judge_dtype)"
    )
    args = ap.parse_args()

    triples = load_triples(args.data)
    prompts = [t["prompt"] for t in triples] * 2
    responses = [t["good"] for t in triples] + [t["bad"] for t in triples]
    workdir = tempfile.mkdtemp(prefix="reward_acc_")
    raw: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    scorers: dict[str, Scorer] = {}

    t0 = time.perf_counter()
    engine = judge_engine(resolve_model_path(args.model), RewardSection().max_length, workdir, args.judge_dtype)
    seconds["judge engine start"] = time.perf_counter() - t0
    for name in JUDGE_TEMPLATES:
        scorers[f"judge:{name}"] = JudgeScorer(engine, name)
    scorers["relevance"] = RelevanceScorer(resolve_model_path(MINILM_MODEL))
    scorers["wellformed"] = WellformedScorer()
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        raw[name] = scorer.score(prompts, responses)
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ab = pairwise_ab(engine, triples)
    seconds["pairwise A/B judge"] = time.perf_counter() - t0

    rows: dict[str, dict[str, float]] = {name: evaluate(raw[name], triples) for name in scorers}
    rows["judge:pairwise A/B (both orders)"] = evaluate(ab, triples)
    searched: dict[str, dict[str, float]] = {}
    combos = [["relevance", "wellformed"]] + [[j, "relevance", "wellformed"] for j in scorers if j.startswith("judge:")]
    combos += [[j, "relevance"] for j in scorers if j.startswith("judge:")]
    for names in combos:
        weights, scores = search_weights(names, scorers, raw, triples)
        label = " + ".join(f"{w:g} {n}" for n, w in weights.items())
        rows[f"best on even: {label}"] = evaluate(scores, triples)
        searched[label] = weights
    default = default_design(set(raw))
    rows["DEFAULT " + " + ".join(f"{w:g} {n}" for n, w in default.items())] = evaluate(
        combine(default, scorers, raw), triples
    )

    print(markdown(rows))
    print("\nseconds for all", len(prompts), "pairs:", {k: round(v, 2) for k, v in seconds.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": platform.platform(),
                "model": args.model,
                "judge_dtype": args.judge_dtype,
                "lines": len(triples),
                "rows": rows,
                "searched_weights": searched,
                "default": default,
                "seconds": seconds,
                "raw": raw,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
