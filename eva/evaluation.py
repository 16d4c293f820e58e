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
