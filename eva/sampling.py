"""Which prompts to evolve: draw k indices from informativeness scores (DESIGN.md step 2).

A score of None (or nan) means "no informativeness" (fewer than 2 finite rewards): such a prompt is
never drawn by any method. Infinite scores are treated the same way: `eva.metrics` never produces
them, and one would make min-max normalization meaningless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SAMPLE_METHODS: tuple[str, ...] = ("weighted", "greedy", "uniform")


def check_sample_method(method: str) -> None:
    """ValueError listing the known methods unless `method` is one."""
    if method not in SAMPLE_METHODS:
        raise ValueError(f"unknown sample method {method!r}; known: {', '.join(SAMPLE_METHODS)}")


def sample_size(n: int, frac: float) -> int:
    """k = ceil(frac * n) prompts out of n, at least 1 when n > 0 (and at most n)."""
    if not 0 < frac <= 1:
        raise ValueError(f"sample fraction must be in (0, 1], got {frac}")
    if n <= 0:
        return 0
    # Round first so float noise (0.1 * 30 = 3.0000000000000004) does not add a prompt.
    return min(n, max(1, math.ceil(round(frac * n, 9))))


def _as_scores(scores: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Scores as float64 with None -> nan (fast path for numeric numpy arrays)."""
    if isinstance(scores, np.ndarray) and scores.dtype.kind in "fiub":
        return scores.astype(np.float64, copy=False).reshape(-1)
    return np.array([np.nan if s is None else s for s in scores], dtype=np.float64)


def sample_prompts(scores: Sequence[float | None] | np.ndarray, k: int, method: str, seed: int) -> list[int]:
    """Draw up to k distinct indices into `scores` (length n), in draw order.

    - weighted: without replacement, probability proportional to the min-max normalized score
      w = (m - min) / (max - min) (Efraimidis-Spirakis: the k largest keys log(u)/w). All scores
      equal (or one candidate): uniform. The minimum score gets weight 0, so such prompts are drawn
      only after every positive-weight prompt, uniformly among themselves, when k asks for more.
    - greedy: the k highest scores; ties keep index order (lower index first).
    - uniform: uniform without replacement among all indices with a score (not None).

    k is clipped to the number of candidates; k <= 0 gives []. Deterministic for a given seed.
    """
    check_sample_method(method)
    s = _as_scores(scores)
    candidates = np.flatnonzero(np.isfinite(s))
    k = min(k, candidates.size)
    if k <= 0:
        return []
    rng = np.random.default_rng(seed)
    if method == "greedy":
        order = np.argsort(-s[candidates], kind="stable")
        return candidates[order[:k]].tolist()
    if method == "uniform":
        return rng.choice(candidates, size=k, replace=False).tolist()
    return _weighted(s[candidates], candidates, k, rng)


def _weighted(values: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Efraimidis-Spirakis weighted sampling without replacement; zero weights fill in uniformly."""
    lo, hi = values.min(), values.max()
    if hi == lo:
        return rng.choice(candidates, size=k, replace=False).tolist()
    w = (values - lo) / (hi - lo)
    positive = w > 0
    pos_idx = candidates[positive]
    take = min(k, pos_idx.size)
    drawn = pos_idx[draw_weighted(w[positive], take, rng)].tolist()
    if take < k:
        # Weight 0 means "never before a positive-weight prompt", not "never": fill the rest uniformly.
        drawn += rng.choice(candidates[~positive], size=k - take, replace=False).tolist()
    return drawn


def draw_weighted(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices into `weights` (all > 0), in draw order: successive draws without replacement,
    each with probability proportional to the weight among those left (Efraimidis-Spirakis: the k
    largest keys log(u)/w). k is clipped to len(weights). Uses exactly len(weights) uniforms of `rng`."""
    k = min(k, weights.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    # 1 - random() lies in (0, 1], so log(u) is finite and <= 0; larger key = drawn earlier.
    keys = np.log(1.0 - rng.random(weights.size)) / weights
    top = np.argpartition(-keys, k - 1)[:k]
    return top[np.argsort(-keys[top], kind="stable")]
