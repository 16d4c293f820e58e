"""Durable file writes: every file goes to a temp name in its own folder, is fsynced, renamed over the
target, and the folder fsynced, so a crash leaves either the old or the new file, never half of one.
Whole folders (a policy) the same way: built in a temp sibling folder, every file and folder in it
fsynced, renamed, the parent fsynced (`atomic_folder`).

Temp names are `.<name>.<random>.tmp` (files and folders alike): `is_temp_file` recognizes them and
`remove_temp_leftovers` deletes what a crash left of them before a commit hashes the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename or a new entry in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | Path) -> Path:
    """mkdir -p that also fsyncs the parent of every folder it creates (new entries are durable)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync it and rename it over `path`.

    For writers that want a file name (pyarrow, safetensors). On an exception the temp file is
    removed and `path` is untouched.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # writers may have closed without fsync
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and folder under `path`, and `path` itself, deepest first: what a folder
    lists is durable only once the folder is fsynced, and its files' contents only once they are."""
    path = Path(path)
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder next to `path`; on success fsync everything in it, rename it to
    `path` and fsync the parent, so a crash leaves either no folder (or the old one) or the whole new one.

    An existing `path` is refused (FileExistsError) unless `replace`: then it is deleted just before
    the rename (a crash in between leaves no folder; callers redo the write). On an exception the
    temp folder is removed and `path` is untouched.
    """
    path = Path(path)
    make_dirs(path.parent)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file in the same folder, fsync, rename, fsync dir)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def is_temp_file(path: Path) -> bool:
    """True for a leftover of an interrupted atomic write: a file or a folder (`atomic_folder`)."""
    return path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)


def remove_temp_leftovers(folder: str | Path) -> list[Path]:
    """Delete every temp file and temp folder (with its contents) under `folder`: what a process
    killed mid-write left behind. Returns the paths removed. Only call it while no write into
    `folder` is in progress (the run directory's lock ensures that for a run)."""
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = [Path(dirpath, name) for name in (*dirnames, *filenames) if is_temp_file(Path(name))]
        dirnames[:] = [d for d in dirnames if not is_temp_file(Path(d))]  # never descend into a temp folder
        for path in here:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if here:
            fsync_dir(dirpath)
        removed += here
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
