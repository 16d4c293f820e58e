"""Parquet tables on disk: atomic writes, schema-checked reads, dataclass records as rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eva.tables import DataError, load_records, read_table, save_records, write_table

SCHEMA = pa.schema([("name", pa.string()), ("count", pa.int64())])


@dataclass(frozen=True)
class Row:
    name: str
    count: int

    @property
    def double(self) -> int:
        return 2 * self.count


def test_write_table_is_atomic_and_makes_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "t.parquet"
    write_table(pa.table({"name": ["x"], "count": [1]}, schema=SCHEMA), path)
    assert pq.read_table(path).to_pylist() == [{"name": "x", "count": 1}]
    with pytest.raises(AttributeError):  # pyarrow's error for a non-table, raised mid-write
        write_table("not a table", path)  # type: ignore[arg-type]
    assert pq.read_table(path).to_pylist() == [{"name": "x", "count": 1}]  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]  # no temp file left, even after the failure


def test_read_table_selects_orders_and_casts(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"extra": [1.5, 2.5], "count": pa.array([3, 4], pa.int32()), "name": ["a", "b"]}), path)
    table = read_table(path, SCHEMA)
    assert table.schema.equals(SCHEMA) and table.to_pylist() == [{"name": "a", "count": 3}, {"name": "b", "count": 4}]


def test_read_table_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.parquet: file does not exist"):
        read_table(tmp_path / "nothing.parquet", SCHEMA)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", SCHEMA)
    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "partial.parquet")
    with pytest.raises(DataError, match=r"partial.parquet: missing columns \['count'\]; it has \['name'\]"):
        read_table(tmp_path / "partial.parquet", SCHEMA)
    pq.write_table(pa.table({"name": ["a"], "count": ["many"]}), tmp_path / "types.parquet")
    with pytest.raises(DataError, match="types.parquet: columns do not match the expected types"):
        read_table(tmp_path / "types.parquet", SCHEMA)


def test_records_round_trip_with_property_columns(tmp_path: Path) -> None:
    schema = SCHEMA.append(pa.field("double", pa.int64()))  # a property: written, not read back as a field
    rows = [Row("a", 1), Row("b", 5)]
    save_records(tmp_path / "r.parquet", rows, schema)
    assert pq.read_table(tmp_path / "r.parquet").column("double").to_pylist() == [2, 10]
    assert load_records(tmp_path / "r.parquet", Row, schema) == rows
    save_records(tmp_path / "none.parquet", [], schema)
    assert load_records(tmp_path / "none.parquet", Row, schema) == []
