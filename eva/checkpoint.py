"""The run directory: the source of truth of a run (DESIGN.md, "Checkpoints").

```
<root>/run.yaml             config_hash + the resolved config
<root>/iterations/0000/     one folder per iteration; MANIFEST.json (written last) = committed
<root>/LATEST               number of the last committed iteration
<root>/events.jsonl         append-only event log
<root>/run.lock             present while a writer holds the run directory (eva.runlock)
```

Every file is written to a temp name in its own folder, fsynced, renamed over the target, and the
folder fsynced: a crash leaves either the old or the new file, never half of one. An iteration folder
without a valid MANIFEST.json is incomplete; its `stages/<stage>.done` markers tell resume which
stages already wrote their outputs (a stage writes its outputs before its marker), so resume redoes
only the stages after the last marker, or `clear_iteration` drops the folder entirely. A marker
records the fingerprint of the config its stage ran under; `stale_stages` names those a changed
config (`--allow-change`) must redo. One process writes a run directory at a time (`lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from eva.atomic import (  # noqa: F401  (re-exported: the run directory's writers)
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    is_temp_file,
    make_dirs,
    remove_temp_leftovers,
    sha256_file,
)
from eva.config import MUTABLE_FIELDS, MUTABLE_FIELDS_V1, ConfigError, RunConfig, config_from_dict, fingerprint, flatten
from eva.iteration import POLICY, POLICY_MASTERS, IterationDir
from eva.runlock import LOCK_FILE, RunLock
from eva.tables import read_table, write_table

MANIFEST = "MANIFEST.json"
STAGES = "stages"
_HASH_KEY = "config_hash"


class RunDirError(Exception):
    """A run directory cannot be used as asked; the message names the path."""


class CorruptCheckpointError(RunDirError):
    """A committed file does not match its manifest (or a control file is unreadable)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def check_writable(run_dir: str | Path) -> None:
    """Fail (RunDirError) before anything is written if the run directory cannot be written.

    Probes the run directory (or, before it exists, its nearest existing parent) with a temp file and
    creates nothing. On a multi-node cluster run.dir must be storage all nodes share (NFS, a mounted
    bucket): the actors read policies from it by path.
    """
    root = Path(run_dir).absolute()
    probe = next((p for p in (root, *root.parents) if p.exists()), root)
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".eva-write-check-"):
            pass
    except OSError as e:
        raise RunDirError(
            f"run directory {root} is not writable ({e}): run.dir must be a folder this process can write; on a Ray "
            "cluster, shared storage that the driver and every node can write (e.g. an NFS or mounted-bucket path)"
        ) from None


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The parsed MANIFEST.json of an iteration folder, or None if absent or not a valid manifest."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def is_committed(folder: str | Path) -> bool:
    """True when the iteration folder holds a valid MANIFEST.json: its files must never change.
    For writers that only know a path inside an iteration (the trainer's `save`)."""
    return read_manifest(folder) is not None


