"""What the trainer receives for one online step: the step's groups as token ids and rewards.

The driver builds a `StepBatch` from the step's scored groups (`step_batch`) and sends it to the
trainer actor, which computes advantages (`eva.online.algos`) and trains. Plain Python values only
(no torch), so the driver never imports torch.

Layout: P prompts (the minibatch), n responses each. `completion_ids[p][i]` is the token sequence
the engine sampled for response i of prompt p, `rewards[p][i]` its reward; flattened row-major,
response i of prompt p is sequence `p * n + i` (as `eva.online.algos` expects). Online DPO trains
on `pairs`: (p, chosen, rejected) indices into the groups (`eva.pairs.pair_indices`, the same
choice as the pairs `eva.pairs.build_pairs` records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eva.pairs import pair_indices
from eva.types import ScoredPrompt


@dataclass(frozen=True, slots=True)
class StepBatch:
    """One optimizer step's data: `step` is the global step (0-based), `iteration` the committed
    iteration it belongs to (steps (t - 1) K .. t K - 1 make iteration t)."""

    step: int
    iteration: int
    prompt_ids: tuple[tuple[int, ...], ...]  # [P]
    completion_ids: tuple[tuple[tuple[int, ...], ...], ...]  # [P][n]
    rewards: tuple[tuple[float, ...], ...]  # [P][n]
    pairs: tuple[tuple[int, int, int], ...] = ()  # online DPO: (prompt, chosen, rejected)

    @property
    def num_sequences(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def step_batch(step: int, iteration: int, groups: Sequence[ScoredPrompt], min_margin: float) -> StepBatch:
    """The batch of one step from its scored groups, each carrying the engine's token ids
    (`ScoredPrompt.tokens`); ValueError naming the prompt of a group without them."""
    prompts, completions = [], []
    for g in groups:
        if g.tokens is None or len(g.tokens.responses) != len(g.rewards):
            raise ValueError(f"prompt {g.prompt.id}: the group has no token ids for its {len(g.rewards)} responses")
        prompts.append(g.tokens.prompt)
        completions.append(g.tokens.responses)
    pairs = []
    for p, g in enumerate(groups):
        found = pair_indices(g.rewards, min_margin)
        if not isinstance(found, str):
            pairs.append((p, *found))
    return StepBatch(
        step=step,
        iteration=iteration,
        prompt_ids=tuple(prompts),
        completion_ids=tuple(completions),
        rewards=tuple(tuple(g.rewards) for g in groups),
        pairs=tuple(pairs),
    )
