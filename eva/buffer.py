"""The prompt buffer: every prompt kept so far, its lineage and its latest estimate, column-wise.

One Python list or numpy array per column plus an id -> row dict, so a buffer of a million prompts
costs a few hundred MB and whole-column operations (sampling, mixing, saving) stay vectorized;
`Prompt` records are built only when asked for. Saved as Parquet with an explicit schema
(`BUFFER_SCHEMA`) that `datasets.load_dataset("parquet", ...)` opens as is.

Also here: seed prompt loading (JSONL, Parquet, a `datasets.save_to_disk` folder, builtin:seed) and
the schemas of an iteration's `evolved.parquet` and `pairs.parquet`; the Parquet reading and
writing itself is `eva.tables`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eva.hub import is_hub_name
from eva.tables import DataError, load_records, read_table, save_records, write_table
from eva.types import PreferencePair, Prompt, ScoredPrompt, prompt_id

BUILTIN_SEED = "builtin:seed"
# Longest seed prompt accepted, in characters (~25k tokens): far beyond any engine context here (the
# engines left-truncate a prompt to fit), so longer ones are a wrong column or a file pasted into a
# field; refused, with their count, rather than tokenized and stored in every iteration's buffer.
MAX_PROMPT_CHARS = 100_000

# Lineage: the columns of a Prompt record (also the schema of evolved.parquet).
PROMPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("parent_id", pa.string()),  # null for seeds
        ("root_id", pa.string()),
        ("depth", pa.int64()),
        ("operator", pa.string()),
        ("iteration", pa.int64()),  # born in
        ("meta", pa.string()),  # task-family problem as canonical JSON (eva.tasks); null for free text
    ]
)
# Per-prompt stats, updated by the estimate stage and by sampling/training.
STATS_SCHEMA = pa.schema(
    [
        ("rewards", pa.list_(pa.float64())),  # latest finite reward vector; [] before any estimate
        ("info", pa.float64()),  # null: no informativeness (never estimated, or < 2 finite rewards)
        ("mean_reward", pa.float64()),  # null: no finite reward
        ("n_estimates", pa.int64()),
        ("last_estimated", pa.int64()),  # iteration; -1 = never
        ("times_sampled", pa.int64()),
        ("times_trained", pa.int64()),
    ]
)
BUFFER_SCHEMA = pa.schema(list(PROMPT_SCHEMA) + list(STATS_SCHEMA))
# TRL's preference columns first (prompt, chosen, rejected), then what eva adds.
PAIR_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_id", pa.string()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
        ("margin", pa.float64()),
        ("iteration", pa.int64()),
    ]
)

_STR_COLUMNS = ("id", "text", "parent_id", "root_id", "operator", "meta")
# Columns added after runs were written with eva: read as null from older files.
OPTIONAL_COLUMNS = ("meta",)
# Numeric columns: dtype and the value of a prompt that was never estimated/sampled/trained.
# Float columns use nan for "none" in memory and null in Parquet.
_NUM_COLUMNS: dict[str, tuple[type, float]] = {
    "depth": (np.int64, 0),
    "iteration": (np.int64, 0),
    "info": (np.float64, math.nan),
    "mean_reward": (np.float64, math.nan),
    "n_estimates": (np.int64, 0),
    "last_estimated": (np.int64, -1),
    "times_sampled": (np.int64, 0),
    "times_trained": (np.int64, 0),
}
# The numeric columns that change after a prompt is added (depth and iteration are lineage).
_STATS_NUM = tuple(name for name in _NUM_COLUMNS if name in STATS_SCHEMA.names)


class PromptBuffer:
    """A versioned set of prompts with lineage and per-prompt stats (one version per iteration).

    Rows are never removed; `add` skips ids already present (ids are content hashes, so a prompt
    that comes back keeps its first lineage).

    The buffer remembers which rows were added or had their stats changed since it was loaded (or
    since `clear_changes`): an iteration stores only those (`changes_table`), and version t is the
    last full version before t with the changes of every later iteration applied (`apply_changes`),
    so a long run writes per iteration what the iteration did, not the whole growing buffer.
    """

    def __init__(self) -> None:
        self._str: dict[str, list[str | None]] = {name: [] for name in _STR_COLUMNS}
        self._rewards: list[Sequence[float]] = []
        self._num: dict[str, np.ndarray] = {name: np.empty(0, dtype) for name, (dtype, _) in _NUM_COLUMNS.items()}
        self._index: dict[str, int] = {}
        self._changed = np.zeros(0, dtype=bool)  # rows added or updated since load / clear_changes

    @classmethod
    def from_prompts(cls, prompts: Iterable[Prompt]) -> PromptBuffer:
        buffer = cls()
        buffer.add(prompts)
        return buffer

    # --- membership and records ----------------------------------------------------------------

    def add(self, prompts: Iterable[Prompt]) -> int:
        """Append prompts whose id is not in the buffer yet (first one wins); returns how many."""
        batch: dict[str, Prompt] = {}
        for p in prompts:
            if p.id not in self._index and p.id not in batch:
                batch[p.id] = p
        if not batch:
            return 0
        new = list(batch.values())
        for name in _STR_COLUMNS:
            self._str[name].extend(getattr(p, name) for p in new)
        self._rewards.extend(() for _ in new)
        for name, (dtype, default) in _NUM_COLUMNS.items():
            fresh: np.ndarray
            if name in ("depth", "iteration"):
                fresh = np.fromiter((getattr(p, name) for p in new), dtype, count=len(new))
            else:
                fresh = np.full(len(new), default, dtype)
            self._num[name] = np.concatenate([self._num[name], fresh])
        self._changed = np.concatenate([self._changed, np.ones(len(new), dtype=bool)])
        base = len(self._index)
        self._index.update((pid, base + j) for j, pid in enumerate(batch))
        return len(new)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, pid: object) -> bool:
        return pid in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._str["id"])  # type: ignore[arg-type]

    def _row(self, pid: str) -> int:
        try:
            return self._index[pid]
        except KeyError:
            raise KeyError(f"prompt {pid!r} is not in the buffer ({len(self)} prompts)") from None

    def _prompt_at(self, row: int) -> Prompt:
        s, n = self._str, self._num
        return Prompt(
            id=s["id"][row],  # type: ignore[arg-type]
            text=s["text"][row],  # type: ignore[arg-type]
            parent_id=s["parent_id"][row],
            root_id=s["root_id"][row],  # type: ignore[arg-type]
            depth=int(n["depth"][row]),
            operator=s["operator"][row],  # type: ignore[arg-type]
            iteration=int(n["iteration"][row]),
            meta=s["meta"][row],
        )

    def get(self, pid: str) -> Prompt:
        return self._prompt_at(self._row(pid))

    def prompts(self, ids: Iterable[str] | None = None) -> list[Prompt]:
        """Prompt records for `ids` (in that order), or for the whole buffer in insertion order."""
        rows = range(len(self)) if ids is None else (self._row(i) for i in ids)
        return [self._prompt_at(r) for r in rows]

    def ids(self, start: int = 0) -> list[str]:
        """Ids in insertion order, from row `start` on (rows are never removed: `ids(n)` are the
        prompts added since the buffer held n)."""
        return self._str["id"][start:]  # type: ignore[return-value]

    def texts(self, start: int = 0) -> list[str]:
        """Texts in insertion order, from row `start` on."""
        return self._str["text"][start:]  # type: ignore[return-value]

    # --- stats -----------------------------------------------------------------------------------

    def update_stats(self, scored: Sequence[ScoredPrompt], iteration: int) -> None:
        """Record one estimate per prompt: finite rewards, info, their mean; count the estimate."""
        rows = np.fromiter((self._row(sp.prompt.id) for sp in scored), np.int64, count=len(scored))
        infos = np.empty(len(scored))
        means = np.empty(len(scored))
        for j, sp in enumerate(scored):
            finite = tuple(r for r in sp.rewards if math.isfinite(r))
            self._rewards[rows[j]] = finite
            infos[j] = math.nan if sp.info is None else sp.info
            means[j] = sum(finite) / len(finite) if finite else math.nan
        self._num["info"][rows] = infos
        self._num["mean_reward"][rows] = means
        np.add.at(self._num["n_estimates"], rows, 1)  # add.at: a repeated id counts twice
        self._num["last_estimated"][rows] = iteration
        self._changed[rows] = True

    def mark_sampled(self, ids: Iterable[str]) -> None:
        """Count one draw for the creator (step 2) per id."""
        rows = self._rows(ids)
        np.add.at(self._num["times_sampled"], rows, 1)
        self._changed[rows] = True

    def mark_trained(self, ids: Iterable[str]) -> None:
        """Count one use as a training prompt (step 5/6) per id."""
        rows = self._rows(ids)
        np.add.at(self._num["times_trained"], rows, 1)
        self._changed[rows] = True

    def _rows(self, ids: Iterable[str]) -> np.ndarray:
        return np.array([self._row(i) for i in ids], dtype=np.int64)

    def stats(self, pid: str) -> dict[str, Any]:
        """rewards, info, mean_reward, n_estimates, last_estimated, times_sampled, times_trained."""
        row = self._row(pid)
        out: dict[str, Any] = {"rewards": list(self._rewards[row])}
        for name in STATS_SCHEMA.names[1:]:
            value = self._num[name][row].item()
            out[name] = None if isinstance(value, float) and math.isnan(value) else value
        return out

    def info_array(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """Informativeness as float64 (nan = none) for `ids` or the whole buffer: input to sampling."""
        info = self._num["info"]
        return info.copy() if ids is None else info[self._rows(ids)]

    # --- mixing and lineage ------------------------------------------------------------------------

    def mix(self, evolved_ids: Sequence[str], size: int, seed: int) -> list[str]:
        """Training prompts of step 4, `size` of them: the evolved ids first (at most `size`, in order,
        duplicates once), then a uniform sample of the other prompts of the buffer for the rest.

        The population stays at `size` whatever the creator produced: with too few children the
        buffer fills more of it, with none the mix is a plain buffer sample (clipped to what exists).
        Sampling is without replacement (numpy default_rng(seed)): the same inputs give the same list.
        """
        if size < 0:
            raise ValueError(f"mix size must be >= 0, got {size}")
        evolved = list(dict.fromkeys(evolved_ids))[:size]
        pool = np.ones(len(self), dtype=bool)
        pool[[self._row(i) for i in evolved]] = False
        candidates = np.flatnonzero(pool)
        rest = min(size - len(evolved), candidates.size)
        picked = np.random.default_rng(seed).choice(candidates, size=rest, replace=False)
        ids = self._str["id"]
        return evolved + [str(ids[r]) for r in picked.tolist()]

    def ancestry(self, pid: str) -> list[Prompt]:
        """The lineage chain from the seed root to `pid` (root first)."""
        chain = [self.get(pid)]
        while chain[-1].parent_id is not None:
            parent = chain[-1].parent_id
            if parent not in self._index:
                raise KeyError(f"ancestry of {pid!r}: parent {parent!r} of {chain[-1].id!r} is not in the buffer")
            if len(chain) > len(self):  # only a corrupted file could hold a cycle
                raise ValueError(f"ancestry of {pid!r}: lineage cycle through {parent!r}")
            chain.append(self.get(parent))
        return chain[::-1]

    def children(self, pid: str) -> list[Prompt]:
        """Direct rewrites of `pid`, in insertion order."""
        self._row(pid)
        return [self._prompt_at(r) for r, parent in enumerate(self._str["parent_id"]) if parent == pid]

    # --- persistence ---------------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """The buffer as a pyarrow Table with BUFFER_SCHEMA (nan stats become null)."""
        return self._table(np.arange(len(self)))

    def changes_table(self) -> pa.Table:
        """The rows added or updated since the buffer was loaded or `clear_changes` ran, in buffer
        order, whole (lineage and current stats): what `apply_changes` needs to rebuild this version."""
        return self._table(np.flatnonzero(self._changed))

    @property
    def num_changed(self) -> int:
        return int(self._changed.sum())

    def clear_changes(self) -> None:
        """This version is stored: later changes are counted from here."""
        self._changed[:] = False

    def _table(self, rows: np.ndarray) -> pa.Table:
        """`rows` (ascending) as a BUFFER_SCHEMA table; all of them without copying the columns first."""
        whole = len(rows) == len(self)
        cols: dict[str, pa.Array] = {
            name: pa.array(values if whole else [values[r] for r in rows.tolist()], pa.string())
            for name, values in self._str.items()
        }
        cols["rewards"] = _list_array(self._rewards if whole else [self._rewards[r] for r in rows.tolist()])
        for name, column in self._num.items():
            picked = column if whole else column[rows]
            mask = np.isnan(picked) if picked.dtype.kind == "f" else None
            cols[name] = pa.array(picked, BUFFER_SCHEMA.field(name).type, mask=mask)
        return pa.Table.from_arrays([cols[n] for n in BUFFER_SCHEMA.names], schema=BUFFER_SCHEMA)

    def apply_changes(self, table: pa.Table, source: str = "changes") -> None:
        """Apply a `changes_table` of a later version: rows with a new id are appended (in table
        order), rows with a known id take the table's stats (lineage is immutable: a row that
        disagrees with the buffer's lineage is a DataError naming `source`). The rows count as
        unchanged afterwards: they are stored."""
        update = PromptBuffer._from_table(table, source)
        ids: list[str] = update._str["id"]  # type: ignore[assignment]
        known = [j for j, pid in enumerate(ids) if pid in self._index]
        at = [self._index[ids[j]] for j in known]
        for j, row in zip(known, at, strict=True):
            for name in _STR_COLUMNS:
                if self._str[name][row] != update._str[name][j]:
                    raise DataError(f"{source}: prompt {ids[j]} has a different {name!r} than in the earlier version")
            self._rewards[row] = update._rewards[j]
        for name in _STATS_NUM:
            self._num[name][at] = update._num[name][known]
        fresh = [j for j, pid in enumerate(ids) if pid not in self._index]
        if fresh:
            base = len(self)
            for name in _STR_COLUMNS:
                self._str[name].extend(update._str[name][j] for j in fresh)
            self._rewards.extend(update._rewards[j] for j in fresh)
            for name in _NUM_COLUMNS:
                self._num[name] = np.concatenate([self._num[name], update._num[name][fresh]])
            self._changed = np.concatenate([self._changed, np.zeros(len(fresh), dtype=bool)])
            self._index.update((ids[j], base + k) for k, j in enumerate(fresh))

    def save(self, path: str | Path) -> None:
        """Write the buffer as Parquet, atomically."""
        write_table(self.to_table(), path)

    def save_changes(self, path: str | Path) -> None:
        """Write `changes_table` as Parquet, atomically (the caller clears the changes once stored)."""
        write_table(self.changes_table(), path)

    @classmethod
    def load(cls, path: str | Path) -> PromptBuffer:
        """Read a buffer written by `save` (extra columns are ignored, missing ones are an error)."""
        return cls._from_table(read_changes(path), str(path))

    @classmethod
    def _from_table(cls, table: pa.Table, path: str) -> PromptBuffer:
        buffer = cls()
        for name in _STR_COLUMNS:
            buffer._str[name] = table.column(name).to_pylist()
        buffer._rewards = _list_values(table.column("rewards"))
        for name, (dtype, default) in _NUM_COLUMNS.items():
            column = table.column(name).fill_null(default)
            buffer._num[name] = column.to_numpy().astype(dtype)
        buffer._index = {pid: row for row, pid in enumerate(buffer._str["id"])}  # type: ignore[misc]
        if len(buffer._index) != table.num_rows:
            raise DataError(f"{path}: duplicate prompt ids ({table.num_rows - len(buffer._index)} rows)")
        buffer._changed = np.zeros(table.num_rows, dtype=bool)
        return buffer


def read_changes(path: str | Path) -> pa.Table:
    """A buffer file (a whole version, or the changes of one iteration) as a BUFFER_SCHEMA table."""
    return read_table(path, BUFFER_SCHEMA, optional=OPTIONAL_COLUMNS)


def _list_array(values: Sequence[Sequence[float]]) -> pa.Array:
    """list<double> array built from flat numpy values + offsets (no per-element Python objects)."""
    lengths = np.fromiter(map(len, values), np.int32, count=len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((x for v in values for x in v), np.float64, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _list_values(column: pa.ChunkedArray) -> list[Sequence[float]]:
    """list<double> column -> per-row tuples (a null row becomes empty)."""
    if column.null_count:  # rare (files written by other tools): the simple path
        return [tuple(v) if v is not None else () for v in column.to_pylist()]
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().tolist()  # absolute positions into array.values
    flat = array.values.to_numpy(zero_copy_only=False).tolist()
    return [tuple(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


# --- an iteration's tables (eva.tables writes and reads them) -----------------------------------------


def save_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> None:
    """pairs.parquet: prompt, chosen, rejected (TRL's columns) + prompt_id, rewards, margin, iteration."""
    save_records(path, pairs, PAIR_SCHEMA)


def load_pairs(path: str | Path) -> list[PreferencePair]:
    return load_records(path, PreferencePair, PAIR_SCHEMA)


def save_prompts_table(path: str | Path, prompts: Sequence[Prompt]) -> None:
    """A list of prompts with their lineage (evolved.parquet): the buffer's lineage columns."""
    save_records(path, prompts, PROMPT_SCHEMA)


def load_prompts_table(path: str | Path) -> list[Prompt]:
    return load_records(path, Prompt, PROMPT_SCHEMA, optional=OPTIONAL_COLUMNS)


# --- seed prompts -----------------------------------------------------------------------------------


def load_seed_prompts(
    path: str | Any,
    column: str = "prompt",
    limit: int | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
    streaming: bool = False,
) -> list[Prompt]:
    """Seed prompts from JSONL, Parquet, a `datasets.save_to_disk` folder, a local dataset repository
    folder (data files `datasets.load_dataset` reads), a Hugging Face Hub dataset name (`org/name`:
    `datasets.load_dataset(path, name=subset, split=split, streaming=streaming)`, so offline it loads
    from the datasets cache), "builtin:seed", or an in-memory `datasets.Dataset` / `DatasetDict`.

    A dataset's `split` defaults to train, or its only split. The column holds either the prompt
    text or chat messages (a list of {role, content}): the last user turn is the prompt.

    Texts are stripped; empty texts and exact duplicates (same normalized text, i.e. same id) are
    dropped, keeping the first; then the first `limit` are kept (reading stops there). Raises
    DataError naming the file, the line (JSONL, 1-based) or row (0-based) and the problem: a file
    that is not UTF-8, a text with a NUL character or a lone surrogate (they break tokenizers and
    Parquet), texts over MAX_PROMPT_CHARS (all of them counted; none is truncated); also when no
    prompt is left.
    """
    source, values = _column_values(path, column, DatasetSpec(split, subset, streaming))
    seen: dict[str, Prompt] = {}
    too_long: list[tuple[str, int]] = []
    for where, value in values:
        if isinstance(value, list):  # chat messages
            value = _last_user_turn(value, f"{source}: {where}: {column!r}")
        if not isinstance(value, str):
            raise DataError(
                f"{source}: {where}: {column!r} is {type(value).__name__} {value!r}, expected a string or chat "
                "messages (a list of {role, content})"
            )
        _check_text(value, f"{source}: {where}: {column!r}")
        text = value.strip()
        if len(text) > MAX_PROMPT_CHARS:
            too_long.append((where, len(text)))
        elif text and prompt_id(text) not in seen:
            seen[prompt_id(text)] = Prompt.seed(text)
            if limit is not None and len(seen) >= limit:
                break
    if too_long:
        where, n = max(too_long, key=lambda w: w[1])
        raise DataError(
            f"{source}: {len(too_long)} prompt(s) longer than {MAX_PROMPT_CHARS:,} characters (the longest, "
            f"{n:,} characters, "
            f"at {where}; the first at {too_long[0][0]}): is {column!r} the prompt column? Shorten or drop them"
        )
    if not seen:
        raise DataError(f"{source}: no seed prompts in column {column!r} (empty, or every text blank)")
    return list(seen.values())


def _check_text(text: str, where: str) -> None:
    """DataError for characters no prompt may hold: NUL, and lone surrogates (a JSON escape such as
    \\ud800 without its pair decodes to one; it cannot be written as UTF-8)."""
    if "\x00" in text:
        raise DataError(
            f"{where}: the text holds a NUL character (U+0000) at position {text.index(chr(0))}: binary data, "
            f"not a prompt"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where}: the text holds a lone surrogate {text[e.start]!r} at position {e.start} (half of a "
            f"UTF-16 pair, e.g. an escape like \\ud83d without its partner): not valid Unicode text"
        ) from None


def _decode_lines(lines: Iterable[bytes], source: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each line of a file read as bytes, decoded one at a time (a
    file is never read whole: loading stops at `limit`); DataError naming the line and the byte
    offset in the file of the first byte that is not UTF-8."""
    offset = 0
    for number, raw in enumerate(lines, start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{source}: line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {offset + e.start}): "
                "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
            ) from None
        offset += len(raw)


@dataclass(frozen=True)
class DatasetSpec:
    """Which part of a dataset to read (datasets' `split`, `name` and `streaming`)."""

    split: str | None = None
    subset: str | None = None
    streaming: bool = False


def _last_user_turn(messages: list, where: str) -> str:
    """The content of the last `user` message of a chat (a list of {role, content}); content given as
    parts ([{type: text, text}, ...]) is joined. DataError naming `where` when there is no user turn."""
    for message in reversed(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{where}: a list, but not chat messages ({{role, content}} each): {message!r}")
        if message["role"] == "user":
            content = message.get("content")
            if isinstance(content, list):  # multimodal parts: keep the text
                content = "\n".join(part.get("text") or "" for part in content if isinstance(part, dict))
            if not isinstance(content, str):
                raise DataError(f"{where}: the last user turn has no text content: {message!r}")
            return content
    raise DataError(f"{where}: chat messages without a user turn (roles: {[m.get('role') for m in messages]})")


def _column_values(path: str, column: str, spec: DatasetSpec = DatasetSpec()) -> tuple[str, Iterator[tuple[str, Any]]]:
    """(source name for messages, iterator of (location, value)) for one column of a seed source."""
    if not isinstance(path, (str, os.PathLike)):
        import datasets  # heavy import: only for this source

        if not isinstance(path, (datasets.Dataset, datasets.DatasetDict)):
            raise DataError(
                f"seed prompts: expected a path, {BUILTIN_SEED} or a datasets.Dataset, got {type(path).__name__}"
            )
        return "in-memory dataset", _dataset_column(path, "in-memory dataset", column, spec.split)
    path = str(path)
    if path.startswith("builtin:"):
        if path != BUILTIN_SEED:
            raise DataError(f"{path}: unknown builtin prompt set; available: {BUILTIN_SEED}")
        packaged = resources.files("eva.data") / "seed_prompts.jsonl"
        if not packaged.is_file():
            raise DataError(f"{path}: the packaged file eva/data/seed_prompts.jsonl is missing (broken install)")
        return path, _jsonl_values(_lines(packaged.open("rb")), path, column)
    if is_hub_name(path):
        return path, _hub_values(path, column, spec)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file does not exist")
    if p.is_dir():
        return str(p), _dataset_values(p, column, spec)
    if p.suffix == ".jsonl":
        return str(p), _jsonl_values(_lines(p.open("rb")), str(p), column)
    if p.suffix == ".parquet":
        return str(p), _parquet_values(p, column)
    raise DataError(
        f"{p}: unknown file type {p.suffix!r}; expected .jsonl, .parquet, a datasets folder or {BUILTIN_SEED}"
    )


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary file, closed when done (or when the reader stops early)."""
    with f:
        yield from f


def _jsonl_values(lines: Iterable[bytes], source: str, column: str) -> Iterator[tuple[str, Any]]:
    # Lines end at \n only (\r\n too): a binary file splits there alone, where str.splitlines would
    # also split at U+2028, U+0085, \x1c ..., which JSON allows raw inside a string, and would cut such
    # a record in two.
    for number, line in _decode_lines(lines, source):
        line = line.removesuffix("\n").removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: line {number}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{source}: line {number}: expected a JSON object, got {type(record).__name__}")
        if column not in record:
            raise DataError(f"{source}: line {number}: no key {column!r}; keys here: {sorted(record)}")
        yield f"line {number}", record[column]


def _parquet_values(path: Path, column: str) -> Iterator[tuple[str, Any]]:
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    if column not in names:
        raise DataError(f"{path}: no column {column!r}; available columns: {names}")
    return _parquet_rows(path, column)


def _parquet_rows(path: Path, column: str) -> Iterator[tuple[str, Any]]:
    """The column's values batch by batch (loading stops reading at `limit`)."""
    row = 0
    try:
        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=4096, columns=[column]):
                for value in batch.column(0).to_pylist():
                    yield f"row {row}", value
                    row += 1
    except (pa.ArrowException, OSError) as e:  # a valid footer over damaged data pages
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None


def _dataset_values(path: Path, column: str, spec: DatasetSpec) -> Iterator[tuple[str, Any]]:
    """A `save_to_disk` folder, else a local dataset repository (data files, maybe a README's configs)."""
    import datasets  # heavy import: only for this source

    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return _dataset_column(datasets.load_from_disk(str(path)), str(path), column, spec.split)
    return _hub_values(str(path), column, spec)


def _hub_values(path: str, column: str, spec: DatasetSpec) -> Iterator[tuple[str, Any]]:
    """`datasets.load_dataset` on a Hub name or a local dataset repository folder; its failures (no
    such dataset, offline and not cached, an unknown split or subset) as one DataError naming it."""
    import datasets  # heavy import: only for this source

    asked = ", ".join(f"{k}={v!r}" for k, v in (("subset", spec.subset), ("split", spec.split)) if v is not None)
    try:
        ds = datasets.load_dataset(path, name=spec.subset, split=spec.split, streaming=spec.streaming)
    except Exception as e:  # datasets raises many types (ValueError, FileNotFoundError, ConnectionError, ...)
        local = Path(path).is_dir()
        offline = (
            " (HF_HUB_OFFLINE is set: only datasets already in the datasets cache load)"
            if datasets.config.HF_HUB_OFFLINE and not local
            else ""
        )
        what = (
            "a folder, but not one written by datasets' save_to_disk (no state.json or dataset_dict.json)"
            if local
            else "not a local file or folder (a Hub dataset name)"
        )
        call = f"datasets.load_dataset({path!r}{', ' + asked if asked else ''})"
        raise DataError(f"{path}: {what}, and {call} failed{offline}: {type(e).__name__}: {e}") from None
    return _dataset_column(ds, f"{path}{f' ({asked})' if asked else ''}", column, spec.split)


def _dataset_column(ds: Any, source: str, column: str, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """One column of a (streaming) datasets.Dataset, or of the `split` (default: train, or the only
    split) of a DatasetDict."""
    if not hasattr(ds, "features"):  # a DatasetDict
        splits = list(ds)
        if split is not None and split not in ds:
            raise DataError(f"{source}: no split {split!r}; splits: {splits}")
        if split is None and "train" not in ds and len(splits) != 1:
            raise DataError(f"{source}: a DatasetDict with splits {splits}; expected a 'train' split or a single split")
        ds = ds[split or ("train" if "train" in ds else splits[0])]
    names = ds.column_names
    if names is not None and column not in names:
        raise DataError(f"{source}: no column {column!r}; available columns: {names}")
    if names is None:  # a streaming dataset whose features are unknown until read
        return _streamed_rows(ds, source, column)
    return _dataset_rows(ds.select_columns([column]), column)


def _streamed_rows(ds: Any, source: str, column: str) -> Iterator[tuple[str, Any]]:
    for row, record in enumerate(ds):
        if column not in record:
            raise DataError(f"{source}: row {row}: no column {column!r}; columns here: {sorted(record)}")
        yield f"row {row}", record[column]


def _dataset_rows(ds: Any, column: str) -> Iterator[tuple[str, Any]]:
    """Batch by batch (ds.iter honours an indices mapping, unlike ds.data; loading stops at `limit`)."""
    row = 0
    for batch in ds.iter(batch_size=4096):
        for value in batch[column]:
            yield f"row {row}", value
            row += 1
