"""Task problems as buffer prompts: a `Prompt` whose `meta` is the problem's canonical JSON.

The loop's stages see only `Prompt` records; these helpers make seeds from a family, grade responses
against each prompt's own metadata (the reference answer travels with the prompt through the
buffer, checkpoints, resume and exports), and count difficulty levels for the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from eva.tasks.base import Problem, canonical_json
from eva.tasks.problem_sets import read_problems, training_set
from eva.tasks.registry import family_of, get_family
from eva.types import Prompt


def prompt_of(problem: Problem) -> Prompt:
    """A seed prompt carrying the problem's metadata."""
    return Prompt.seed(problem.prompt, meta=canonical_json(problem.meta))


def meta_of(prompt: Prompt) -> dict[str, Any]:
    """The problem metadata of a task prompt; ValueError for a free-text prompt."""
    if prompt.meta is None:
        raise ValueError(f"prompt {prompt.id} has no task metadata (a free-text prompt in a task run?)")
    return json.loads(prompt.meta)


def seed_prompts(
    family: str, levels: Sequence[str], per_level: int, seed: int, problems_file: str | None = None
) -> list[Prompt]:
    """The seed prompts of a task run: the problems of `problems_file`, else a generated training set."""
    get_family(family)  # a user family must be loaded in this process before family_of can find it
    problems = (
        read_problems(problems_file) if problems_file else training_set(get_family(family), levels, per_level, seed)
    )
    return [prompt_of(p) for p in problems]


def grade(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
    """Each response graded by its prompt's family against the prompt's reference answer, in [0, 1]."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        meta = meta_of(prompt)
        out.append(float(family_of(meta).grade(meta, response)))
    return out


def level_of(prompt: Prompt) -> str | None:
    """The difficulty level of a task prompt, None for free text."""
    return None if prompt.meta is None else str(json.loads(prompt.meta).get("level"))


def level_counts(prompts: Sequence[Prompt]) -> dict[str, int]:
    """How many prompts of each difficulty level (task prompts only), sorted by level name."""
    counts = Counter(level for level in map(level_of, prompts) if level is not None)
    return dict(sorted(counts.items()))


def exact_share(rewards: Sequence[float]) -> float | None:
    """Share of responses graded exactly right (reward 1.0); None without rewards."""
    return sum(1 for r in rewards if r >= 1.0) / len(rewards) if rewards else None
