"""Preference pairs from scored responses (DESIGN.md step 5): chosen = argmax, rejected = argmin reward."""

from __future__ import annotations

import math
from collections.abc import Sequence

from eva.types import FilterReport, PreferencePair, ScoredPrompt

# Every reason appears in the report (zero when it did not occur) so metrics.json has stable keys.
DROP_REASONS: tuple[str, ...] = ("too_few_rewards", "tie", "below_margin")


def pair_indices(rewards: Sequence[float], min_margin: float) -> tuple[int, int] | str:
    """(chosen, rejected): the indices of the best- and worst-rewarded responses over the finite
    rewards, or the reason no pair forms (`too_few_rewards`, `tie`, `below_margin`; build_pairs).

    Ties in the best or worst reward go to the first response (deterministic)."""
    idx = [i for i, r in enumerate(rewards) if math.isfinite(r)]
    if len(idx) < 2:
        return "too_few_rewards"
    best = max(idx, key=lambda i: rewards[i])  # max/min return the first of equal keys
    worst = min(idx, key=lambda i: rewards[i])
    margin = rewards[best] - rewards[worst]
    if margin == 0:
        return "tie"
    if margin <= min_margin:
        return "below_margin"
    return best, worst


def build_pairs(
    scored: Sequence[ScoredPrompt], min_margin: float, iteration: int
) -> tuple[list[PreferencePair], FilterReport]:
    """One pair per prompt: the best- vs the worst-rewarded response, over the finite rewards only
    (`pair_indices`).

    Dropped: `too_few_rewards` (< 2 finite rewards), `tie` (margin 0: no signal), `below_margin`
    (0 < margin <= min_margin). Rewards in the scorer's units; margin = chosen - rejected.
    """
    pairs: list[PreferencePair] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for sp in scored:
        if len(sp.responses) != len(sp.rewards):
            raise ValueError(f"prompt {sp.prompt.id}: {len(sp.responses)} responses but {len(sp.rewards)} rewards")
        found = pair_indices(sp.rewards, min_margin)
        if isinstance(found, str):
            dropped[found] += 1
            continue
        best, worst = found
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
