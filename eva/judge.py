"""LLM-as-a-judge without the model: the reward is the expected label value under the judge's
next-token distribution over the label tokens (continuous, not a parsed string)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def expected_label(logprobs: Sequence[float], values: Sequence[float]) -> float:
    """E[value] under the label distribution renormalized over the labels (a softmax over their
    logprobs, computed stably). nan when no label has finite logprob."""
    finite = [(lp, v) for lp, v in zip(logprobs, values) if math.isfinite(lp)]
    if not finite:
        return math.nan
    top = max(lp for lp, _ in finite)
    weights = [(math.exp(lp - top), v) for lp, v in finite]
    return sum(w * v for w, v in weights) / sum(w for w, _ in weights)
