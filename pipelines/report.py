"""`eva report`: a self-contained static HTML report of a run directory.

Reads only committed iterations (those with a MANIFEST.json) plus events.jsonl, so it can be
regenerated at any time while a run is going on. What it reads per iteration:

    metrics.json          the curves (reward, loss, accuracy, margin, stage times)
    estimate.parquet      informativeness of every estimated prompt (histograms)
    prompts.parquet       the buffer: population by operator/depth, prompt lengths, lineage, table
    train_prompts.json    which prompts the solver trained on (seed vs evolved share)
    ../eval/*.json        held-out results of `eva eval`, when present

The page is built in `pipelines.report_html` with the SVG helpers of `pipelines.report_svg`; this
module only gathers numbers into the typed records of `pipelines.report_data`, which both read. Sizes
are bounded for runs of any size: the prompt table shows at most `max_rows` rows (a uniform sample
beyond that, said on the page), the informativeness histograms at most MAX_HISTOGRAMS iterations, the
diff lists at most DIFF_LIST rows.
"""

from __future__ import annotations

import json
import webbrowser
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eva.buffer import PromptBuffer
from eva.checkpoint import RunDir, RunDirError, atomic_write_text
from eva.config import RunConfig
from eva.evaluation import biggest_changes
from eva.losses import loss_parameters
from eva.metrics import informativeness
from eva.tables import DataError
from eva.types import IterationMetrics
from pipelines.report_data import DIFF_LIST, MAX_HISTOGRAMS, Chain, Diff, IterationView, PromptRow, Report, RunStatus
from pipelines.report_html import render_page

DEFAULT_MAX_ROWS = 2000
DEFAULT_TOP_K = 10


# --- entry point -------------------------------------------------------------------------------------


def build_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    table_iteration: int | None = None,
    diff: tuple[int, int] | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_rows: int = DEFAULT_MAX_ROWS,
    open_browser: bool = False,
) -> Path:
    """Write `<out_dir>/index.html` (default out_dir: <run_dir>/report) and return its path.

    `table_iteration` (default: the last committed) is the iteration whose prompts fill the table;
    `diff` = (a, b) compares two committed iterations (default: first vs last committed). Raises
    RunDirError for a missing run directory, one without a committed iteration, or a named
    iteration that is not committed.
    """
    report = collect(RunDir(run_dir), table_iteration=table_iteration, diff=diff, top_k=top_k, max_rows=max_rows)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    path = out / "index.html"
    atomic_write_text(path, render_page(report))
    path.chmod(0o644)  # a report is meant to be shared (atomic writes create 0600 temp files)
    if open_browser:
        webbrowser.open(path.resolve().as_uri())
    return path


