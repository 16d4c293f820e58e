"""eva.iteration: every artifact of an iteration folder reads back what was written, partial reads
read only what they name, and a damaged metrics.json is a DataError naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from eva.buffer import PromptBuffer
from eva.iteration import METRICS, IterationDir
from eva.tables import DataError
from eva.types import IterationMetrics, PreferencePair, Prompt, ScoredPrompt, Timing


def _folder(tmp_path: Path) -> tuple[IterationDir, PromptBuffer, list[ScoredPrompt]]:
    it = IterationDir(tmp_path / "iterations" / "0001", 1)
    seeds = [Prompt.seed(f"Explain topic {i}.") for i in range(3)]
    buffer = PromptBuffer.from_prompts(seeds)
    scored = [ScoredPrompt(p, ("a", "b"), (0.25, math.inf), 0.5 * i) for i, p in enumerate(seeds)]
    return it, buffer, scored


def test_every_artifact_round_trips(tmp_path: Path) -> None:
    it, buffer, scored = _folder(tmp_path)
    assert not (
        it.has_metrics() or it.has_pairs() or it.has_train_ids() or it.has_scored("estimate") or it.has_policy()
    )
    child = buffer.prompts()[0].child("Explain topic 0 with an example.", "deepen", 1)
    buffer.add([child])
    pairs = [PreferencePair(child.id, child.text, "good", "bad", 0.9, 0.1, 1)]
    metrics = IterationMetrics(
        iteration=1, num_pairs=1, buffer_size=4, timing=Timing(wall_s=2.0, busy_by_kind={"train": 1.5})
    )
    it.write_buffer(buffer)
    it.write_evolved([child])
    it.write_scored("estimate", scored)
    it.write_sampled_ids([scored[0].prompt.id])
    it.write_train_ids([child.id])
    it.write_pairs(pairs)
    it.write_metrics(metrics)
    assert it.buffer().ids() == buffer.ids() and it.evolved() == [child]
    assert it.scored("estimate", buffer) == scored  # the non-finite reward is kept, not nulled
    assert it.sampled_ids() == [scored[0].prompt.id] and it.train_ids() == [child.id]
    assert it.pairs() == pairs and it.metrics() == metrics
    assert (
        it.has_metrics()
        and it.has_pairs()
        and it.has_train_ids()
        and it.has_scored("estimate")
        and not it.has_scored("solve")
    )


def test_partial_reads_return_only_the_named_columns_typed(tmp_path: Path) -> None:
    it, buffer, scored = _folder(tmp_path)
    it.write_scored("solve", scored)
    info = it.scored_table("solve", ["info"])
    assert info.column_names == ["info"] and info.column("info").to_pylist() == [0.0, 0.5, 1.0]
    assert it.scored_table("solve").column_names == ["prompt_id", "prompt", "responses", "rewards", "info"]


def test_old_metrics_layout_with_an_extra_dict_is_read(tmp_path: Path) -> None:
    it, _, _ = _folder(tmp_path)
    it.path.mkdir(parents=True)
    old = {
        "iteration": 1,
        "num_pairs": 3,
        "extra": {
            "buffer_size": 7,
            "wall_s": 10.0,
            "busy_s": 8.0,
            "overhead_s": 2.0,
            "overhead_share": 0.2,
            "busy_generate_s": 5.0,
            "busy_train_s": 3.0,
            "sync_s": 0.1,
        },
    }
    it.file(METRICS).write_text(json.dumps(old))
    m = it.metrics()
    assert (m.num_pairs, m.buffer_size) == (3, 7)
    assert m.timing == Timing(
        wall_s=10.0,
        busy_s=8.0,
        overhead_s=2.0,
        overhead_share=0.2,
        busy_by_kind={"generate": 5.0, "train": 3.0},
        sync_s=0.1,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"num_pairs": 2}', "not the metrics of an iteration"),
        ('{"iteration": 1, "timing": 5}', "not the metrics of an iteration"),
    ],
)
def test_a_damaged_metrics_file_is_a_data_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    it, _, _ = _folder(tmp_path)
    it.path.mkdir(parents=True)
    it.file(METRICS).write_text(text)
    with pytest.raises(DataError, match=f"0001/{METRICS}: {message}"):
        it.metrics()


def test_missing_files_are_data_errors(tmp_path: Path) -> None:
    it, _, _ = _folder(tmp_path)
    with pytest.raises(DataError, match="file does not exist"):
        it.metrics()
    with pytest.raises(DataError, match="file does not exist"):
        it.train_ids()
    with pytest.raises(DataError, match="file does not exist"):
        it.buffer()


# --- buffer versions: a whole version, then each iteration's changes ------------------------------


def _grow(buffer: PromptBuffer, t: int) -> None:
    """One iteration's worth of changes: a child of the first prompt, an estimate, draws, training."""
    first = buffer.prompts()[0]
    child = first.child(f"{first.text} Version {t}.", "deepen", t)
    buffer.add([child])
    buffer.update_stats([ScoredPrompt(first, ("a", "b"), (0.1 * t, 1.0), 0.2 * t)], t)
    buffer.mark_sampled([first.id])
    buffer.mark_trained([child.id, child.id])


