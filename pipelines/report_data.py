"""The records of `eva report`: what `pipelines.report` gathers from a run directory and
`pipelines.report_html` lays out. Plain data, no I/O; the size limits both sides state live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eva.types import IterationMetrics

MAX_HISTOGRAMS = 12  # informativeness histograms: at most this many iterations
DIFF_LIST = 50  # prompts listed per side of a diff


@dataclass
class IterationView:
    """What the curves and population charts need from one committed iteration."""

    t: int
    metrics: IterationMetrics
    stage_seconds: dict[str, float]
    info: list[float]  # informativeness of the prompts estimated in this iteration (finite only)
    buffer_size: int
    by_operator: dict[str, int]
    by_depth: dict[int, int]
    length: dict[str, float]  # buffer prompt length in characters: p10, mean, p90
    train_length: float | None  # mean length of the training prompts
    train_mix: dict[str, int]  # seed / evolved this iteration / evolved earlier


@dataclass
class PromptRow:
    """One prompt of a buffer version with its latest stats (a table row or a lineage step)."""

    id: str
    text: str
    depth: int
    operator: str
    born: int
    info: float | None
    mean_reward: float | None
    gap: float | None  # max - min of the latest finite reward vector
    times_sampled: int
    times_trained: int


@dataclass
class Chain:
    """The lineage of one prompt, root first. `missing_parent` is set when the chain is cut: the
    oldest step found names a parent that is not in the buffer (a damaged or hand-edited
    prompts.parquet), so the steps before it are unknown; `cycle` when the parents loop."""

    steps: list[PromptRow]
    missing_parent: str | None = None
    cycle: bool = False

    @property
    def broken(self) -> bool:
        return self.missing_parent is not None or self.cycle


@dataclass
class Diff:
    """What changed in the buffer between two committed iterations."""

    a: int
    b: int
    size_a: int
    size_b: int
    added: list[PromptRow]  # at most DIFF_LIST, most informative first
    dropped: list[PromptRow]
    num_added: int
    num_dropped: int
    added_by_operator: dict[str, int]
    added_by_depth: dict[int, int]
    mean_length: tuple[float | None, float | None]
    mean_info: tuple[float | None, float | None]
    train_added: int  # training prompts of b not trained on in a
    train_dropped: int


@dataclass
class RunStatus:
    state: str  # "complete", "in progress", "stopped"
    committed: list[int]
    planned: int | None
    current: int | None  # iteration being worked on (started, not committed)
    current_stages: list[str]  # stages of `current` finished so far
    last_event: str | None


@dataclass
class Report:
    run_dir: str
    name: str
    generated_at: str
    config: dict[str, Any]
    status: RunStatus
    iterations: list[IterationView]
    lineage_iteration: int
    lineage: list[Chain]
    table_iteration: int
    table_rows: list[PromptRow]
    table_total: int
    max_rows: int
    diff: Diff | None
    evals: list[dict[str, Any]]
    histogram_iterations: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # damage found while reading; shown at the top
