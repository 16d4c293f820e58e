"""The Python API, for notebooks: start or resume a run, open a run directory, and read its iterations
as `datasets.Dataset`s and its metrics as a pandas table.

    from pipelines import api

    run = api.run(preset="tiny", overrides=["run.iterations=1"], run_dir="runs/nb")   # or api.resume(...)
    run = api.open_run("runs/nb")
    run.metrics()                 # one row per committed iteration (pandas.DataFrame)
    run.prompts(1)                # the prompt buffer of iteration 1 (datasets.Dataset)
    run.evolved(1), run.pairs(1)  # what iteration 1 evolved and trained on
    run.lineage("4d2c")           # a prompt's chain of ancestors (a unique id prefix is enough)

The same checks, lock and loop as the CLI (`eva run` / `eva resume`): a mistake raises the error the
CLI would print (ConfigError, DataError, RunDirError, ...) instead of exiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from eva.checkpoint import RunDir, RunDirError
from eva.config import RunConfig, config_from_dict, load_config
from eva.types import Prompt, match_id
from eva.types import prompt_id as prompt_id  # re-exported: the id of a text


class _PrintReporter:
    """The loop's summary lines printed as they come (a notebook has no live progress bar)."""

    def __call__(self, message: str) -> None:
        print(message, flush=True)

    def progress(self, description: str, done: int, total: int | None, unit: str = "") -> None:
        pass


class Run:
    """A run directory, read-only: its config, committed iterations, tables and metrics."""

    def __init__(self, root: str | Path) -> None:
        self.dir = RunDir(root)
        if not self.dir.config_path.is_file():
            raise RunDirError(f"{root} is not a run directory (no run.yaml)")

    def __repr__(self) -> str:
        return f"Run({str(self.dir.root)!r}, iterations={self.iterations})"

    @property
    def root(self) -> Path:
        return self.dir.root

    @property
    def config(self) -> RunConfig:
        return self.dir.config()

    @property
    def iterations(self) -> list[int]:
        """The committed iterations, ascending (0 = the seed buffer and the initial policy)."""
        return [t for t in self.dir.iterations() if self.dir.committed(t)]

    def _t(self, t: int | None) -> int:
        committed = self.iterations
        if not committed:
            raise RunDirError(f"{self.root} has no committed iteration yet")
        if t is None:
            return committed[-1]
        if t not in committed:
            raise RunDirError(f"iteration {t} is not committed in {self.root} (committed: {committed})")
        return t

    def prompts(self, t: int | None = None) -> datasets.Dataset:
        """Buffer version t (default: the latest): text, lineage, reward vectors, informativeness, counts."""
        return datasets.Dataset(self.dir.iteration(self._t(t)).buffer().to_table())

    def evolved(self, t: int | None = None) -> datasets.Dataset:
        """The prompts iteration t's creator kept (empty for iteration 0 and baseline runs)."""
        folder = self.dir.iteration(self._t(t))
        return _records([vars_of(p) for p in folder.evolved()] if folder.has_evolved() else [])

    def pairs(self, t: int | None = None) -> datasets.Dataset:
        """Iteration t's preference pairs, TRL's columns (prompt, chosen, rejected) with rewards."""
        folder = self.dir.iteration(self._t(t))
        pairs = folder.pairs() if folder.has_pairs() else []
        return _records([{**vars_of(p), "margin": p.margin} for p in pairs])

    def metrics(self) -> Any:
        """One row per committed iteration: every number of its metrics.json, nested keys joined by `.`
        (train_loss, num_pairs, reward_summary.mean, health.pair_yield, stage_seconds.solve, ...)."""
        import pandas as pd

        rows = [self.dir.iteration(t).metrics().to_dict() for t in self.iterations]
        return pd.json_normalize(rows).set_index("iteration", drop=False)

    def eval_responses(self, t: int | None = None) -> datasets.Dataset:
        """`eva eval`'s held-out prompts of iteration t with the initial and trained responses and rewards."""
        evaluated = sorted(i for i in self.dir.eval_paths() if self.dir.eval_responses_path(i).is_file())
        if not evaluated:
            raise RunDirError(f"{self.root} has no saved eval responses (run eva eval first)")
        return datasets.Dataset(self.dir.eval_responses(evaluated[-1] if t is None else t))

    def lineage(self, pid: str, t: int | None = None) -> list[Prompt]:
        """The chain from the seed to the prompt `pid` (a unique prefix is enough) in buffer version t."""
        t = self._t(t)
        buffer = self.dir.iteration(t).buffer()
        return buffer.ancestry(match_id(pid, buffer.ids(), f"iteration {t} of {self.root}"))


def vars_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _records(rows: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset(pa.Table.from_pylist(rows)) if rows else datasets.Dataset(pa.table({}))


def open_run(run_dir: str | Path) -> Run:
    """A run directory to read (finished, stopped, or still running: only committed iterations)."""
    return Run(run_dir)


def run(
    config: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    iterations: int | None = None,
) -> Run:
    """Start (or extend) a run as `eva run CONFIG --preset P --set ... --run-dir D --iterations N` does,
    in this process (Ray starts or is joined as the config says); returns it when done."""
    extra = [f"run.dir={run_dir}"] if run_dir is not None else []
    extra += [f"run.iterations={iterations}"] if iterations is not None else []
    cfg = load_config(config, [*overrides, *extra], preset=preset)
    return _loop(cfg, RunDir(cfg.run.run_dir), new=True)


def resume(run_dir: str | Path, iterations: int | None = None) -> Run:
    """Continue a run as `eva resume RUN_DIR [--iterations N]` does; returns it when done."""
    rd = open_run(run_dir).dir
    data = rd.config().to_dict()
    data["run"].update({"dir": str(run_dir), **({"iterations": iterations} if iterations is not None else {})})
    return _loop(config_from_dict(data, str(rd.config_path)), rd, new=False)


def _loop(cfg: RunConfig, rd: RunDir, new: bool) -> Run:
    from pipelines.cli import _check_inputs  # the CLI's checks before anything is written
    from pipelines.loop import run_loop

    if new and (foreign := rd.foreign_entries()):
        raise RunDirError(f"{rd.root} exists and is not a run directory (it holds {', '.join(foreign[:5])})")
    _check_inputs(cfg, rd)
    lock = rd.lock("python: pipelines.api")
    lock.acquire()
    try:
        if not new and (problems := rd.verify_for_resume()):
            raise RunDirError(f"{rd.root}: committed iterations fail verification:\n  " + "\n  ".join(problems))
        rd.init(cfg)
        run_loop(cfg, rd, _PrintReporter(), verified=not new)
    finally:
        lock.release()
    return Run(rd.root)