def collect(
    run: RunDir,
    *,
    table_iteration: int | None = None,
    diff: tuple[int, int] | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Report:
    """Gather every number of the report from the committed iterations and events.jsonl."""
    if not run.root.is_dir():
        raise RunDirError(f"{run.root} does not exist")
    if not run.config_path.is_file():
        raise RunDirError(f"{run.root} is not a run directory (no run.yaml)")
    committed = [t for t in run.iterations() if run.committed(t)]
    if not committed:
        raise RunDirError(
            f"{run.root} has no committed iteration yet (nothing to report; iteration 0 commits when the run starts)"
        )
    for t in [table_iteration, *(diff or ())]:
        if t is not None and t not in committed:
            raise RunDirError(
                f"iteration {t} is not committed in {run.root} (committed: {', '.join(map(str, committed))})"
            )
    if max_rows < 1 or top_k < 0:
        raise ValueError(f"max_rows must be >= 1 and top_k >= 0, got {max_rows}, {top_k}")
    config = _config(run)
    events = run.events()
    last = committed[-1]
    table_t = last if table_iteration is None else table_iteration
    a, b = diff if diff is not None else (committed[0], last)
    buffers: dict[int, PromptBuffer] = {}

    def buffer(t: int) -> PromptBuffer:
        if t not in buffers:
            buffers[t] = run.iteration(t).buffer()
        return buffers[t]

    rows, total = table_rows(buffer(table_t), max_rows)
    # Rows are never removed and lineage never changes: buffer version t's lineage is the last
    # version's rows born up to t (one read, not one chain of buffer files per iteration).
    born = buffer(last).to_table().select(["id", "text", "depth", "operator", "iteration"])
    views = [iteration_view(run, t, events, born) for t in committed]
    return Report(
        run_dir=str(run.root.resolve()),
        name=config.run.name if config else run.root.name,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=config_summary(config),
        status=run_status(committed, events, config),
        iterations=views,
        lineage_iteration=last,
        lineage=lineage(buffer(last), top_k),
        table_iteration=table_t,
        table_rows=rows,
        table_total=total,
        max_rows=max_rows,
        diff=iteration_diff(run, buffer(a), buffer(b), a, b) if a != b else None,
        evals=eval_results(run, committed),
        histogram_iterations=histogram_iterations([v.t for v in views if v.info]),
        warnings=lineage_warnings(buffer(last), last, [run.relative(p) for p in run.iteration(last).buffer_files()]),
    )


# --- run-level ---------------------------------------------------------------------------------------


def _config(run: RunDir) -> RunConfig | None:
    """The run's config, or None when run.yaml does not validate (the report still shows the data)."""
    try:
        return run.config()
    except RunDirError:
        return None


def config_summary(cfg: RunConfig | None) -> dict[str, Any]:
    """The handful of settings a reader needs to interpret the curves."""
    if cfg is None:
        return {"config": "run.yaml could not be read (see `eva status`)"}
    return {
        "model": cfg.model.path,
        "seed prompts": cfg.prompts.path + (f" (first {cfg.prompts.limit})" if cfg.prompts.limit else ""),
        "informativeness": cfg.creator.metric,
        "sampling": f"{cfg.creator.sample_method}, {cfg.creator.sample_frac:g} of the set",
        "variants per prompt": cfg.creator.num_variants,
        "evolved ratio": cfg.creator.evolved_ratio,
        "responses per prompt": cfg.solver.n_responses,
        "loss": f"{cfg.solver.loss_type} ({', '.join(f'{k} {v:g}' for k, v in loss_parameters(cfg.solver).items())}, "
        f"{cfg.solver.finetune}, reference {cfg.solver.reference})",
        "reward": cfg.reward.kind,
        "iterations planned": cfg.run.iterations,
    }


def run_status(committed: list[int], events: list[dict[str, Any]], cfg: RunConfig | None) -> RunStatus:
    """Where the run stands, from the committed iterations and the event log (never from stage markers)."""
    planned = cfg.run.iterations if cfg else None
    started = [e.get("iteration") for e in events if e.get("kind") == "iteration_start"]
    current = next((t for t in reversed(started) if isinstance(t, int) and t not in committed), None)
    stages: list[str] = []
    if current is not None:
        start = max(
            i for i, e in enumerate(events) if e.get("kind") == "iteration_start" and e.get("iteration") == current
        )
        stages = [e["stage"] for e in events[start:] if e.get("kind") == "stage_end" and e.get("iteration") == current]
    last_event = events[-1].get("time") if events else None
    if planned is not None and committed[-1] >= planned:
        state = "complete"
    elif current is not None:
        state = "in progress (or stopped mid-iteration)"
    else:
        state = "stopped between iterations"
    return RunStatus(state, committed, planned, current, stages, last_event)


def eval_results(run: RunDir, committed: list[int]) -> list[dict[str, Any]]:
    """`eva eval` outputs (<run>/eval/iteration_NNNN.json) of committed iterations, by iteration."""
    out = []
    for path in run.eval_paths().values():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a torn or foreign file outside the committed iterations: skip it, never fail on it
        if isinstance(data, dict) and data.get("iteration") in committed:
            data["examples"] = _eval_examples(run, data["iteration"]) if "responses" in data else {}
            out.append(data)
    return sorted(out, key=lambda d: d["iteration"])


def _eval_examples(run: RunDir, t: int, k: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The k biggest wins and losses of iteration t's held-out responses (none when the file is unreadable)."""
    try:
        table = run.eval_responses(t)
    except DataError:
        return {}
    return {"wins": biggest_changes(table, k), "losses": biggest_changes(table, k, losses=True)}


# --- per iteration -------------------------------------------------------------------------------------


def iteration_view(run: RunDir, t: int, events: list[dict[str, Any]], born: pa.Table) -> IterationView:
    """Iteration t's numbers; `born`: id, text, depth, operator and iteration of a later buffer
    version (its rows born up to t are version t's)."""
    folder = run.iteration(t)
    metrics = folder.metrics()
    table = born.filter(pc.less_equal(born.column("iteration"), t))
    lengths = pc.utf8_length(table.column("text")).to_numpy().astype(float)
    train = table.filter(pc.is_in(table.column("id"), value_set=pa.array(_train_ids(run, t), pa.string())))
    train_lengths = pc.utf8_length(train.column("text")).to_numpy().astype(float)
    depth, born = train.column("depth").to_numpy(), train.column("iteration").to_numpy()
    info = (
        folder.scored_table("estimate", ["info"]).column("info").to_numpy(zero_copy_only=False)
        if folder.has_scored("estimate")
        else np.empty(0)
    )
    info = np.asarray(info, dtype=float)
    return IterationView(
        t=t,
        metrics=metrics,
        stage_seconds=stage_seconds(metrics, events, t),
        info=info[np.isfinite(info)].tolist(),
        buffer_size=table.num_rows,
        by_operator=_value_counts(table.column("operator")),
        by_depth={int(k): v for k, v in _value_counts(table.column("depth")).items()},
        length=_length_summary(lengths),
        train_length=float(train_lengths.mean()) if train_lengths.size else None,
        train_mix={
            "seed": int((depth == 0).sum()),
            "evolved this iteration": int(((depth > 0) & (born == t)).sum()),
            "evolved earlier": int(((depth > 0) & (born < t)).sum()),
        },
    )


def stage_seconds(metrics: IterationMetrics, events: list[dict[str, Any]], t: int) -> dict[str, float]:
    """Wall seconds per stage: metrics.json, with zeros filled from the stage_end events.

    metrics.json records 0 for the commit stage (its time is known only after metrics.json is
    written) and, in runs resumed by older versions, for stages finished before the resume.
    """
    seconds = {k: float(v) for k, v in metrics.stage_seconds.items()}
    for e in events:
        stage = e.get("stage")
        if (
            e.get("kind") == "stage_end"
            and e.get("iteration") == t
            and isinstance(stage, str)
            and not seconds.get(stage, 0)
        ):
            seconds[stage] = float(e.get("seconds") or 0.0)
    return seconds


def _value_counts(column: pa.ChunkedArray) -> dict[Any, int]:
    counts = pc.value_counts(column).to_pylist()
    return {
        c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: (c["values"] is None, str(c["values"])))
    }


def _length_summary(lengths: np.ndarray) -> dict[str, float]:
    if lengths.size == 0:
        return {}
    p10, p90 = np.percentile(lengths, [10, 90])
    return {"p10": float(p10), "mean": float(lengths.mean()), "p90": float(p90)}


def histogram_iterations(ts: list[int], limit: int = MAX_HISTOGRAMS) -> list[int]:
    """At most `limit` iterations, evenly spaced, always with the first and the last."""
    if len(ts) <= limit:
        return ts
    picks = np.linspace(0, len(ts) - 1, limit).round().astype(int)
    return [ts[i] for i in sorted(set(picks.tolist()))]


# --- prompts: rows, lineage, diff ------------------------------------------------------------------------


def prompt_row(buffer: PromptBuffer, pid: str) -> PromptRow:
    p, st = buffer.get(pid), buffer.stats(pid)
    return PromptRow(
        id=p.id,
        text=p.text,
        depth=p.depth,
        operator=p.operator,
        born=p.iteration,
        info=st["info"],
        mean_reward=st["mean_reward"],
        gap=informativeness(st["rewards"], "gap"),
        times_sampled=st["times_sampled"],
        times_trained=st["times_trained"],
    )


def _by_info(buffer: PromptBuffer, ids: list[str] | None = None) -> list[str]:
    """Ids (default: the whole buffer) sorted by informativeness, highest first, unestimated last."""
    ids = buffer.ids() if ids is None else ids
    info = buffer.info_array(ids)
    order = np.lexsort((-np.nan_to_num(info, nan=-np.inf), np.isnan(info)))
    return [ids[i] for i in order]


def table_rows(buffer: PromptBuffer, max_rows: int) -> tuple[list[PromptRow], int]:
    """Rows of the prompt table, most informative first; a uniform sample (seed 0) of `max_rows`
    when the buffer is larger. Returns (rows, buffer size)."""
    ids = buffer.ids()
    if len(ids) > max_rows:
        keep = np.sort(np.random.default_rng(0).choice(len(ids), size=max_rows, replace=False))
        ids = [ids[i] for i in keep]
    return [prompt_row(buffer, pid) for pid in _by_info(buffer, ids)], len(buffer)


def lineage(buffer: PromptBuffer, top_k: int) -> list[Chain]:
    """For the `top_k` most informative prompts: the chain seed -> ... -> prompt, one row per step."""
    top = [pid for pid in _by_info(buffer)[:top_k] if buffer.stats(pid)["info"] is not None]
    return [lineage_chain(buffer, pid) for pid in top]


def lineage_chain(buffer: PromptBuffer, pid: str) -> Chain:
    """The chain of `pid` as far back as the buffer holds it.

    Not `PromptBuffer.ancestry`: that raises on a missing parent or a cycle, which is right for the
    loop but would cost the user the whole report of a damaged run. Here the chain stops where it
    breaks and says so.
    """
    steps = [buffer.get(pid)]
    seen = {pid}
    while (parent := steps[-1].parent_id) is not None:
        if parent not in buffer:
            return Chain([prompt_row(buffer, p.id) for p in reversed(steps)], missing_parent=parent)
        if parent in seen:  # ids are content hashes: only a corrupted file can hold a loop
            return Chain([prompt_row(buffer, p.id) for p in reversed(steps)], cycle=True)
        seen.add(parent)
        steps.append(buffer.get(parent))
    return Chain([prompt_row(buffer, p.id) for p in reversed(steps)])


def lineage_warnings(buffer: PromptBuffer, t: int, files: list[str]) -> list[str]:
    """One line when prompts of buffer version t (read from `files`) name a parent the buffer does not hold."""
    orphans = [p for p in buffer.prompts() if p.parent_id is not None and p.parent_id not in buffer]
    if not orphans:
        return []
    parents = sorted({p.parent_id for p in orphans if p.parent_id is not None})
    named = ", ".join(parents[:5]) + (f" and {len(parents) - 5} more" if len(parents) > 5 else "")
    return [
        f"Damaged lineage in the buffer of iteration {t} (read from {', '.join(files)}): {len(orphans):,} prompt(s) "
        f"name a parent that is "
        f"not in the buffer "
        f"({named}); their lineage chains are shown up to the break."
    ]


def iteration_diff(run: RunDir, a_buf: PromptBuffer, b_buf: PromptBuffer, a: int, b: int) -> Diff:
    added = [pid for pid in b_buf.ids() if pid not in a_buf]
    dropped = [pid for pid in a_buf.ids() if pid not in b_buf]
    train_a, train_b = (set(_train_ids(run, t)) for t in (a, b))
    operators: dict[str, int] = {}
    depths: dict[int, int] = {}
    for p in b_buf.prompts(added):
        operators[p.operator] = operators.get(p.operator, 0) + 1
        depths[p.depth] = depths.get(p.depth, 0) + 1
    return Diff(
        a=a,
        b=b,
        size_a=len(a_buf),
        size_b=len(b_buf),
        added=[prompt_row(b_buf, pid) for pid in _by_info(b_buf, added)[:DIFF_LIST]],
        dropped=[prompt_row(a_buf, pid) for pid in _by_info(a_buf, dropped)[:DIFF_LIST]],
        num_added=len(added),
        num_dropped=len(dropped),
        added_by_operator=dict(sorted(operators.items(), key=lambda kv: -kv[1])),
        added_by_depth=dict(sorted(depths.items())),
        mean_length=(_mean_length(a_buf), _mean_length(b_buf)),
        mean_info=(_mean_info(a_buf), _mean_info(b_buf)),
        train_added=len(train_b - train_a),
        train_dropped=len(train_a - train_b),
    )


def _train_ids(run: RunDir, t: int) -> list[str]:
    """Ids the solver trained on in iteration t. Iteration 0's file holds the seed set X_0 (what
    iteration 1 estimates), and nobody trained on it: counting it would show seeds as trained in 0."""
    folder = run.iteration(t)
    return folder.train_ids() if t > 0 and folder.has_train_ids() else []


def _mean_length(buffer: PromptBuffer) -> float | None:
    texts = buffer.texts()
    return sum(map(len, texts)) / len(texts) if texts else None


def _mean_info(buffer: PromptBuffer) -> float | None:
    info = buffer.info_array()
    return float(np.nanmean(info)) if np.isfinite(info).any() else None