def test_each_iteration_stores_only_its_changes_and_every_version_reads_back(tmp_path: Path) -> None:
    seeds = [Prompt.seed(f"Explain topic {i}.") for i in range(50)]
    buffer = PromptBuffer.from_prompts(seeds)
    root = tmp_path / "iterations"
    IterationDir(root / "0000", 0).write_buffer(buffer)
    buffer.clear_changes()
    versions = {0: buffer.to_table()}
    for t in range(1, 5):
        _grow(buffer, t)
        folder = IterationDir(root / f"{t:04d}", t)
        assert folder.write_buffer_changes(buffer) == 2  # the child and its parent, not the other 49 rows
        assert buffer.num_changed == 0
        versions[t] = buffer.to_table()
    for t, table in versions.items():
        folder = IterationDir(root / f"{t:04d}", t)
        assert folder.buffer().to_table().equals(table), t
        assert len(folder.buffer_files()) == t + 1
    assert pa.parquet.read_table(root / "0004" / "prompts.changes.parquet").num_rows == 2


def test_a_whole_version_mid_chain_starts_the_chain_there(tmp_path: Path) -> None:
    """Runs written by an older eva hold a whole buffer in every iteration; a resumed run continues
    with changes after them, and damage before the newest whole version does not matter."""
    buffer = PromptBuffer.from_prompts([Prompt.seed(f"Explain topic {i}.") for i in range(5)])
    root = tmp_path / "iterations"
    for t in range(3):
        if t:
            _grow(buffer, t)
        IterationDir(root / f"{t:04d}", t).write_buffer(buffer)  # the old layout
    buffer.clear_changes()
    _grow(buffer, 3)
    IterationDir(root / "0003", 3).write_buffer_changes(buffer)
    (root / "0000" / "prompts.parquet").unlink()
    assert IterationDir(root / "0003", 3).buffer().to_table().equals(buffer.to_table())
    assert [p.parent.name for p in IterationDir(root / "0003", 3).buffer_files()] == ["0002", "0003"]


def test_a_missing_link_of_the_chain_is_named(tmp_path: Path) -> None:
    buffer = PromptBuffer.from_prompts([Prompt.seed("Explain topic 0.")])
    root = tmp_path / "iterations"
    IterationDir(root / "0000", 0).write_buffer(buffer)
    for t in (1, 2):
        _grow(buffer, t)
        IterationDir(root / f"{t:04d}", t).write_buffer_changes(buffer)
    (root / "0001" / "prompts.changes.parquet").unlink()
    with pytest.raises(DataError, match=r"0001/prompts.parquet: file does not exist, nor prompts.changes.parquet "):
        IterationDir(root / "0002", 2).buffer()


def test_changes_that_rewrite_lineage_are_refused(tmp_path: Path) -> None:
    seeds = [Prompt.seed(f"Explain topic {i}.") for i in range(2)]
    buffer = PromptBuffer.from_prompts(seeds)
    table = buffer.to_table()
    forged = table.set_column(table.schema.get_field_index("operator"), "operator", pa.array(["x", "x"]))
    with pytest.raises(DataError, match="different 'operator'"):
        PromptBuffer.from_prompts(seeds).apply_changes(forged, "forged.parquet")
