"""One iteration folder of a run directory, `iterations/<t:04d>/`: the only code that knows the names
and formats of the files in it. The loop, the CLI, the report, `eva eval` and the benchmarks read and
write an iteration through `IterationDir`, so a new artifact is one change in this file.

```
prompts.parquet     the whole buffer version t (iteration 0)  evolved.parquet   the children born in t
prompts.changes.parquet  the buffer rows iteration t added or updated (t >= 1)
estimate.parquet    rollouts of X_{t-1} (ScoredPrompt)        rollouts.parquet  rollouts of X'_t (solve)
sampled.json        ids of the prompts sampled for evolving   train_prompts.json  ids of X'_t
pairs.parquet       the preference pairs                      metrics.json      IterationMetrics
priority.parquet    run.mode online: the prioritized buffer (eva.online.buffer) at the commit
policy/             the policy pi_t (safetensors or adapter + tokenizer)
```

Iteration 0 holds the seed buffer, `train_prompts.json` (the seeds: X_0), `metrics.json` and the
initial policy. The buffer grows every iteration, so a later iteration stores only its changes:
version t is the newest whole version at or before t (iteration 0's, or any iteration's written by
an older eva) with the changes of each later iteration applied in order (`IterationDir.buffer`);
`eva export --what prompts` writes a whole version as one file. Every write is atomic
(`eva.atomic`); markers and the MANIFEST are `eva.checkpoint`'s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa

from eva.atomic import atomic_write_json
from eva.buffer import (
    PromptBuffer,
    load_pairs,
    load_prompts_table,
    read_changes,
    save_pairs,
    save_prompts_table,
)
from eva.online.buffer import PRIORITY_SCHEMA
from eva.tables import DataError, read_table, write_table
from eva.types import IterationMetrics, PreferencePair, Prompt, ScoredPrompt

PROMPTS = "prompts.parquet"
PROMPT_CHANGES = "prompts.changes.parquet"
EVOLVED = "evolved.parquet"
PAIRS = "pairs.parquet"
SAMPLED = "sampled.json"
TRAIN_PROMPTS = "train_prompts.json"
METRICS = "metrics.json"
POLICY = "policy"
# The trainer's fp32 master weights inside a policy folder saved in a rounding dtype (a subfolder:
# vLLM loads only the top level's *.safetensors); only the newest committed iteration keeps them.
POLICY_MASTERS = "master/master.safetensors"
# The online solver's optimizer and scheduler state (actors.trainer), next to the masters: what a
# resume continues from, pruned with them (only the newest committed iteration keeps it).
POLICY_OPTIMIZER = "master/optimizer.pt"
PRIORITY = "priority.parquet"  # run.mode online: the prioritized buffer (eva.online.buffer) at the commit
TRAIN_CHECKPOINTS = "train_checkpoints"  # step checkpoints of the round in progress (never committed)
# The two rollout stages write the same table: estimate scores X_{t-1}, solve scores X'_t.
SCORED = {"estimate": "estimate.parquet", "solve": "rollouts.parquet"}

SCORED_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("responses", pa.list_(pa.string())),
        ("rewards", pa.list_(pa.float64())),
        ("info", pa.float64()),
    ]
)


class IterationDir:
    """iterations/<t:04d> of a run directory (not created until something is written)."""

    def __init__(self, path: str | Path, t: int) -> None:
        self.path = Path(path)
        self.t = t

    def __repr__(self) -> str:
        return f"IterationDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def policy(self) -> Path:
        return self.path / POLICY

    @property
    def train_checkpoints(self) -> Path:
        """The training round's step checkpoints (actors.trainer), while the round is unfinished."""
        return self.path / TRAIN_CHECKPOINTS

    def drop_train_checkpoints(self) -> None:
        """Delete the step checkpoints once the round's policy is saved: they are never part of a commit."""
        shutil.rmtree(self.train_checkpoints, ignore_errors=True)

    def has_policy(self) -> bool:
        """A policy folder that a model loader can open (absent when pruned or never written)."""
        return (self.policy / "config.json").is_file()

    # the buffer and the prompts born in this iteration --------------------------------------------

    def sibling(self, t: int) -> IterationDir:
        """Iteration t of the same run directory."""
        return IterationDir(self.path.parent / f"{t:04d}", t)

    def buffer_files(self) -> list[Path]:
        """The files that make the buffer version t, oldest first: the newest whole version at or
        before t, then the changes of each later iteration up to t. DataError naming the first
        iteration (from t back) that holds neither."""
        files: list[Path] = []
        for k in range(self.t, -1, -1):
            folder = self.sibling(k).path
            if (folder / PROMPTS).is_file():
                return [folder / PROMPTS, *reversed(files)]
            if not (folder / PROMPT_CHANGES).is_file():
                needed = f" (buffer version {self.t} is built from it)" if k != self.t else ""
                raise DataError(f"{folder / PROMPTS}: file does not exist, nor {PROMPT_CHANGES}{needed}")
            files.append(folder / PROMPT_CHANGES)
        raise DataError(f"{self.path}: no buffer: no iteration up to {self.t} holds {PROMPTS}")

    def buffer(self) -> PromptBuffer:
        """The buffer version t (a missing or damaged file of the chain is a DataError naming it)."""
        first, *changes = self.buffer_files()
        buffer = PromptBuffer.load(first)
        for path in changes:
            buffer.apply_changes(read_changes(path), str(path))
        return buffer

    def write_buffer(self, buffer: PromptBuffer) -> None:
        """The whole buffer as version t (iteration 0, and tests: it does not depend on earlier ones)."""
        buffer.save(self.path / PROMPTS)

    def write_buffer_changes(self, buffer: PromptBuffer) -> int:
        """The rows of `buffer` added or updated since the version it was loaded as (t - 1), as
        version t's changes; then they count as stored. Returns how many rows were written."""
        buffer.save_changes(self.path / PROMPT_CHANGES)
        written = buffer.num_changed
        buffer.clear_changes()
        return written

    def has_evolved(self) -> bool:
        return (self.path / EVOLVED).is_file()

    def evolved(self) -> list[Prompt]:
        return load_prompts_table(self.path / EVOLVED)

    def write_evolved(self, prompts: list[Prompt]) -> None:
        save_prompts_table(self.path / EVOLVED, prompts)

    # rollouts --------------------------------------------------------------------------------------

    def has_scored(self, stage: str) -> bool:
        """estimate.parquet is absent in baseline runs and in iteration 0."""
        return (self.path / SCORED[stage]).is_file()

    def scored_table(self, stage: str, columns: list[str] | None = None) -> pa.Table:
        """The rollouts of `stage` as an Arrow table (SCORED_SCHEMA, or only `columns` of it: the
        report's histograms read `info` and never the responses)."""
        schema = SCORED_SCHEMA if columns is None else pa.schema([SCORED_SCHEMA.field(c) for c in columns])
        return read_table(self.path / SCORED[stage], schema)

    def scored(self, stage: str, buffer: PromptBuffer) -> list[ScoredPrompt]:
        """The rollouts of `stage` ("estimate" or "solve"); prompts are looked up in `buffer`."""
        rows = self.scored_table(stage).to_pylist()
        return [
            ScoredPrompt(buffer.get(r["prompt_id"]), tuple(r["responses"]), tuple(r["rewards"]), r["info"])
            for r in rows
        ]

    def write_scored(self, stage: str, scored: list[ScoredPrompt]) -> None:
        # Non-finite rewards are stored as they are (null would hide that the scorer failed).
        columns = {
            "prompt_id": [s.prompt.id for s in scored],
            "prompt": [s.prompt.text for s in scored],
            "responses": [list(s.responses) for s in scored],
            "rewards": [list(s.rewards) for s in scored],
            "info": [s.info for s in scored],
        }
        write_table(pa.Table.from_pydict(columns, schema=SCORED_SCHEMA), self.path / SCORED[stage])

    # id lists --------------------------------------------------------------------------------------

    def sampled_ids(self) -> list[str]:
        return self._ids(SAMPLED)

    def write_sampled_ids(self, ids: list[str]) -> None:
        atomic_write_json(self.path / SAMPLED, {"ids": list(ids)})

    def train_ids(self) -> list[str]:
        """The ids of X'_t, the prompts iteration t trained on (X_0: the seeds)."""
        return self._ids(TRAIN_PROMPTS)

    def has_train_ids(self) -> bool:
        return (self.path / TRAIN_PROMPTS).is_file()

    def write_train_ids(self, ids: list[str]) -> None:
        atomic_write_json(self.path / TRAIN_PROMPTS, {"ids": list(ids)})

    def _ids(self, name: str) -> list[str]:
        path = self.path / name
        try:
            ids = json.loads(path.read_text())["ids"]
        except FileNotFoundError:
            raise DataError(f"{path}: file does not exist") from None
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}: expected a JSON object with a list of prompt ids under 'ids'") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{path}: 'ids' must be a list of prompt-id strings")
        return ids

    # the online solver's prioritized buffer ---------------------------------------------------------

    def has_priority(self) -> bool:
        """Online runs' committed iterations >= 1 hold it; iteration 0 and offline runs do not."""
        return (self.path / PRIORITY).is_file()

    def priority_table(self) -> pa.Table:
        """The prioritized buffer as written at the commit (PRIORITY_SCHEMA; DataError naming the file)."""
        return read_table(self.path / PRIORITY, PRIORITY_SCHEMA)

    def write_priority(self, table: pa.Table) -> None:
        write_table(table, self.path / PRIORITY)

    # pairs and metrics -------------------------------------------------------------------------------

    def pairs(self) -> list[PreferencePair]:
        return load_pairs(self.path / PAIRS)

    def has_pairs(self) -> bool:
        """Iteration 0 holds only the seed buffer and the initial policy: no pairs."""
        return (self.path / PAIRS).is_file()

    def write_pairs(self, pairs: list[PreferencePair]) -> None:
        save_pairs(self.path / PAIRS, pairs)

    def has_metrics(self) -> bool:
        return (self.path / METRICS).is_file()

    def metrics(self) -> IterationMetrics:
        path = self.path / METRICS
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: file does not exist") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e}") from None
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return IterationMetrics.from_dict(data)
        except (TypeError, ValueError) as e:  # a required field missing, a section of the wrong type
            raise DataError(f"{path}: not the metrics of an iteration: {e}") from None

    def write_metrics(self, metrics: IterationMetrics) -> None:
        atomic_write_json(self.path / METRICS, metrics.to_dict())
