"""Seeded problem sets (training seeds, held-out evaluation) and their JSONL files.

Held-out problems can never be trained on, by two separate guarantees:
- The problem space is split by a hash: a problem is held out when
  `derive_seed("split", family.name, family.key(meta)) % HELDOUT_EVERY == 0` (one problem in five), and
  training otherwise. The key ignores wording, so "23+45" asked plainly and as a story share a side.
  Training sets, held-out sets and `mutate_in_split` only ever return problems of their own side.
- Their random streams differ: level `L` of a set with seed `s` draws from
  `derive_seed(split, family.name, L, s)` with split = "train" or "heldout", so the same seed never
  replays the same draws, and adding a level leaves the other levels' problems unchanged.

JSONL format: one object per line, {"prompt": "...", "meta": {"family": ..., "params": ..., "answer":
..., "level": ...}}; blank lines are skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eva.seeding import derive_seed
from eva.tasks.base import Direction, Problem, TaskFamily, check_meta

Split = Literal["train", "heldout"]
HELDOUT_EVERY = 5  # one problem in HELDOUT_EVERY (by key hash) is held out
DRAWS_PER_PROBLEM = 50  # give up on a level after per_level * DRAWS_PER_PROBLEM draws


def split_of(family: TaskFamily, meta: dict[str, Any]) -> Split:
    """Which side of the train / held-out split a problem lies on (module docstring)."""
    return "heldout" if derive_seed("split", family.name, family.key(meta)) % HELDOUT_EVERY == 0 else "train"


def problem_set(
    family: TaskFamily, levels: Sequence[str], per_level: int, seed: int, split: Split, strict: bool = True
) -> list[Problem]:
    """`per_level` distinct problems (by prompt) of `split` for each level, levels in the given order.

    ValueError when a level has too few distinct problems on that side (e.g. 100 held-out "1d+" sums
    do not exist: there are 81 one-digit sums in all); with `strict=False` such a level gives all
    the distinct problems found instead (at most `per_level`).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    out: list[Problem] = []
    for level in levels:
        rng = np.random.default_rng(derive_seed(split, family.name, level, seed))
        found: dict[str, Problem] = {}
        draws = 0
        while len(found) < per_level and draws < per_level * DRAWS_PER_PROBLEM:
            for p in family.generate(rng, level, per_level):
                if split_of(family, p.meta) == split and len(found) < per_level:
                    found.setdefault(p.prompt, p)
            draws += per_level
        if len(found) < per_level and strict:
            raise ValueError(
                f"{family.name} level {level!r}: only {len(found)} distinct {split} problems found in {draws} "
                f"draws, {per_level} asked; lower per_level"
            )
        out.extend(found.values())
    return out


def training_set(family: TaskFamily, levels: Sequence[str], per_level: int, seed: int) -> list[Problem]:
    """Seed problems for training: `problem_set(..., split="train")`."""
    return problem_set(family, levels, per_level, seed, "train")


def heldout_set(
    family: TaskFamily, levels: Sequence[str], per_level: int, seed: int, strict: bool = True
) -> list[Problem]:
    """A stratified evaluation set: `problem_set(..., split="heldout")`, disjoint from any training set."""
    return problem_set(family, levels, per_level, seed, "heldout", strict)


def mutate_in_split(
    family: TaskFamily,
    meta: dict[str, Any],
    direction: Direction,
    rng: np.random.Generator,
    split: Split = "train",
    tries: int = 8,
) -> Problem | None:
    """A mutation of the problem that stays on `split` (evolving training problems must not reach
    held-out ones): up to `tries` mutations, the first on that side, else None."""
    for _ in range(tries):
        child = family.mutate(meta, direction, rng)
        if child is None:
            return None
        if split_of(family, child.meta) == split:
            return child
    return None


def write_problems(path: str | os.PathLike, problems: Iterable[Problem]) -> int:
    """Write problems as JSONL (module docstring), atomically; returns how many were written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def read_problems(path: str | os.PathLike) -> list[Problem]:
    """Read a JSONL problem file; ValueError naming the file and line of the first bad record."""
    problems = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                problems.append(_problem_from_json(json.loads(line)))
            except ValueError as e:  # json.JSONDecodeError is a ValueError too
                raise ValueError(f"{path}:{lineno}: {e}") from e
    return problems


def _problem_from_json(obj: Any) -> Problem:
    if not isinstance(obj, dict) or set(obj) != {"prompt", "meta"}:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f'expected an object with keys "prompt" and "meta", got {keys}')
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise ValueError("prompt must be a non-empty string")
    return Problem(prompt=obj["prompt"], meta=check_meta(obj["meta"]))
