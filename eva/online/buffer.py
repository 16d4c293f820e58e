"""The prioritized generative buffer: which prompts each minibatch of the online solver trains on.

Two pools. Seeds: the seed prompts, given at the start (`Prompt.is_seed`). Children: the prompts
the creator evolves every K steps, added with `add`, or with `admit` when admission is gated.

Priority. A prompt's priority is the informativeness (`eva.metrics`, `settings.metric`: `maxmean`,
the paper's online choice, or `learnability` for task families) of the group of n responses it got
the last time it was drawn and scored: `record(scored, step)` refreshes it, with no extra
generation. A group without informativeness (< 2 finite rewards) records priority 0.

Sampling, `sample(step, size)`; every random choice comes from
`numpy.random.default_rng(derive_seed(settings.seed, "online-minibatch", step))`, so the draw at a
step is a function of the buffer's state and the step only: a buffer restored with `from_table`
draws what the original would have drawn, and no generator state needs saving.
1. Warm-up: while `step < warmup_steps` every prompt comes from the seeds.
2. After it, `round(seed_ratio * size)` (halves up) come from the seeds and the rest from the
   admitted children; when one pool is short, the other fills in, and a minibatch is smaller than
   `size` only when both together are. Seeds first, then children, each in draw order.
3. Seeds are drawn uniformly without replacement: the baseline's distribution (online uniform).
4. Children are drawn without replacement by priority. The effective priority at step s of a child
   last scored at step t is `e = max(priority, 0) * decay ** max(s - t, 0)`: staleness decay, a
   child not drawn for a while loses its claim until it is scored again. A child never scored yet
   gets the largest `e` among the scored children (1.0 if none is scored): new children are tried
   soon, as prioritized experience replay treats new transitions. Weight `w = (e + eps) ** alpha`;
   each draw picks a child with probability w / (sum of w over the children not drawn yet). `alpha`
   is the temperature (0: uniform, 1: proportional to e); `eps` > 0 is a floor so that a priority of
   0 (a prompt the policy always solves or always fails) is drawn rarely, never starved.

Admission gating (`admit_threshold`, as ACCEL does for environments): a child is scored once before
it may be drawn and is admitted only if its informativeness is strictly above the threshold; the
measured group is its first priority. Rejected children stay in the buffer (not drawable) so that
the creator's duplicate check knows them and the table records them.

State lives in plain columns and round-trips through a pyarrow table (`to_table` / `from_table`,
`PRIORITY_SCHEMA`); the settings are the run's config and are passed in again on restore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from eva.buffer import PROMPT_SCHEMA
from eva.metrics import BATCH_ONLY, check_metric, informativeness
from eva.sampling import draw_weighted
from eva.seeding import derive_seed
from eva.tables import DataError
from eva.types import FilterReport, Prompt, ScoredPrompt

PRIORITY_SCHEMA = pa.schema(
    list(PROMPT_SCHEMA)
    + [
        ("priority", pa.float64()),  # informativeness of the last scored group; null = never scored
        ("last_scored", pa.int64()),  # step of that group; -1 = never
        ("times_scored", pa.int64()),
        ("admitted", pa.bool_()),  # False: a child that failed admission gating (never drawn)
    ]
)
ADMIT_REASONS: tuple[str, ...] = ("duplicate", "no_info", "below_threshold")
_PROMPT_FIELDS = tuple(PROMPT_SCHEMA.names)


@dataclass(frozen=True)
class PrioritySettings:
    """How the buffer prioritizes and mixes (the module docstring gives the formulas)."""

    seed: int  # the run seed: every draw derives its generator from it and the step
    metric: str = "maxmean"  # informativeness of a group = priority (eva.metrics, per-prompt only)
    decay: float = 0.95  # staleness decay per step since the prompt was last scored, in (0, 1]
    alpha: float = 1.0  # temperature exponent of the weights, >= 0 (0 = uniform)
    eps: float = 0.01  # floor added to every effective priority, > 0
    seed_ratio: float = 0.2  # share of a minibatch drawn from the seed prompts after the warm-up
    warmup_steps: int = 0  # steps that draw from the seeds only
    admit_threshold: float | None = None  # children need informativeness above this; None: no gating

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if self.metric in BATCH_ONLY:
            raise ValueError(
                f"metric {self.metric!r} is normalized per batch, so priorities of different steps "
                "would not compare; use a per-prompt metric"
            )
        checks = [
            ("decay", 0 < self.decay <= 1, "in (0, 1]"),
            ("alpha", self.alpha >= 0, ">= 0"),
            ("eps", self.eps > 0, "> 0 (a floor, so that priority 0 is not starved)"),
            ("seed_ratio", 0 <= self.seed_ratio <= 1, "in [0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"priority buffer: {name} must be {expected}, got {getattr(self, name)}")


class PriorityBuffer:
    """Seed prompts and evolved children with priorities; rows are kept in insertion order."""

    def __init__(self, settings: PrioritySettings, seeds: Iterable[Prompt] = ()) -> None:
        self.settings = settings
        self._prompts: list[Prompt] = []
        self._index: dict[str, int] = {}
        self._priority = np.empty(0)  # nan = never scored
        self._last = np.empty(0, np.int64)
        self._times = np.empty(0, np.int64)
        self._admitted = np.empty(0, bool)
        self._is_seed = np.empty(0, bool)
        unique: dict[str, Prompt] = {}
        for p in seeds:
            unique.setdefault(p.id, p)  # the first of equal ids wins, as everywhere in eva
        seeds = list(unique.values())
        children = [p.id for p in seeds if not p.is_seed]
        if children:
            raise ValueError(f"seed prompts must be seeds (no parent); {len(children)} are not, e.g. {children[0]}")
        self._append(seeds, [True] * len(seeds))

    def _append(
        self,
        prompts: Sequence[Prompt],
        admitted: Sequence[bool],
        priority: Sequence[float] | None = None,
        step: int = -1,
    ) -> None:
        """New rows (ids not in the buffer), never scored unless `priority` gives their first score at `step`."""
        n = len(prompts)
        base = len(self._prompts)
        self._prompts.extend(prompts)
        self._index.update((p.id, base + j) for j, p in enumerate(prompts))
        scored = priority is not None
        fresh = np.array(priority, dtype=np.float64) if scored else np.full(n, math.nan)
        self._priority = np.concatenate([self._priority, fresh])
        self._last = np.concatenate([self._last, np.full(n, step if scored else -1, np.int64)])
        self._times = np.concatenate([self._times, np.full(n, int(scored), np.int64)])
        self._admitted = np.concatenate([self._admitted, np.array(admitted, dtype=bool).reshape(n)])
        self._is_seed = np.concatenate([self._is_seed, np.fromiter((p.is_seed for p in prompts), bool, count=n)])

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, pid: object) -> bool:
        return pid in self._index

    def get(self, pid: str) -> Prompt:
        return self._prompts[self._row(pid)]

    def _row(self, pid: str) -> int:
        try:
            return self._index[pid]
        except KeyError:
            raise KeyError(f"prompt {pid!r} is not in the priority buffer ({len(self)} prompts)") from None

    # --- children in, scores in -------------------------------------------------------------------

    def add(self, children: Iterable[Prompt]) -> int:
        """Add children without scoring them (no gating): drawable at once, at the top priority
        until first scored. Ids already present are skipped (first lineage wins); returns how many."""
        if self.settings.admit_threshold is not None:
            raise ValueError("admission gating is on (admit_threshold): score the children once and call admit()")
        fresh = self._new(children)
        self._append(fresh, [True] * len(fresh))
        return len(fresh)

    def admit(self, scored: Sequence[ScoredPrompt], step: int) -> FilterReport:
        """Add children scored once at `step`; their informativeness becomes their first priority.

        With `admit_threshold` set, only children whose informativeness is strictly above it are
        drawable; the others are kept as not admitted: `no_info` (< 2 finite rewards) or
        `below_threshold`. Without it every new child is admitted (no informativeness = priority 0).
        Children already in the buffer are dropped as `duplicate`.
        """
        threshold = self.settings.admit_threshold
        dropped = dict.fromkeys(ADMIT_REASONS, 0)
        rewards: dict[str, tuple[float, ...]] = {}
        for sp in scored:
            rewards.setdefault(sp.prompt.id, sp.rewards)  # the first of equal ids, as _new keeps
        fresh = self._new(sp.prompt for sp in scored)
        dropped["duplicate"] = len(scored) - len(fresh)
        infos = [informativeness(rewards[p.id], self.settings.metric) for p in fresh]
        admitted = [threshold is None or (info is not None and info > threshold) for info in infos]
        for info, ok in zip(infos, admitted, strict=True):
            if not ok:
                dropped["no_info" if info is None else "below_threshold"] += 1
        self._append(fresh, admitted, [0.0 if info is None else info for info in infos], step)
        return FilterReport(kept=sum(admitted), dropped=dropped)

    def _new(self, prompts: Iterable[Prompt]) -> list[Prompt]:
        """The prompts whose id is neither in the buffer nor earlier in `prompts`; seeds refused."""
        out: dict[str, Prompt] = {}
        for p in prompts:
            if p.is_seed:
                raise ValueError(f"prompt {p.id} is a seed, not a child: seeds are given when the buffer is built")
            if p.id not in self._index:
                out.setdefault(p.id, p)
        return list(out.values())

    def record(self, scored: Sequence[ScoredPrompt], step: int) -> None:
        """Refresh the priority of every drawn prompt from the group it got at `step`."""
        for sp in scored:
            row = self._row(sp.prompt.id)
            info = informativeness(sp.rewards, self.settings.metric)
            self._priority[row] = 0.0 if info is None else info
            self._last[row] = step
            self._times[row] += 1

    # --- sampling ----------------------------------------------------------------------------------

    def priority(self, pid: str, step: int) -> float | None:
        """The decayed priority e of one prompt at `step` (None: never scored)."""
        row = self._row(pid)
        if math.isnan(self._priority[row]):
            return None
        return float(self._decayed(np.array([row]), step)[0])

    def _decayed(self, rows: np.ndarray, step: int) -> np.ndarray:
        """e = max(priority, 0) * decay ** max(step - last_scored, 0) (nan stays nan: never scored)."""
        age = np.maximum(step - self._last[rows], 0)
        return np.maximum(self._priority[rows], 0.0) * self.settings.decay**age

    def _weights(self, rows: np.ndarray, step: int) -> np.ndarray:
        """Sampling weights (e + eps) ** alpha of the rows (never scored: e = the largest scored e)."""
        e = self._decayed(rows, step)
        unscored = np.isnan(e)
        e[unscored] = e[~unscored].max() if (~unscored).any() else 1.0
        return (e + self.settings.eps) ** self.settings.alpha

    def sample(self, step: int, size: int) -> list[Prompt]:
        """The prompts of the minibatch of `step`: seeds first, then children (module docstring)."""
        if size < 0:
            raise ValueError(f"minibatch size must be >= 0, got {size}")
        s = self.settings
        seeds = np.flatnonzero(self._is_seed)
        children = np.flatnonzero(~self._is_seed & self._admitted)
        if step < s.warmup_steps:
            children = children[:0]
        want_seeds = math.floor(round(s.seed_ratio * size, 9) + 0.5)
        n_children = min(size - want_seeds, children.size)
        n_seeds = min(size - n_children, seeds.size)
        n_children = min(size - n_seeds, children.size)
        rng = np.random.default_rng(derive_seed(s.seed, "online-minibatch", step))
        rows = rng.choice(seeds, size=n_seeds, replace=False).tolist()
        rows += children[draw_weighted(self._weights(children, step), n_children, rng)].tolist()
        return [self._prompts[r] for r in rows]

    # --- persistence -------------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """The whole state as a PRIORITY_SCHEMA table, rows in insertion order (nan priority = null)."""
        cols = {name: [getattr(p, name) for p in self._prompts] for name in _PROMPT_FIELDS}
        arrays = [pa.array(cols[name], PROMPT_SCHEMA.field(name).type) for name in _PROMPT_FIELDS]
        arrays += [
            pa.array(self._priority, pa.float64(), mask=np.isnan(self._priority)),
            pa.array(self._last, pa.int64()),
            pa.array(self._times, pa.int64()),
            pa.array(self._admitted, pa.bool_()),
        ]
        return pa.Table.from_arrays(arrays, schema=PRIORITY_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table, settings: PrioritySettings, source: str = "priority table") -> PriorityBuffer:
        """Rebuild a buffer from `to_table`'s output (e.g. read back from Parquet); DataError names `source`."""
        missing = [n for n in PRIORITY_SCHEMA.names if n not in table.column_names]
        if missing:
            raise DataError(f"{source}: missing columns {missing}; it has {table.column_names}")
        try:
            table = table.select(PRIORITY_SCHEMA.names).cast(PRIORITY_SCHEMA)
        except (pa.ArrowException, ValueError) as e:
            raise DataError(f"{source}: columns do not match {PRIORITY_SCHEMA}: {e}") from None
        rows = table.select(list(_PROMPT_FIELDS)).to_pylist()
        buffer = cls(settings)
        buffer._prompts = [Prompt(**row) for row in rows]
        buffer._index = {p.id: j for j, p in enumerate(buffer._prompts)}
        if len(buffer._index) != len(rows):
            raise DataError(f"{source}: duplicate prompt ids ({len(rows) - len(buffer._index)} rows)")
        buffer._priority = table.column("priority").to_numpy(zero_copy_only=False).astype(np.float64)
        buffer._last = table.column("last_scored").fill_null(-1).to_numpy().astype(np.int64)
        buffer._times = table.column("times_scored").fill_null(0).to_numpy().astype(np.int64)
        buffer._admitted = table.column("admitted").fill_null(True).to_numpy(zero_copy_only=False).astype(bool)
        buffer._is_seed = np.array([p.is_seed for p in buffer._prompts], dtype=bool)
        return buffer
