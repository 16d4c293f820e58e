"""The program creator: children of sampled task problems by the family's own mutations.

Each child is a mutation (harder, easier or sideways) of its parent with the answer recomputed by
code, kept on the training side of the held-out split, with lineage like an LLM rewrite
(operator "task:<direction>"). Which direction a child takes is the `rule`:

    uniform   drawn at random for every child
    frontier  from how often the policy answered the parent exactly right in the estimate, p:
              harder when p > 3/4, easier when p < 1/4, sideways in between (toward the problems
              the policy sometimes solves: they are the ones whose n answers differ, the ones that
              give preference pairs)
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import numpy as np

from eva.seeding import derive_seed
from eva.tasks.base import DIRECTIONS, Direction, canonical_json
from eva.tasks.problem_sets import mutate_in_split
from eva.tasks.prompts import exact_share, meta_of
from eva.tasks.registry import family_of
from eva.types import FilterReport, Prompt, ScoredPrompt

RULES = ("uniform", "frontier")
DROP_REASONS = ("no_mutation", "duplicate")


def direction_for(parent: ScoredPrompt, rule: str, rng: np.random.Generator) -> Direction:
    """The mutation direction of one child of `parent` (module docstring)."""
    if rule == "uniform":
        return DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    if rule != "frontier":
        raise ValueError(f"unknown direction rule {rule!r}; known: {', '.join(RULES)}")
    p = exact_share(parent.finite_rewards)
    if p is None or 0.25 <= p <= 0.75:
        return "sideways"
    return "harder" if p > 0.75 else "easier"


def mutate_prompts(
    parents: Sequence[ScoredPrompt],
    num_variants: int,
    rule: str,
    seed: int,
    iteration: int,
    existing_ids: Container[str],
    round_: int = 0,
) -> tuple[list[Prompt], FilterReport]:
    """`num_variants` mutations per parent (round `round_` of them: each round draws afresh), minus
    those with no mutation in their direction and duplicates of `existing_ids` (the buffer, or any
    container of ids: only looked up) or of each other."""
    seen: set[str] = set()
    children: list[Prompt] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for parent in parents:
        rng = np.random.default_rng(derive_seed(seed, "mutate", iteration, round_, parent.prompt.id))
        meta = meta_of(parent.prompt)
        family = family_of(meta)
        for _ in range(num_variants):
            direction = direction_for(parent, rule, rng)
            problem = mutate_in_split(family, meta, direction, rng)
            if problem is None:
                dropped["no_mutation"] += 1
                continue
            child = parent.prompt.child(
                problem.prompt, f"task:{direction}", iteration, meta=canonical_json(problem.meta)
            )
            if child.id in seen or child.id in existing_ids:
                dropped["duplicate"] += 1
                continue
            seen.add(child.id)
            children.append(child)
    return children, FilterReport(kept=len(children), dropped=dropped)
