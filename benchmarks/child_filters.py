"""Precision and recall of the evolve filters on hand-labelled creator children.

The labelled set `eva/data/evolve_labels.jsonl` holds real outputs of the cpu-default creator
(benchmarks/collect_children.py), each a (parent, operator, child, keep, kind, why) line. Every line
goes through `eva.evolve.filter_evolved` exactly as in the loop (no buffer but the parent, so
exact and near duplicates of the parent are dropped) under each `creator.prompt_filter` setting, and
the result is compared with the label. The thresholds of the embedding checks are chosen on the
even lines (the tuning half) by a grid search over both thresholds that maximises F1 of the keep
class (ties: the middle of the tied range); the config's defaults are what it chose. The odd lines are the
held-out half, never used for choosing.

    python -m benchmarks.child_filters [--data FILE] [--out benchmarks/out/child_filters.json] [--tune-only]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from actors.creator import minilm_embed, prompt_check
from eva.buffer import load_seed_prompts
from eva.child_filter import PromptCheck, prompt_reason
from eva.config import CreatorSection
from eva.evolve import OPERATORS, EvolveRequest, filter_evolved, instruction, render_meta_prompt
from eva.types import Prompt

SETTINGS = ("off", "text", "embedding")
DEFAULT_ROW = "embedding (default: wording + MiniLM)"
META_GRID = [round(0.10 + 0.01 * i, 2) for i in range(51)] + [1.01]  # 1.01: the check never fires
PARENT_GRID = [-1.0] + [round(0.02 * i, 2) for i in range(31)]  # -1: the check never fires


def load_rows(path: str | Path | None = None) -> list[dict[str, Any]]:
    text = Path(path).read_text() if path else (resources.files("eva.data") / "evolve_labels.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def filter_reason(row: dict[str, Any], creator: CreatorSection) -> str | None:
    """The reason `filter_evolved` gives the row's child under `creator` (None: kept)."""
    parent = Prompt.seed(row["parent"])
    request = EvolveRequest(parent, row["operator"], render_meta_prompt(row["operator"], parent.text), 0)
    _, report = filter_evolved(
        [(request, row["child"] or None)],
        (),
        min_chars=creator.min_prompt_chars,
        max_chars=creator.max_prompt_chars,
        near_dup_threshold=creator.near_duplicate_threshold,
        iteration=1,
        prompt_check=prompt_check(creator),
    )
    return next((reason for reason, n in report.dropped.items() if n), None)


