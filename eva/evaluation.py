"""Held-out evaluation maths: one policy's rewards against another's on the same prompts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
