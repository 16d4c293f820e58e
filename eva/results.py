"""What the stages of one iteration produce, as typed records, and the iteration's metrics computed
from them by one pure function (`iteration_metrics`): the loop's stages return these, `commit` only
writes what this builds.

A stage that finished before a crash is not rerun on resume: its outputs are read back from the
iteration folder, and its counts from its stage marker (`from_marker`), so a resumed iteration
reports the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eva.metrics import summarize
from eva.pairs import pair_stats
from eva.tasks.prompts import exact_share, level_counts
from eva.types import CreatorHealth, FilterReport, IterationMetrics, PreferencePair, Prompt, ScoredPrompt, Timing

# Stages that generate tokens (their markers record `new_tokens`).
GENERATING_STAGES: tuple[str, ...] = ("estimate", "evolve", "solve")


@dataclass(frozen=True, slots=True)
class RolloutStats:
    """Timings and counts of rollouts (generate + score); `retries` says what had to be resent."""

    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    new_tokens: int = 0
    nonfinite_rewards: int = 0
    retries: tuple[str, ...] = ()
    longest_tokens: int = 0  # the longest prompt + response the engines ran, in tokens
    truncated_prompts: int = 0  # prompts the engines left-truncated to fit model.max_model_len

    @classmethod
    def merge(cls, parts: Sequence[RolloutStats]) -> RolloutStats:
        """The stats of several chunks of one stage as one."""
        return cls(
            generate_seconds=sum(p.generate_seconds for p in parts),
            score_seconds=sum(p.score_seconds for p in parts),
            new_tokens=sum(p.new_tokens for p in parts),
            nonfinite_rewards=sum(p.nonfinite_rewards for p in parts),
            retries=tuple(line for p in parts for line in p.retries),
            longest_tokens=max((p.longest_tokens for p in parts), default=0),
            truncated_prompts=sum(p.truncated_prompts for p in parts),
        )

    def marker(self, prompts: int) -> dict[str, Any]:
        """The counts a rollout stage records in its marker (and prints)."""
        return {
            "prompts": prompts,
            "new_tokens": self.new_tokens,
            "longest_tokens": self.longest_tokens,
            "truncated": self.truncated_prompts,
            "nonfinite": self.nonfinite_rewards,
            "retries": len(self.retries),
            "generate_s": round(self.generate_seconds, 2),
            "score_s": round(self.score_seconds, 2),
        }


class TrainingDivergedError(RuntimeError):
    """A training round ended with a non-finite loss or non-finite weights: the trainer raises it
    instead of returning, so the iteration's policy is never saved, synced or committed."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    """One training round as the iteration records it: steps, mean loss, TRL's reward accuracy, and
    the seconds of saving the policy and pushing it to the engines."""

    steps: int = 0
    train_loss: float | None = None
    reward_accuracy: float | None = None
    save_s: float = 0.0
    sync_s: float = 0.0

    @classmethod
    def from_marker(cls, info: Mapping[str, Any]) -> TrainResult:
        return cls(
            steps=int(info.get("steps", 0)),
            train_loss=info.get("train_loss"),
            reward_accuracy=info.get("reward_accuracy"),
            save_s=float(info.get("save_s", 0.0)),
            sync_s=float(info.get("sync_s", 0.0)),
        )


def filter_report_from_marker(info: Mapping[str, Any], kept_key: str) -> FilterReport:
    """The FilterReport a finished evolve (kept_key "kept") or pairs ("pairs") stage recorded."""
    return FilterReport(kept=int(info.get(kept_key, 0)), dropped=dict(info.get("dropped", {})))


@dataclass(frozen=True)
class IterationResults:
    """Everything the stages of iteration t produced. The baseline has no estimate, sample or evolve
    (empty lists, `evolve_report` None)."""

    iteration: int
    estimated: Sequence[ScoredPrompt]
    sampled: Sequence[Prompt]
    evolve_report: FilterReport | None
    solved: Sequence[ScoredPrompt]
    pairs: Sequence[PreferencePair]
    pairs_report: FilterReport
    train: TrainResult
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    tokens_generated: Mapping[str, int] = field(default_factory=dict)
    parents_info: Mapping[str, float | None] = field(default_factory=dict)  # parent id -> its info when picked


def _mean(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def creator_health(r: IterationResults) -> CreatorHealth:
    """The creator-health figures of one iteration (CreatorHealth explains each)."""
    t = r.iteration
    sampled = {p.id for p in r.sampled}
    children = [s for s in r.estimated if s.prompt.iteration == t - 1 and not s.prompt.is_seed]
    tokens = sum(r.tokens_generated.values())
    task = any(s.prompt.meta is not None for s in r.solved)
    return CreatorHealth(
        sampled_info=_mean(s.info for s in r.estimated if s.prompt.id in sampled),
        estimated_info=_mean(s.info for s in r.estimated),
        children_info=_mean(s.info for s in children),
        parents_info=_mean(r.parents_info.get(s.prompt.parent_id or "") for s in children),
        pair_yield=len(r.pairs) / len(r.solved) if r.solved else 0.0,
        tie_share=r.pairs_report.dropped.get("tie", 0) / len(r.solved) if r.solved else 0.0,
        tokens_per_pair=tokens / len(r.pairs) if r.pairs else None,
        train_levels=level_counts([s.prompt for s in r.solved]),
        solve_exact=exact_share([x for s in r.solved for x in s.finite_rewards]) if task else None,
    )


def iteration_metrics(r: IterationResults, buffer_size: int, timing: Timing) -> IterationMetrics:
    """metrics.json of one iteration, from its results alone.

    Informativeness is summarized over the estimate (over the solve rollouts in the baseline, which
    has no estimate); rewards over the solve rollouts (what the pairs came from). `num_evolved`
    counts the training prompts born in this iteration.
    """
    t = r.iteration
    info_source = r.estimated or r.solved
    return IterationMetrics(
        iteration=t,
        stage_seconds={k: round(float(v), 3) for k, v in r.stage_seconds.items()},
        tokens_generated={stage: int(r.tokens_generated.get(stage, 0)) for stage in GENERATING_STAGES},
        info_summary=summarize([s.info for s in info_source]),
        reward_summary=summarize([x for s in r.solved for x in s.finite_rewards]),
        filter_counts=dict(r.evolve_report.dropped) if r.evolve_report else {},
        num_sampled=len(r.sampled),
        num_evolved=sum(1 for s in r.solved if s.prompt.iteration == t and not s.prompt.is_seed),
        num_train_prompts=len(r.solved),
        num_pairs=len(r.pairs),
        pairs_dropped=dict(r.pairs_report.dropped),
        mean_margin=pair_stats(r.pairs).get("mean_margin"),
        train_loss=r.train.train_loss,
        reward_accuracy=r.train.reward_accuracy,
        train_steps=r.train.steps,
        nonfinite_rewards=sum(s.num_nonfinite for s in [*r.estimated, *r.solved]),
        buffer_size=buffer_size,
        timing=timing,
        health=creator_health(r),
    )
