"""Informativeness of a prompt from the reward vector of its sampled responses (DESIGN.md table).

Per-prompt metrics live in a small name -> function registry (`METRICS`); each function gets the
finite rewards of one prompt (a 1-D float array, length >= 2) and returns one float. `mean_inv`
depends on the means of the whole prompt set, so it exists only in `informativeness_batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from eva.types import ScoredPrompt, Timing

MetricFn = Callable[[np.ndarray], float]

METRICS: dict[str, MetricFn] = {}
# Metrics that need the whole prompt set (normalized over all prompts): batch form only.
BATCH_ONLY: tuple[str, ...] = ("mean_inv",)


def register(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: add a per-prompt metric to `METRICS` under `name`."""

    def add(fn: MetricFn) -> MetricFn:
        if name in METRICS or name in BATCH_ONLY:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = fn
        return fn

    return add


@register("gap")
def gap(r: np.ndarray) -> float:
    """r_max - r_min."""
    return float(r.max() - r.min())


@register("maxmean")
def maxmean(r: np.ndarray) -> float:
    """r_max - mean: the advantage-style regret proxy."""
    return float(r.max() - r.mean())


@register("dts")
def dts(r: np.ndarray) -> float:
    """Best minus second best of the sorted rewards."""
    s = np.sort(r)
    return float(s[-1] - s[-2])


@register("var")
def var(r: np.ndarray) -> float:
    """Population variance (1/n)."""
    return float(r.var())


@register("learnability")
def learnability(r: np.ndarray) -> float:
    """p(1 - p), p = the share of rewards >= 1 (exactly right under a task grader): R-Zero's and
    Absolute Zero's learnability, largest (1/4) where the policy solves a problem half the time.
    Partial credit makes nearly every task prompt show a reward gap; this looks at exact solves only."""
    p = float((r >= 1.0).mean())
    return p * (1.0 - p)


@register("uniform")
def uniform(r: np.ndarray) -> float:
    """No signal: every prompt is equally informative (baseline)."""
    return 1.0


def metric_names() -> tuple[str, ...]:
    """All metric names, per-prompt and batch-only."""
    return (*METRICS, *BATCH_ONLY)


def check_metric(metric: str) -> None:
    """ValueError listing the known metrics unless `metric` is one."""
    if metric not in metric_names():
        raise ValueError(f"unknown informativeness metric {metric!r}; known: {', '.join(metric_names())}")


def finite_rewards(rewards: Sequence[float]) -> np.ndarray:
    """The finite rewards of one prompt as a float64 array (nan and +-inf dropped: scorer failures)."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    return r[np.isfinite(r)]


def informativeness(rewards: Sequence[float], metric: str) -> float | None:
    """Informativeness of one prompt from its reward vector (length n, any n).

    Non-finite rewards are excluded; None when fewer than 2 finite rewards remain (one reward says
    nothing about spread). `mean_inv` needs the whole prompt set: use `informativeness_batch`.
    """
    check_metric(metric)
    if metric in BATCH_ONLY:
        raise ValueError(f"metric {metric!r} is normalized over the whole prompt set; use informativeness_batch")
    r = finite_rewards(rewards)
    return METRICS[metric](r) if r.size >= 2 else None


def informativeness_batch(reward_lists: Sequence[Sequence[float]], metric: str) -> list[float | None]:
    """Informativeness of every prompt of a set: one reward vector per prompt -> one value (or None) each.

    `mean_inv` = 1 - (mean - min_mean) / (max_mean - min_mean), min/max taken over the prompts that
    have >= 2 finite rewards (the others get None and take no part).
    """
    check_metric(metric)
    if metric not in BATCH_ONLY:
        return [informativeness(r, metric) for r in reward_lists]
    finite = [finite_rewards(r) for r in reward_lists]
    means = [float(r.mean()) if r.size >= 2 else None for r in finite]
    present = [m for m in means if m is not None]
    if not present:
        return [None] * len(means)
    lo, hi = min(present), max(present)
    if hi == lo:
        # No prompt is harder than another: all are equally weighted, so all get the top value.
        return [None if m is None else 1.0 for m in means]
    return [None if m is None else 1.0 - (m - lo) / (hi - lo) for m in means]


def with_informativeness(scored: Sequence[ScoredPrompt], metric: str) -> list[ScoredPrompt]:
    """The records with `info` attached, computed over the whole set (mean_inv needs the set's range)."""
    infos = informativeness_batch([s.rewards for s in scored], metric)
    return [dataclasses.replace(s, info=info) for s, info in zip(scored, infos, strict=True)]


def summarize(values: Sequence[float | None]) -> dict[str, float]:
    """count/none_count/mean/std/min/p10/p50/p90/max over the finite values (for metrics.json).

    `none_count` counts None and non-finite entries; std is the population std; percentiles are
    linear-interpolated. With no finite value only count (0) and none_count are given.
    """
    kept = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    out: dict[str, float] = {"count": int(kept.size), "none_count": len(values) - int(kept.size)}
    if kept.size == 0:
        return out
    p10, p50, p90 = np.percentile(kept, [10, 50, 90])
    out.update(
        mean=float(kept.mean()),
        std=float(kept.std()),
        min=float(kept.min()),
        p10=float(p10),
        p50=float(p50),
        p90=float(p90),
        max=float(kept.max()),
    )
    return out


def busy_summary(spans: Sequence[tuple[str, float, float]], start: float, end: float) -> Timing:
    """How much of the wall interval [start, end] some actor spent on real work.

    `spans` are (kind, t0, t1) from the actors (actors.busy); each is clipped to the interval. Per
    kind the sum (replicas working at once count twice: engine-seconds), and `busy_s` the length of
    the union of all spans (overlaps, e.g. one chunk generating while another is scored, count once).
    `overhead_s` is the rest of the wall: Ray calls, serialization, checkpoint writes, weight sync.
    """
    wall = max(0.0, end - start)
    clipped = sorted((max(t0, start), min(t1, end), kind) for kind, t0, t1 in spans if min(t1, end) > max(t0, start))
    by_kind: dict[str, float] = {}
    for a, b, kind in clipped:
        by_kind[kind] = by_kind.get(kind, 0.0) + (b - a)
    union, run = 0.0, None  # run: the (start, end) of the merged spans being extended
    for a, b, _ in clipped:
        if run is None or a > run[1]:
            union += 0.0 if run is None else run[1] - run[0]
            run = (a, b)
        else:
            run = (run[0], max(run[1], b))
    union += 0.0 if run is None else run[1] - run[0]
    return Timing(
        wall_s=round(wall, 4),
        busy_s=round(union, 4),
        overhead_s=round(wall - union, 4),
        overhead_share=round((wall - union) / wall, 4) if wall > 0 else 0.0,
        busy_by_kind={k: round(v, 4) for k, v in by_kind.items()},
    )
