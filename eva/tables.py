"""Parquet tables on disk: atomic writes, reads checked against a schema, dataclass records as rows.

Every reader raises `DataError` naming the file and what is wrong with it, so a damaged file in a
run directory ends in one clear line, never a pyarrow traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from eva.atomic import atomic_path

R = TypeVar("R")


class DataError(ValueError):
    """Bad input data; the message names the file, the line/row and the problem."""


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, schema: pa.Schema, optional: Sequence[str] = ()) -> pa.Table:
    """Read a Parquet file as `schema` (columns selected and cast); DataError names the file.

    Only the columns of `schema` are read from disk, so a reader that needs a few columns of a
    wide table (the report: lineage, not reward vectors) passes a schema of those few. Columns named
    in `optional` may be absent (files written before they existed): they read as null."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    absent = [n for n in schema.names if n not in names and n in optional]
    missing = [n for n in schema.names if n not in names and n not in optional]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; it has {names}")
    try:
        table = pq.read_table(path, columns=[n for n in schema.names if n not in absent])
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    for name in absent:
        table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, ValueError) as e:
        raise DataError(f"{path}: columns do not match the expected types {schema}: {e}") from None


def save_records(path: str | Path, records: Sequence[Any], schema: pa.Schema) -> None:
    """Write dataclass records as Parquet: one column per schema field, read with getattr
    (so properties such as PreferencePair.margin become columns too)."""
    data = {name: [getattr(r, name) for r in records] for name in schema.names}
    write_table(pa.Table.from_pydict(data, schema=schema), path)


def load_records(path: str | Path, cls: type[R], schema: pa.Schema, optional: Sequence[str] = ()) -> list[R]:
    """Read records written by `save_records`; columns that are not fields of `cls` are skipped."""
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    rows = read_table(path, schema, optional).select(fields).to_pylist()
    return [cls(**row) for row in rows]
