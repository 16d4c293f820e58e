"""Read what W&B wrote offline: the records of a run's `run-<id>.wandb` transaction log (LevelDB log
format: 32 KiB blocks of records with a 7-byte header each; a `:W&B` file header), as protobufs."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B transaction log"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def history(run_root: Path) -> dict[int, dict]:
    """{step: {key: value}} of every offline W&B run under `<run_root>/wandb/`, values JSON-decoded."""
    out: dict[int, dict] = {}
    for log in sorted((run_root / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in records(log):
            if record.WhichOneof("record_type") == "history":
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                out.setdefault(record.history.step.num, {}).update(items)
    return out