def find_run_dir(path: str | Path) -> RunDir | None:
    """The run directory that `path` (existing or not) lies in or is, else None: for commands that
    must not write into any run directory (`eva export --out`)."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if RunDir(folder).is_run_dir():
            return RunDir(folder)
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- the run directory -----------------------------------------------------------------------


class RunDir:
    """A run directory on local or shared storage (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config_path(self) -> Path:
        return self.root / "run.yaml"

    @property
    def latest_path(self) -> Path:
        return self.root / "LATEST"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    def lock(self, command: str) -> RunLock:
        """The writer lock of this run directory (eva.runlock): `with run.lock("eva run ..."):` around
        everything a command writes here."""
        return RunLock(self.root, command)

    def is_run_dir(self) -> bool:
        """True when the folder is a run directory (run.yaml and iterations/; `init` writes them)."""
        return self.config_path.is_file() and (self.root / "iterations").is_dir()

    def foreign_entries(self) -> list[str]:
        """What makes an existing folder unfit to become a new run directory: its entries, when it is
        not a run directory already (a lock file alone is what a first `init` that failed leaves)."""
        if not self.root.is_dir() or self.config_path.is_file():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name != LOCK_FILE)

    # config ------------------------------------------------------------------------------------

    def init(self, config: RunConfig, allow_changes: Iterable[str] = ()) -> list[str]:
        """Create the run directory for `config`, or reopen an existing one written for it.

        An existing run.yaml whose fingerprint differs is refused (RunDirError naming the changed
        fields) unless every changed field is in `allow_changes`. Fields in MUTABLE_FIELDS never
        count. run.yaml is then rewritten with `config`, so it always holds the config the run goes
        on with. Returns the changed (non-mutable) fields that were accepted; [] for a new run.
        """
        check_writable(self.root)
        changed: list[str] = []
        if self.config_path.exists():
            old = self.config()
            changed = [f for f in old.changed_fields(config) if f not in MUTABLE_FIELDS]
            refused = [f for f in changed if f not in set(allow_changes)]
            if refused:
                raise RunDirError(
                    f"{self.config_path}: the run was started with a different config; changed fields: "
                    f"{', '.join(refused)}. Use a new run directory, or allow these changes explicitly."
                )
            if changed:
                self.log_event("config_changed", fields={f: _diff(old, config, f) for f in changed})
        body = yaml.safe_dump({_HASH_KEY: config.fingerprint(), **config.to_dict()}, sort_keys=False)
        atomic_write_text(self.config_path, body)  # first: a folder holding run.yaml is a run directory
        make_dirs(self.root / "iterations")
        return changed

    def config(self) -> RunConfig:
        """The run's config from run.yaml; its stored config_hash must match its contents."""
        if not self.config_path.is_file():
            raise RunDirError(f"{self.config_path} does not exist: {self.root} is not an initialized run directory")
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as e:
            raise CorruptCheckpointError(f"{self.config_path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise CorruptCheckpointError(f"{self.config_path}: expected a mapping, got {type(data).__name__}")
        stored = data.pop(_HASH_KEY, None)
        try:
            config = config_from_dict(data, str(self.config_path))
        except ConfigError as e:
            raise RunDirError(str(e)) from None
        # The hash covers the file as written (not re-validated), so a newer eva that adds a field
        # with a default still opens old runs, while a hand edit is caught.
        if stored is not None and stored not in (fingerprint(data), fingerprint(data, MUTABLE_FIELDS_V1)):
            raise CorruptCheckpointError(
                f"{self.config_path}: {_HASH_KEY} {stored} does not match the config in the file "
                f"({fingerprint(data)}); it was edited by hand. Restore it, or re-init with allow_changes."
            )
        return config

    # iterations ---------------------------------------------------------------------------------

    def iteration_dir(self, t: int) -> Path:
        """iterations/<t:04d> (not created)."""
        if t < 0:
            raise ValueError(f"iteration must be >= 0, got {t}")
        return self.root / "iterations" / f"{t:04d}"

    def iteration(self, t: int) -> IterationDir:
        """The files of iteration t (eva.iteration owns their names and formats)."""
        return IterationDir(self.iteration_dir(t), t)

    def eval_path(self, t: int) -> Path:
        """Where `eva eval` writes its result for iteration t: outside the committed iterations."""
        return self.root / "eval" / f"iteration_{t:04d}.json"

    def eval_responses_path(self, t: int) -> Path:
        """Where `eva eval` (free text) writes each held-out prompt's two responses and rewards for
        iteration t (eva.evaluation.EVAL_RESPONSES_SCHEMA): a Parquet file `datasets` opens."""
        return self.root / "eval" / f"iteration_{t:04d}.responses.parquet"

    def write_eval_responses(self, t: int, table: pa.Table) -> Path:
        path = self.eval_responses_path(t)
        write_table(table, path)
        return path

    def eval_responses(self, t: int) -> pa.Table:
        """The table `write_eval_responses` wrote for iteration t (DataError naming the file otherwise)."""
        from eva.evaluation import EVAL_RESPONSES_SCHEMA

        return read_table(self.eval_responses_path(t), EVAL_RESPONSES_SCHEMA)

    def eval_paths(self) -> dict[int, Path]:
        """The `eva eval` results present, by iteration."""
        folder = self.root / "eval"
        found = folder.glob("iteration_*.json") if folder.is_dir() else []
        return {int(p.stem.split("_")[1]): p for p in sorted(found) if p.stem.split("_")[1].isdigit()}

    def iterations(self) -> list[int]:
        """Numbers of all iteration folders present, committed or not, ascending."""
        base = self.root / "iterations"
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())

    def latest(self) -> int | None:
        """The last committed iteration (from LATEST), or None before the first commit."""
        if not self.latest_path.exists():
            return None
        raw = self.latest_path.read_text().strip()
        if not raw.isdigit():
            raise CorruptCheckpointError(f"{self.latest_path}: expected an iteration number, got {raw!r}")
        return int(raw)

    def manifest(self, t: int) -> dict[str, Any] | None:
        """The parsed MANIFEST.json of iteration t, or None if absent or not a valid manifest."""
        return read_manifest(self.iteration_dir(t))

    def committed(self, t: int) -> bool:
        """True when iteration t has a valid MANIFEST.json (contents are checked by `verify`)."""
        return self.manifest(t) is not None

    def incomplete(self) -> list[int]:
        """Iteration folders without a valid manifest: to resume from their stage markers."""
        return [t for t in self.iterations() if not self.committed(t)]

    def last_committed(self) -> int | None:
        """The highest iteration with a valid MANIFEST.json: where a resumed run continues from. It is
        LATEST, or above it when a crash came between an iteration's MANIFEST and LATEST."""
        return max((t for t in self.iterations() if self.committed(t)), default=None)

    def sync_latest(self) -> int | None:
        """Move LATEST forward to `last_committed()` if a crash left it behind; returns LATEST."""
        latest, last = self.latest(), self.last_committed()
        if last is not None and (latest is None or last > latest):
            atomic_write_text(self.latest_path, f"{last}\n")
            self.log_event("latest_repaired", old=latest, new=last)
            return last
        return latest

    # stages ---------------------------------------------------------------------------------------

    def _stage_path(self, t: int, stage: str) -> Path:
        if not stage or "/" in stage or stage.startswith("."):
            raise ValueError(f"invalid stage name {stage!r}")
        return self.iteration_dir(t) / STAGES / f"{stage}.done"

    def mark_stage(
        self, t: int, stage: str, info: dict[str, Any] | None = None, config_hash: str | None = None
    ) -> None:
        """Record that `stage` of iteration t finished; call after the stage's outputs are written.
        `config_hash`: the fingerprint of the config the stage ran under (`stale_stages` reads it)."""
        if self.committed(t):
            raise RunDirError(f"{self.iteration_dir(t)} is committed; its stages cannot change")
        marker = {"stage": stage, "time": _now(), "ts": time.time(), "info": info or {}}
        if config_hash is not None:
            marker[_HASH_KEY] = config_hash
        atomic_write_json(self._stage_path(t, stage), marker)

    def stage_done(self, t: int, stage: str) -> bool:
        return self._stage_path(t, stage).is_file()

    def stage_info(self, t: int, stage: str) -> dict[str, Any]:
        """The `info` recorded with a stage marker."""
        path = self._stage_path(t, stage)
        try:
            return json.loads(path.read_text())["info"]
        except FileNotFoundError:
            raise RunDirError(f"{path}: stage {stage!r} of iteration {t} is not done") from None
        except (ValueError, KeyError):
            raise CorruptCheckpointError(f"{path}: unreadable stage marker") from None

    def stages_done(self, t: int) -> list[str]:
        """Finished stages of iteration t in the order they finished."""
        folder = self.iteration_dir(t) / STAGES
        if not folder.is_dir():
            return []
        marks = []
        for p in folder.glob("*.done"):
            try:
                ts = float(json.loads(p.read_text())["ts"])
            except (ValueError, KeyError, TypeError):
                ts = p.stat().st_mtime  # a marker without a readable time still counts as done
            marks.append((ts, p.name[: -len(".done")]))
        return [name for _, name in sorted(marks)]

    def stale_stages(self, t: int, config_hash: str) -> list[str]:
        """Finished stages of iteration t that a run under config `config_hash` must redo: the first
        stage whose marker records another config fingerprint (it ran before `--allow-change` changed
        the config), and every stage that finished after it (they read its outputs). A marker without
        a fingerprint (written by an eva that did not record one) counts as current. In finish order."""
        done = self.stages_done(t)
        for i, stage in enumerate(done):
            try:
                recorded = json.loads(self._stage_path(t, stage).read_text()).get(_HASH_KEY)
            except (OSError, ValueError, AttributeError):
                recorded = None  # unreadable: stage_info reports it where it is read
            if recorded is not None and recorded != config_hash:
                return done[i:]
        return []

    def drop_stages(self, t: int, stages: Iterable[str]) -> None:
        """Delete the markers of `stages` of incomplete iteration t, so they run again (their outputs
        are overwritten when they do)."""
        if self.committed(t):
            raise RunDirError(f"{self.iteration_dir(t)} is committed; its stages cannot change")
        dropped = []
        for stage in stages:
            path = self._stage_path(t, stage)
            if path.exists():
                path.unlink()
                dropped.append(stage)
        if dropped:
            fsync_dir(self.iteration_dir(t) / STAGES)
            self.log_event("stages_dropped", iteration=t, stages=dropped)

    # commit / verify ----------------------------------------------------------------------------

    def commit(self, t: int) -> dict[str, Any]:
        """Commit iteration t: write MANIFEST.json (sha256 + size of every file) last, then LATEST.

        Leftovers of interrupted writes (temp files, and temp folders such as the trainer's
        `.policy.*.tmp/` of a save killed midway) are deleted first, so the manifest lists only what
        the iteration wrote and nothing unlisted stays behind. LATEST only moves forward: it
        becomes t unless a later iteration is already committed. A committed iteration is immutable
        (committing it again raises). Returns the manifest.
        """
        folder = self.iteration_dir(t)
        if not folder.is_dir():
            raise RunDirError(f"{folder} does not exist: nothing to commit for iteration {t}")
        if self.committed(t):
            raise RunDirError(f"{folder / MANIFEST} exists: iteration {t} is already committed")
        leftovers = remove_temp_leftovers(folder)
        if leftovers:
            self.log_event("temp_leftovers_removed", iteration=t, paths=[self.relative(p) for p in leftovers])
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST:
                files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {"iteration": t, "committed_at": _now(), "files": files, "pruned": {}}
        atomic_write_json(folder / MANIFEST, manifest)
        latest = self.latest()
        if latest is None or t > latest:
            atomic_write_text(self.latest_path, f"{t}\n")
        self.log_event("commit", iteration=t, files=len(files), bytes=sum(f["size"] for f in files.values()))
        return manifest

    def verify(self, t: int, hashes: bool = True, policy_hashes: bool = True) -> list[str]:
        """Problems of committed iteration t, one line each naming the file; [] when intact.

        Checks that every file listed in the manifest exists with its size and (`hashes`) sha256;
        without hashes it costs a stat per file (`eva status`); without `policy_hashes` the files
        of policy/ are checked by size only. Files not in
        the manifest are ignored: readers only read listed files, and an extra file cannot change
        what was committed (e.g. a policy folder whose deletion was interrupted by a crash).
        """
        folder = self.iteration_dir(t)
        manifest = self.manifest(t)
        if manifest is None:
            return [f"{self.relative(folder / MANIFEST)}: missing or invalid: iteration {t} is not committed"]
        problems = []
        for rel, entry in manifest["files"].items():
            path = folder / rel
            name = self.relative(path)
            if not path.is_file():
                problems.append(f"{name}: missing file")
            elif path.stat().st_size != entry["size"]:
                problems.append(f"{name}: size mismatch (manifest {entry['size']} bytes, found {path.stat().st_size})")
            elif (
                hashes and (policy_hashes or not rel.startswith(f"{POLICY}/")) and sha256_file(path) != entry["sha256"]
            ):
                problems.append(f"{name}: sha256 mismatch")
        return problems

    def verify_all(self, hashes: bool = True, loaded_policies_only: bool = False) -> list[str]:
        """Problems of every iteration a resumed run builds on: each one up to the highest committed
        (`last_committed`, where resume continues) or LATEST, whichever is higher, must be committed
        and intact. `loaded_policies_only`: hash the policy files of iteration 0 and of that highest
        one only (the policies a resume loads); the other policies are checked by size."""
        last = self.resume_point()
        if last is None:
            return []
        hashed = {0, last} if loaded_policies_only else range(last + 1)
        return [p for t in range(last + 1) for p in self.verify(t, hashes, policy_hashes=t in hashed)]

    def resume_point(self) -> int | None:
        """The iteration a resumed run continues from: the highest committed one or LATEST."""
        return max((t for t in (self.latest(), self.last_committed()) if t is not None), default=None)

    def verify_for_resume(self) -> list[str]:
        """`verify_all` with the files a resume reads hashed: every buffer file, table and marker of
        every committed iteration, and the two policies it loads (iteration 0's, the reference, and
        the one it continues from); the older policies, which it never reads, by size. Hashing each
        kept policy would make resuming a long run cost the run's length times the model's size."""
        return self.verify_all(loaded_policies_only=True)

    def ensure_valid(self, t: int) -> None:
        """Raise CorruptCheckpointError naming the bad files if iteration t does not verify."""
        problems = self.verify(t)
        if problems:
            raise CorruptCheckpointError(
                f"iteration {t} of {self.root} is corrupt:\n  " + "\n  ".join(problems), problems
            )

    def relative(self, path: Path) -> str:
        """`path` (inside the run directory) as shown to users: relative to the root, with /."""
        return path.relative_to(self.root).as_posix()

    # pruning / clearing -------------------------------------------------------------------------

    def prune_policies(self, keep_last: int | None) -> list[int]:
        """Delete policy/ of committed iterations older than the last `keep_last`; None keeps all.

        Iteration 0 is always kept: it is the initial policy that `reference: initial`, the creator
        (`model: initial`) and evaluation read. Prompt buffers and every other file stay. The
        manifest is rewritten first (policy entries move to its "pruned" map) and the folder deleted
        after, so a crash in between leaves an unlisted folder that verify ignores and the next prune
        deletes. Returns the iterations whose policy was removed.
        """
        if keep_last is None:
            return []
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        committed = [t for t in self.iterations() if self.committed(t)]
        keep = set(committed[-keep_last:]) | {0}
        pruned = []
        for t in committed:
            folder = self.iteration_dir(t) / POLICY
            if t in keep:
                continue
            # Temp folders of a policy save that a kill interrupted, committed by an eva that listed
            # them (see commit): policy weights too, and nobody reads them.
            manifest = self.manifest(t)
            assert manifest is not None  # t is among the committed iterations
            leftovers = sorted(
                {rel.split("/")[0] for rel in manifest["files"] if "/" in rel and is_temp_file(Path(rel.split("/")[0]))}
            )
            if not folder.exists() and not leftovers:
                continue
            for name in (POLICY, *leftovers):
                self._drop_from_manifest(t, name + "/")
                shutil.rmtree(self.iteration_dir(t) / name, ignore_errors=True)
            fsync_dir(folder.parent)
            pruned.append(t)
        if pruned:
            self.log_event("prune_policies", iterations=pruned, keep_last=keep_last)
        return pruned

    def prune_masters(self, t: int) -> bool:
        """Once iteration t is committed, drop the fp32 master weights of iteration t - 1 (policy/master/,
        written by the trainer when the policy's dtype rounds them): a resume continues from the newest
        committed iteration only, and the masters are twice the size of the policy they sit in (34 GB an
        iteration for a 9B LoRA run). The manifest moves their entries to "pruned" first, the files go
        after. Returns whether anything was dropped."""
        if t < 1 or not self.committed(t) or not self.committed(t - 1):
            return False
        folder = POLICY + "/" + POLICY_MASTERS.split("/")[0] + "/"
        manifest = self.manifest(t - 1)
        assert manifest is not None  # committed
        if not any(rel.startswith(folder) for rel in manifest["files"]):
            return False
        self._drop_from_manifest(t - 1, folder)
        shutil.rmtree(self.iteration_dir(t - 1) / folder, ignore_errors=True)
        self.log_event("prune_masters", iteration=t - 1)
        return True

    def _drop_from_manifest(self, t: int, prefix: str) -> None:
        manifest = self.manifest(t)
        assert manifest is not None  # callers pass committed iterations only
        gone = {rel: entry for rel, entry in manifest["files"].items() if rel.startswith(prefix)}
        if not gone:
            return
        stamp = _now()
        manifest["files"] = {rel: e for rel, e in manifest["files"].items() if rel not in gone}
        manifest.setdefault("pruned", {}).update({rel: {**e, "pruned_at": stamp} for rel, e in gone.items()})
        atomic_write_json(self.iteration_dir(t) / MANIFEST, manifest)

    def clear_iteration(self, t: int) -> None:
        """Remove an incomplete iteration folder entirely (a committed one is refused)."""
        folder = self.iteration_dir(t)
        if self.committed(t):
            raise RunDirError(f"{folder} is committed; refusing to delete it")
        if folder.exists():
            shutil.rmtree(folder)
            fsync_dir(folder.parent)
            self.log_event("clear_iteration", iteration=t)

    # events ---------------------------------------------------------------------------------------

    def log_event(self, kind: str, **fields: Any) -> None:
        """Append one JSON line {time, ts, kind, **fields} to events.jsonl, flushed and fsynced."""
        clash = {"time", "ts"} & fields.keys()
        if clash:
            raise ValueError(f"event fields may not be named {sorted(clash)}")
        line = json.dumps({"time": _now(), "ts": time.time(), "kind": kind, **fields}, default=str)
        make_dirs(self.root)
        with open(self.events_path, "a+b") as f:
            # A crash mid-append can leave a line without its newline; start a fresh line after it.
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write((line + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        """All events in order; lines torn by a crash mid-append are skipped."""
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if line.strip():
                    out.append(json.loads(line))
        return out


def _diff(old: RunConfig, new: RunConfig, field: str) -> dict[str, Any]:
    """{'old': ..., 'new': ...} of one dotted field, for the config_changed event."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {"old": a.get(field), "new": b.get(field)}
