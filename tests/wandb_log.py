"""Read what W&B wrote offline: the records of a run's `run-<id>.wandb` transaction log (LevelDB log
format: 32 KiB blocks of records with a 7-byte header each; a `:W&B` file header), as protobufs."""

from __future__ import annotations

import json
import struct
import time
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


def history(run_root: Path, timeout_s: float = 60.0) -> dict[int, dict]:
    """{step: {key: value}} of every offline W&B run under `<run_root>/wandb/`, values JSON-decoded.

    `wandb.finish()` returns before W&B's service process has written the transaction log (measured:
    7 bytes right after, the whole log a moment later), so wait until every log ends in its `exit`
    record."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = sorted((run_root / "wandb").glob("offline-run-*/run-*.wandb"))
        done = [log for log in logs if any(r.WhichOneof("record_type") == "exit" for r in records(log))]
        if (logs and len(done) == len(logs)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out: dict[int, dict] = {}
    for log in logs:
        for record in records(log):
            if record.WhichOneof("record_type") == "history":
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                out.setdefault(record.history.step.num, {}).update(items)
    return out
