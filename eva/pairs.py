"""Preference pairs from scored responses (DESIGN.md step 5): chosen = argmax, rejected = argmin reward."""

from __future__ import annotations

import math
from collections.abc import Sequence

from eva.types import FilterReport, PreferencePair, ScoredPrompt

# Every reason appears in the report (zero when it did not occur) so metrics.json has stable keys.
DROP_REASONS: tuple[str, ...] = ("too_few_rewards", "tie", "below_margin")


def build_pairs(
    scored: Sequence[ScoredPrompt], min_margin: float, iteration: int
) -> tuple[list[PreferencePair], FilterReport]:
    """One pair per prompt: the best- vs the worst-rewarded response, over the finite rewards only.

    Ties in the best or worst reward go to the first response (deterministic). Dropped:
    `too_few_rewards` (< 2 finite rewards), `tie` (margin 0: no signal), `below_margin`
    (0 < margin <= min_margin). Rewards in the scorer's units; margin = chosen - rejected.
    """
    pairs: list[PreferencePair] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for sp in scored:
        if len(sp.responses) != len(sp.rewards):
            raise ValueError(f"prompt {sp.prompt.id}: {len(sp.responses)} responses but {len(sp.rewards)} rewards")
        idx = [i for i, r in enumerate(sp.rewards) if math.isfinite(r)]
        if len(idx) < 2:
            dropped["too_few_rewards"] += 1
            continue
        best = max(idx, key=lambda i: sp.rewards[i])  # max/min return the first of equal keys
        worst = min(idx, key=lambda i: sp.rewards[i])
        margin = sp.rewards[best] - sp.rewards[worst]
        if margin == 0:
            dropped["tie"] += 1
        elif margin <= min_margin:
            dropped["below_margin"] += 1
        else:
            pairs.append(
                PreferencePair(
                    prompt_id=sp.prompt.id,
                    prompt=sp.prompt.text,
                    chosen=sp.responses[best],
                    rejected=sp.responses[worst],
                    chosen_reward=sp.rewards[best],
                    rejected_reward=sp.rewards[worst],
                    iteration=iteration,
                )
            )
    return pairs, FilterReport(kept=len(pairs), dropped=dropped)


def pair_stats(pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """count, mean/min/max margin and mean chosen/rejected reward; only count (0) when empty."""
    if not pairs:
        return {"count": 0}
    margins = [p.margin for p in pairs]
    n = len(pairs)
    return {
        "count": n,
        "mean_margin": sum(margins) / n,
        "min_margin": min(margins),
        "max_margin": max(margins),
        "mean_chosen_reward": sum(p.chosen_reward for p in pairs) / n,
        "mean_rejected_reward": sum(p.rejected_reward for p in pairs) / n,
    }
