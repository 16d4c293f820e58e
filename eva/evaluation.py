"""Held-out evaluation maths: one policy's rewards against another's on the same prompts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def win_rate(new: Sequence[float], base: Sequence[float]) -> dict[str, float | int]:
    """Head-to-head of `new[i]` against `base[i]` (the rewards of two policies' responses to prompt i).

    A win counts 1, a tie 0.5, a loss 0. Prompts where either reward is non-finite (a scorer failure)
    are left out and counted in `nonfinite`. Returns n, nonfinite, win_rate, win_rate_se (standard
    error of the mean win, ddof 1), mean_reward (new) and mean_reward_initial (base); nan where a
    value is undefined (no prompt left; the error needs two).
    """
    rt, r0 = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    if rt.shape != r0.shape:
        raise ValueError(f"new and base rewards differ in length: {rt.size} vs {r0.size}")
    ok = np.isfinite(r0) & np.isfinite(rt)
    wins = np.where(rt[ok] > r0[ok], 1.0, np.where(rt[ok] == r0[ok], 0.5, 0.0))
    return {
        "n": int(ok.sum()),
        "nonfinite": int((~ok).sum()),
        "win_rate": float(wins.mean()) if wins.size else math.nan,
        "win_rate_se": float(wins.std(ddof=1) / math.sqrt(wins.size)) if wins.size > 1 else math.nan,
        "mean_reward": float(rt[ok].mean()) if ok.any() else math.nan,
        "mean_reward_initial": float(r0[ok].mean()) if ok.any() else math.nan,
    }


def task_accuracy(levels: Sequence[str], grades: Sequence[float]) -> dict[str, dict[str, float | int]]:
    """Exact-match accuracy and mean grade per difficulty level, plus "all" (every problem counts once).

    `levels[i]` is the level of problem i and `grades[i]` the grade of the policy's answer to it in
    [0, 1] (1 = exactly right). Returns {level: {"n", "accuracy", "mean_grade"}}, levels sorted.
    """
    if len(levels) != len(grades):
        raise ValueError(f"{len(levels)} levels but {len(grades)} grades")
    by_level: dict[str, list[float]] = {}
    for level, grade in zip(levels, grades, strict=True):
        by_level.setdefault(level, []).append(float(grade))
    by_level = dict(sorted(by_level.items()))
    by_level["all"] = [float(g) for g in grades]
    return {
        level: {
            "n": len(g),
            "accuracy": sum(1 for x in g if x >= 1.0) / len(g) if g else math.nan,
            "mean_grade": float(np.mean(g)) if g else math.nan,
        }
        for level, g in by_level.items()
    }


# One row per held-out prompt of a free-text `eva eval`: both policies' responses and rewards.
EVAL_RESPONSES_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("response_initial", pa.string()),
        ("response", pa.string()),
        ("reward_initial", pa.float64()),
        ("reward", pa.float64()),
        ("delta", pa.float64()),  # reward - reward_initial; nan when either is non-finite
        ("outcome", pa.string()),  # win | tie | loss (the trained policy's), nonfinite
    ]
)


def eval_responses_table(
    ids: Sequence[str],
    prompts: Sequence[str],
    base: Sequence[str],
    new: Sequence[str],
    base_rewards: Sequence[float],
    new_rewards: Sequence[float],
) -> pa.Table:
    """The per-prompt table behind `win_rate(new_rewards, base_rewards)`: its `outcome` column counts
    the same wins, ties and losses (1, 0.5, 0 over the rows that are not `nonfinite`)."""
    rt, r0 = np.asarray(new_rewards, dtype=float), np.asarray(base_rewards, dtype=float)
    ok = np.isfinite(rt) & np.isfinite(r0)
    outcome = np.where(~ok, "nonfinite", np.where(rt > r0, "win", np.where(rt == r0, "tie", "loss")))
    columns = [list(ids), list(prompts), list(base), list(new), r0, rt, np.where(ok, rt - r0, np.nan), outcome]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, EVAL_RESPONSES_SCHEMA, strict=True)], schema=EVAL_RESPONSES_SCHEMA
    )


def biggest_changes(table: pa.Table, k: int, losses: bool = False) -> list[dict]:
    """The k rows with the largest reward gain of the trained policy (or the largest loss), rows
    without a finite delta left out; ties in delta keep the file's order."""
    rows = [r for r in table.to_pylist() if r["delta"] is not None and math.isfinite(r["delta"])]
    rows.sort(key=lambda r: r["delta"], reverse=not losses)
    return [r for r in rows if (r["delta"] < 0 if losses else r["delta"] > 0)][:k]
