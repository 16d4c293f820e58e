"""The records that travel between layers (eva core <-> actors <-> pipelines).

Small, frozen, typed. Nothing here knows about Ray, vLLM or TRL; actors return these and the
pipelines pass them on. Large collections (the prompt buffer) are stored column-wise elsewhere
(`eva.buffer`); these records are the unit of exchange.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEED_OPERATOR = "seed"


def normalize_text(text: str) -> str:
    """Canonical form used for ids and exact-duplicate checks: NFKC, casefolded, whitespace folded."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_id(text: str) -> str:
    """Stable content hash of a prompt: 16 hex chars of sha256 over the normalized text.

    Two prompts that differ only in case or spacing share an id (and are duplicates of each other).
    """
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:16]


def match_id(prefix: str, ids: Iterable[str], where: str = "") -> str:
    """The one id in `ids` that starts with `prefix` (a whole id matches itself), as git resolves a
    short commit hash. ValueError naming `where` when none matches or several do (with a few of them)."""
    prefix = prefix.strip().lower()
    if not prefix:
        raise ValueError(f"an empty prompt id{f' ({where})' if where else ''}")
    found: list[str] = []
    for pid in ids:
        if pid == prefix:
            return pid
        if pid.startswith(prefix):
            found.append(pid)
    if len(found) == 1:
        return found[0]
    place = f" in {where}" if where else ""
    if not found:
        raise ValueError(f"no prompt id starts with {prefix!r}{place}")
    shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
    raise ValueError(
        f"prompt id prefix {prefix!r} is ambiguous{place}: {len(found)} ids start with it ({shown}); "
        "give more characters"
    )


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of the buffer with its lineage.

    `root_id` is the seed prompt the chain started from (a seed is its own root); `depth` counts
    rewrites from that seed; `operator` is the evolve operator that produced it (`"seed"` for seeds);
    `iteration` is the iteration in which it was born (0 for seeds). `meta` is the canonical JSON of
    a task-family problem (`eva.tasks`: family, params, reference answer, level), None for free text.
    """

    id: str
    text: str
    parent_id: str | None
    root_id: str
    depth: int
    operator: str
    iteration: int
    meta: str | None = None

    @classmethod
    def seed(cls, text: str, meta: str | None = None) -> Prompt:
        pid = prompt_id(text)
        return cls(
            id=pid, text=text, parent_id=None, root_id=pid, depth=0, operator=SEED_OPERATOR, iteration=0, meta=meta
        )

    def child(self, text: str, operator: str, iteration: int, meta: str | None = None) -> Prompt:
        """A rewrite of this prompt, carrying the lineage on."""
        return Prompt(
            id=prompt_id(text),
            text=text,
            parent_id=self.id,
            root_id=self.root_id,
            depth=self.depth + 1,
            operator=operator,
            iteration=iteration,
            meta=meta,
        )

    @property
    def is_seed(self) -> bool:
        return self.parent_id is None


@dataclass(frozen=True, slots=True)
class Generation:
    """Responses sampled for one prompt, as the engine returns them.

    `num_tokens` has one entry per response (new tokens generated). `tokens`: the token ids the
    engine ran (prompt as sent, responses as sampled), only when the request asked for them.
    """

    prompt_id: str
    responses: tuple[str, ...]
    num_tokens: tuple[int, ...]
    finish_reasons: tuple[str, ...] = ()
    tokens: SampledTokens | None = None


@dataclass(frozen=True, slots=True)
class SampledTokens:
    """The token ids of one prompt's group as the engine ran it: `prompt` after the chat template and
    any left-truncation, `responses[i]` the ids sampled for response i (a stop token included). The
    online solver trains on exactly these, never on a re-tokenization of the text."""

    prompt: tuple[int, ...]
    responses: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class ScoredPrompt:
    """A prompt with its sampled responses, their rewards, and its informativeness.

    `rewards[i]` scores `responses[i]` and may be non-finite (a scorer failure): such rewards are
    kept here for the record and excluded by `eva.metrics`. `info` is None when the prompt has fewer
    than two finite rewards (it is then never sampled). `tokens`: the engine's token ids of the group
    when the rollout asked for them (online mode); None otherwise and when read back from a table.
    """

    prompt: Prompt
    responses: tuple[str, ...]
    rewards: tuple[float, ...]
    info: float | None = None
    tokens: SampledTokens | None = None

    @property
    def finite_rewards(self) -> list[float]:
        return [r for r in self.rewards if math.isfinite(r)]

    @property
    def num_nonfinite(self) -> int:
        return sum(1 for r in self.rewards if not math.isfinite(r))


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One preference pair for the solver: chosen = best-rewarded response, rejected = worst."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    iteration: int

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


@dataclass(frozen=True, slots=True)
class FilterReport:
    """Counts of what a filter kept and why it dropped the rest (reason -> count)."""

    kept: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())


@dataclass(slots=True)
class Timing:
    """Where the wall time of an iteration went, in seconds (`eva.metrics.busy_summary`).

    `busy_by_kind` sums the work spans of the actors per kind (generate, score, train; replicas
    working at once count twice), `busy_s` is the length of their union, `overhead_s` the rest of
    `wall_s` (Ray calls, serialization, checkpoint writes); `save_s`/`sync_s`: the policy save and
    the weight push to the engines.
    """

    wall_s: float = 0.0
    busy_s: float = 0.0
    overhead_s: float = 0.0
    overhead_share: float = 0.0
    busy_by_kind: dict[str, float] = field(default_factory=dict)
    save_s: float = 0.0
    sync_s: float = 0.0


@dataclass(slots=True)
class CreatorHealth:
    """Is the creator earning its compute? Means are over prompts with an informativeness (None if none).

    `sampled_info` vs `estimated_info`: the informativeness of the prompts sampled for evolving
    against the whole estimated set (a selector that works picks above the mean). `children_info`
    vs `parents_info`: the prompts born in the previous iteration, as this iteration's estimate
    scores them, against what their parents scored when they were picked. `pair_yield`: pairs per
    solved prompt; `tie_share`: solved prompts whose responses all scored the same (no pair);
    `tokens_per_pair`: every token generated this iteration (estimate, evolve, solve) per usable
    pair. Task families: `train_levels` counts X'_t by difficulty level and `solve_exact` is the
    share of solve responses graded exactly right.
    """

    sampled_info: float | None = None
    estimated_info: float | None = None
    children_info: float | None = None
    parents_info: float | None = None
    pair_yield: float = 0.0
    tie_share: float = 0.0
    tokens_per_pair: float | None = None
    train_levels: dict[str, int] = field(default_factory=dict)
    solve_exact: float | None = None


@dataclass(slots=True)
class IterationMetrics:
    """What one iteration measured; written as `metrics.json` of the iteration (`eva.iteration`).

    Built once per iteration by `eva.results.iteration_metrics` from the stages' results. Times in
    seconds; `info_summary` and `reward_summary` hold count/mean/std/min/p10/p50/p90/max.
    """

    iteration: int
    stage_seconds: dict[str, float] = field(default_factory=dict)
    tokens_generated: dict[str, int] = field(default_factory=dict)
    info_summary: dict[str, float] = field(default_factory=dict)
    reward_summary: dict[str, float] = field(default_factory=dict)
    filter_counts: dict[str, int] = field(default_factory=dict)
    num_sampled: int = 0
    num_evolved: int = 0
    num_train_prompts: int = 0
    num_pairs: int = 0
    pairs_dropped: dict[str, int] = field(default_factory=dict)
    mean_margin: float | None = None
    train_loss: float | None = None
    reward_accuracy: float | None = None
    train_steps: int = 0
    nonfinite_rewards: int = 0
    buffer_size: int = 0
    timing: Timing = field(default_factory=Timing)
    health: CreatorHealth = field(default_factory=CreatorHealth)
    # run.mode online: one record per optimizer step of the iteration (pipelines.online: loss, rewards,
    # informativeness, tokens, seconds, ...); empty offline.
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IterationMetrics:
        """Read metrics.json; unknown keys are ignored, and the layout before `timing` (an `extra`
        dict holding buffer_size, the busy_<kind>_s spans and the overhead figures) is understood."""
        data = dict(data)
        legacy = data.pop("extra", None) or {}
        timing = dict(data.pop("timing", None) or {})
        if legacy:
            data.setdefault("buffer_size", int(legacy.get("buffer_size", 0)))
            kinds = {
                k[len("busy_") : -len("_s")]: v
                for k, v in legacy.items()
                if k.startswith("busy_") and k.endswith("_s") and k != "busy_s"
            }
            names = {f.name for f in dataclasses.fields(Timing)}
            timing = {**{k: v for k, v in legacy.items() if k in names}, "busy_by_kind": kinds, **timing}
        health = data.pop("health", None) or {}
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields, timing=_known(Timing, timing), health=_known(CreatorHealth, health))


def _known(cls, data: dict):
    """`cls(**data)` with the keys `cls` does not know dropped (files written by other versions)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