def scores(kept: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of both classes; `kept` is the filter's decision, `keep` the label."""
    out: dict[str, Any] = {"n": len(keep), "labelled_keep": int(keep.sum()), "kept": int(kept.sum())}
    for name, decided, truth in (("keep", kept, keep), ("drop", ~kept, ~keep)):
        hit = int((decided & truth).sum())
        p = hit / decided.sum() if decided.sum() else float("nan")
        r = hit / truth.sum() if truth.sum() else float("nan")
        out[f"{name}_precision"], out[f"{name}_recall"] = p, r
        out[f"{name}_f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[f"{name}_precision_ci"], out[f"{name}_recall_ci"] = (
            wilson(hit, int(decided.sum())),
            wilson(hit, int(truth.sum())),
        )
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (the halves are small: 14 to 24 labelled keeps)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (centre - half, centre + half)


def similarities(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each child to its parent and to its operator's instruction (nan for empty children)."""
    embed = minilm_embed()
    parent, meta = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        if row["child"].strip():
            v = embed(row["child"])
            parent[i], meta[i] = float(v @ embed(row["parent"])), float(v @ embed(instruction(row["operator"])))
    return parent, meta


def decide(
    kept_before: np.ndarray, wording_drop: np.ndarray, parent: np.ndarray, meta: np.ndarray, tm: float, tp: float
) -> np.ndarray:
    """Kept or not, as `prompt_reason` decides, vectorised: the other filters and the wording keep the
    child, it is not a meta paraphrase (at least `tm` close to the instruction and closer to it than
    to the parent), and it is at least `tp` close to the parent."""
    return kept_before & ~wording_drop & ~((meta >= tm) & (meta > parent)) & (parent >= tp)


def tune(
    kept_before: np.ndarray, wording_drop: np.ndarray, parent: np.ndarray, meta: np.ndarray, keep: np.ndarray
) -> tuple[float, float, float]:
    """(max_meta_similarity, min_parent_similarity, F1 of keep) maximising F1 of keep on these rows.

    The decision is `decide`'s, over the grid. Many pairs
    tie (few labelled children sit near a threshold): the middle of the tied range is taken, the
    meta threshold first, so each sits as far from the labelled examples on both sides as it can."""
    f1 = {
        (tm, tp): scores(decide(kept_before, wording_drop, parent, meta, tm, tp), keep)["keep_f1"]
        for tm in META_GRID
        for tp in PARENT_GRID
    }
    top = max(f1.values())
    best = [pair for pair, value in f1.items() if value == top]
    metas = sorted({tm for tm, _ in best})
    tm = metas[(len(metas) - 1) // 2]
    parents = sorted(tp for m, tp in best if m == tm)
    return tm, parents[(len(parents) - 1) // 2], top


def seed_check(creator: CreatorSection) -> dict[str, int]:
    """False drops on text that certainly is a prompt: each builtin seed prompt as the child of its
    nearest other seed (a same-domain parent, as a breadth rewrite would have), under every operator."""
    seeds = [p.text for p in load_seed_prompts("builtin:seed")]
    embed = minilm_embed()
    vectors = np.stack([embed(s) for s in seeds])
    near = vectors @ vectors.T
    np.fill_diagonal(near, -np.inf)
    check = PromptCheck(creator.max_meta_similarity, creator.min_parent_similarity)
    counts: Counter[str] = Counter()
    for i, seed in enumerate(seeds):
        j = int(near[i].argmax())
        for op in OPERATORS:
            reason = prompt_reason(
                seed, seeds[j], check, (float(near[i, j]), float(vectors[i] @ embed(instruction(op))))
            )
            counts[reason or "kept"] += 1
    return {"seeds": len(seeds), "operators": len(OPERATORS), **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="labelled JSONL (default: the packaged set)")
    ap.add_argument("--out", default="benchmarks/out/child_filters.json")
    ap.add_argument(
        "--tune-only",
        action="store_true",
        help="print the thresholds the tuning half picks, and nothing on the held-out half",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    rows = load_rows(args.data)
    keep = np.array([bool(r["keep"]) for r in rows])
    halves = {
        "tuning (even lines)": np.arange(len(rows)) % 2 == 0,
        "held-out (odd lines)": np.arange(len(rows)) % 2 == 1,
    }
    default = CreatorSection()
    reasons = {s: [filter_reason(r, default.model_copy(update={"prompt_filter": s})) for r in rows] for s in SETTINGS}
    parent, meta = similarities(rows)

    kept_before = np.array([r is None for r in reasons["off"]])
    plain = PromptCheck(default.max_meta_similarity, default.min_parent_similarity)
    wording_drop = np.array(
        [bool(r["child"].strip()) and prompt_reason(r["child"], r["parent"], plain) is not None for r in rows]
    )
    tuning = halves["tuning (even lines)"]
    tm, tp, f1 = tune(kept_before[tuning], wording_drop[tuning], parent[tuning], meta[tuning], keep[tuning])
    if args.tune_only:
        print(f"tuning half: max_meta_similarity={tm}, min_parent_similarity={tp}, keep F1 {f1:.3f}")
        return
    vectorised = decide(
        kept_before, wording_drop, parent, meta, default.max_meta_similarity, default.min_parent_similarity
    )
    assert (vectorised == np.array([r is None for r in reasons["embedding"]])).all(), (
        "grid decision differs from filter_evolved"
    )
    embedding_only = decide(
        kept_before, np.zeros(len(rows), bool), parent, meta, default.max_meta_similarity, default.min_parent_similarity
    )

    decisions = {
        "off (the filters before this change)": kept_before,
        "text (wording cues)": np.array([r is None for r in reasons["text"]]),
        DEFAULT_ROW: vectorised,
        "ablation: MiniLM checks without wording": embedding_only,
    }
    table = {
        half: {name: scores(kept[mask], keep[mask]) for name, kept in decisions.items()}
        for half, mask in halves.items()
    }
    by_reason = {
        half: dict(Counter(r or "kept" for r, m in zip(reasons["embedding"], mask, strict=True) if m))
        for half, mask in halves.items()
    }
    crosstab = Counter((r or "kept", row["kind"]) for r, row in zip(reasons["embedding"], rows, strict=True))
    result = {
        "data": args.data or "eva/data/evolve_labels.jsonl",
        "rows": len(rows),
        "labelled": dict(Counter(r["kind"] for r in rows)),
        "defaults": {
            "max_meta_similarity": default.max_meta_similarity,
            "min_parent_similarity": default.min_parent_similarity,
        },
        "tuned_on_even_lines": {"max_meta_similarity": tm, "min_parent_similarity": tp, "keep_f1": f1},
        "scores": table,
        "reasons": by_reason,
        "reason_by_label": {f"{a} / {b}": n for (a, b), n in sorted(crosstab.items())},
        "seed_check": seed_check(default),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(result))
    if (tm, tp) != (default.max_meta_similarity, default.min_parent_similarity):
        print(
            f"\nNOTE: the grid on the tuning half picks max_meta_similarity={tm}, min_parent_similarity={tp} "
            f"(keep F1 {f1:.3f}); the config defaults are {default.max_meta_similarity}, "
            f"{default.min_parent_similarity}"
        )


def markdown(result: dict[str, Any]) -> str:
    def num(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    lines = []
    for half, rows in result["scores"].items():
        lines += [
            f"\n{half}: {next(iter(rows.values()))['n']} children, "
            f"{next(iter(rows.values()))['labelled_keep']} labelled keep\n",
            "| filters | kept | keep precision | keep recall | keep F1 | drop precision | drop recall | drop F1 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in rows.items():
            lines.append(
                f"| {name} | {s['kept']} | {num(s['keep_precision'])} | {num(s['keep_recall'])} | "
                f"{num(s['keep_f1'])} | "
                f"{num(s['drop_precision'])} | {num(s['drop_recall'])} | {num(s['drop_f1'])} |"
            )
    lines.append("\n95% intervals (Wilson), default filters:")
    for half, rows in result["scores"].items():
        s = rows[DEFAULT_ROW]
        names = ("keep_precision", "keep_recall", "drop_precision", "drop_recall")
        lines.append(
            f"- {half}: "
            + ", ".join(f"{n.replace('_', ' ')} [{s[n + '_ci'][0]:.2f}, {s[n + '_ci'][1]:.2f}]" for n in names)
        )
    lines += [
        "\nDrop reasons with the default filters:\n",
        "| reason | " + " | ".join(result["reasons"]) + " |",
        "|---|" + "---:|" * len(result["reasons"]),
    ]
    names = sorted({r for counts in result["reasons"].values() for r in counts}, key=lambda r: (r == "kept", r))
    for reason in names:
        lines.append(
            f"| {reason} | " + " | ".join(str(counts.get(reason, 0)) for counts in result["reasons"].values()) + " |"
        )
    tuned = result["tuned_on_even_lines"]
    lines.append(
        f"\nThresholds (grid on the tuning half, keep F1 {tuned['keep_f1']:.3f}): max_meta_similarity "
        f"{tuned['max_meta_similarity']}, min_parent_similarity {tuned['min_parent_similarity']}; "
        f"config defaults {result['defaults']['max_meta_similarity']}, {result['defaults']['min_parent_similarity']}."
    )
    seeds = result["seed_check"]
    drops = ", ".join(f"{k} {v}" for k, v in seeds.items() if k not in ("seeds", "operators", "kept")) or "none"
    lines.append(
        f"Builtin seed prompts as children of their nearest other seed, under each of the {seeds['operators']} "
        f"operators "
        f"({seeds['seeds'] * seeds['operators']} checks): kept {seeds.get('kept', 0)}; dropped: {drops}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
