"""The page of `eva report`: sections of HTML built from a `pipelines.report_data.Report`.

One self-contained file: inline CSS, inline SVG charts, ~20 lines of script (the table search), a
Content-Security-Policy that forbids every network load, and a JSON block with the numbers behind
the charts (`<script type="application/json" id="eva-report-data">`) for anyone who wants to
re-plot (tests check the visible text and the SVG marks, which carry their values in data-*).
Prompts and responses are user/model data: every text goes through `esc`, and the JSON block escapes
`<`, `>` and `&` so no text can close its script element.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipelines.report_data import DIFF_LIST, MAX_HISTOGRAMS, Chain, Diff, IterationView, PromptRow, Report
from pipelines.report_svg import PALETTE, Series, color, esc, histogram_rows, legend, line_chart, stacked_bars

STAGE_ORDER = ("estimate", "sample", "evolve", "mix", "solve", "pairs", "train", "commit")
SEED_COLOR = "#9498a0"  # seeds are the background population: grey, evolved prompts get colours
TEXT_LIMIT = 2000  # characters of one prompt shown; seed sets can hold very long texts


def render_page(r: Report) -> str:
    nonce = secrets.token_urlsafe(16)
    body = "".join(
        [
            header(r),
            summary_section(r),
            solver_section(r),
            creator_section(r),
            lineage_section(r),
            table_section(r),
            diff_section(r.diff),
            eval_section(r.evals),
            footer(r),
        ]
    )
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'nonce-{nonce}'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>eva report · {esc(r.name)}</title><style>{CSS}</style></head><body>"
        f'<main>{body}</main><script type="application/json" id="eva-report-data">{data_json(r)}</script>'
        f'<script nonce="{nonce}">{SCRIPT}</script></body></html>\n'
    )


# --- formatting ----------------------------------------------------------------------------------------


def num(x: Any, digits: int = 4) -> str:
    """A number for a table cell; an en dash for a missing one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def clip(text: str) -> str:
    """A prompt text for the page, escaped, cut at TEXT_LIMIT characters (the cut is said)."""
    if len(text) <= TEXT_LIMIT:
        return esc(text)
    return f'{esc(text[:TEXT_LIMIT])}<i class="cut"> … ({len(text) - TEXT_LIMIT:,} more characters)</i>'


def cell(x: Any, key: str, digits: int = 4) -> str:
    """A table cell carrying the exact value in data-value (tests and scripts read it)."""
    value = "" if x is None else repr(x) if isinstance(x, float) else str(x)
    return f'<td class="num" data-key="{esc(key)}" data-value="{esc(value)}">{esc(num(x, digits))}</td>'


def card(title: str, chart: str | None, note: str = "", keys: str = "", chart_id: str = "") -> str:
    """A chart with its title, note and legend. `note` is trusted HTML: our own words and numbers only."""
    body = chart + keys if chart is not None else '<p class="empty">No data yet.</p>'  # no legend without a chart
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<figure class="card" id="{esc(chart_id)}"><h3>{esc(title)}</h3>{note_html}{body}</figure>'


def section(anchor: str, title: str, intro: str, content: str) -> str:
    """`intro` and `content` are HTML built by this module (any run data in them is already escaped)."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2><p class="intro">{intro}</p>{content}</section>'


def clean_json(x: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x


def data_json(r: Report) -> str:
    data = {
        "run_dir": r.run_dir,
        "name": r.name,
        "generated_at": r.generated_at,
        "status": {"state": r.status.state, "committed": r.status.committed, "current": r.status.current},
        "iterations": [
            {
                "iteration": v.t,
                "metrics": v.metrics.to_dict(),
                "stage_seconds": v.stage_seconds,
                "buffer_size": v.buffer_size,
                "by_operator": v.by_operator,
                "by_depth": v.by_depth,
                "length": v.length,
                "train_length": v.train_length,
                "train_mix": v.train_mix,
                "info_count": len(v.info),
            }
            for v in r.iterations
        ],
        "table": {
            "iteration": r.table_iteration,
            "rows": len(r.table_rows),
            "total": r.table_total,
            "max_rows": r.max_rows,
        },
        "lineage": {
            "iteration": r.lineage_iteration,
            "chains": [[s.id for s in chain.steps] for chain in r.lineage],
            "missing_parents": [chain.missing_parent for chain in r.lineage],
        },
        "warnings": r.warnings,
        "diff": None
        if r.diff is None
        else {"a": r.diff.a, "b": r.diff.b, "added": r.diff.num_added, "dropped": r.diff.num_dropped},
        "evals": r.evals,
    }
    text = json.dumps(clean_json(data), allow_nan=False, sort_keys=True)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# --- header and summary ---------------------------------------------------------------------------------


def header(r: Report) -> str:
    s = r.status
    progress = f"{s.committed[-1]} of {s.planned}" if s.planned is not None else str(s.committed[-1])
    live = ""
    if s.current is not None:
        done = ", ".join(s.current_stages) or "no stage finished yet"
        live = (
            f'<p class="live">Iteration {s.current} started and is not committed: {esc(done)}. This report shows '
            f"committed iterations only.</p>"
        )
    live += "".join(f'<p class="warn">{esc(w)}</p>' for w in r.warnings)
    facts = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in r.config.items())
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in NAV)
    return (
        f'<header><h1>eva run report <span class="name">{esc(r.name)}</span></h1>'
        f'<p class="meta"><code>{esc(r.run_dir)}</code> · state: <b id="run-state">{esc(s.state)}</b> · '
        f"iterations committed: <b>{esc(progress)}</b> · last event {esc(s.last_event or '–')} · generated "
        f"{esc(r.generated_at)}</p>"
        f'{live}<dl class="facts">{facts}</dl><nav>{nav}</nav></header>'
    )


NAV = (
    ("summary", "Summary"),
    ("solver", "Solver"),
    ("creator", "Creator"),
    ("lineage", "Lineage"),
    ("prompts", "Prompts"),
    ("diff", "Diff"),
    ("eval", "Held-out eval"),
)

# (column title, key in the data-key attribute, value getter, digits)
SUMMARY_COLUMNS: tuple[tuple[str, str, Callable[[IterationView], Any], int], ...] = (
    ("buffer", "buffer_size", lambda v: v.metrics.buffer_size, 0),
    ("sampled", "num_sampled", lambda v: v.metrics.num_sampled, 0),
    ("evolved", "num_evolved", lambda v: v.metrics.num_evolved, 0),
    ("train prompts", "num_train_prompts", lambda v: v.metrics.num_train_prompts, 0),
    ("pairs", "num_pairs", lambda v: v.metrics.num_pairs, 0),
    ("reward mean", "reward_mean", lambda v: v.metrics.reward_summary.get("mean"), 4),
    ("reward p10", "reward_p10", lambda v: v.metrics.reward_summary.get("p10"), 4),
    ("reward p90", "reward_p90", lambda v: v.metrics.reward_summary.get("p90"), 4),
    ("info mean", "info_mean", lambda v: v.metrics.info_summary.get("mean"), 4),
    ("pair margin", "mean_margin", lambda v: v.metrics.mean_margin, 4),
    ("train loss", "train_loss", lambda v: v.metrics.train_loss, 4),
    ("reward acc.", "reward_accuracy", lambda v: v.metrics.reward_accuracy, 3),
    ("steps", "train_steps", lambda v: v.metrics.train_steps, 0),
    ("wall time (s)", "wall_seconds", lambda v: round(float(sum(v.stage_seconds.values())), 3), 1),
)


def summary_section(r: Report) -> str:
    head = "<th>iteration</th>" + "".join(f"<th>{esc(title)}</th>" for title, *_ in SUMMARY_COLUMNS)
    rows = "".join(
        f'<tr data-iteration="{v.t}"><th>{v.t}</th>'
        + "".join(cell(get(v), key, digits) for _, key, get, digits in SUMMARY_COLUMNS)
        + "</tr>"
        for v in r.iterations
    )
    table = (
        f'<div class="scroll"><table id="summary-table" '
        f'class="numbers"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )
    intro = (
        "One row per committed iteration, from its <code>metrics.json</code>. Iteration 0 is the seed buffer and "
        "the initial policy."
    )
    return section("summary", "Summary", intro, table)


# --- solver ----------------------------------------------------------------------------------------------


def _metric_points(r: Report, key: str) -> list[tuple[float, float | None]]:
    return [(v.t, getattr(v.metrics, key)) for v in r.iterations if v.t > 0]


# One-line charts of a scalar IterationMetrics field (metrics.json): (card id, title, note, series, y label, field,
# colour index, fixed y range). A table, so a test can swap a field and see its chart check fail.
METRIC_CHARTS: tuple[tuple[str, str, str, str, str, str, int, tuple[float, float] | None], ...] = (
    (
        "chart-loss",
        "Train loss",
        "Mean preference loss of the training round.",
        "train loss",
        "loss",
        "train_loss",
        2,
        None,
    ),
    (
        "chart-accuracy",
        "Reward accuracy",
        "Share of pairs whose implicit reward ranks chosen above rejected.",
        "reward accuracy",
        "accuracy",
        "reward_accuracy",
        4,
        (0.0, 1.0),
    ),
    (
        "chart-margin",
        "Pair margin",
        "Mean reward margin of the preference pairs (chosen − rejected).",
        "mean margin",
        "chosen − rejected reward",
        "mean_margin",
        6,
        None,
    ),
)


def metric_card(
    r: Report,
    chart_id: str,
    title: str,
    note: str,
    name: str,
    y_label: str,
    key: str,
    color_index: int,
    y_domain: tuple[float, float] | None,
) -> str:
    chart = line_chart(
        [Series(name, _metric_points(r, key), color(color_index))],
        y_label,
        f"{title.lower()} per iteration",
        y_domain=y_domain,
    )
    return card(title, chart, note, chart_id=chart_id)


def solver_section(r: Report) -> str:
    rs = [(v.t, v.metrics.reward_summary) for v in r.iterations if v.metrics.reward_summary.get("count")]
    reward = line_chart(
        [
            Series(
                "mean", [(t, s.get("mean")) for t, s in rs], color(0), band=[(t, s["p10"], s["p90"]) for t, s in rs]
            ),
            Series("median", [(t, s.get("p50")) for t, s in rs], color(0), dashed=True),
        ],
        "reward",
        "reward of solver responses per iteration",
    )
    reward_keys = legend(
        [("mean", color(0)), ("median", color(0)), ("p10–p90", "rgba(66,105,208,.25)")], dashed=["median"]
    )
    stages = [s for s in STAGE_ORDER if any(v.stage_seconds.get(s) for v in r.iterations)]
    stages += sorted({s for v in r.iterations for s in v.stage_seconds} - set(stages) - set(STAGE_ORDER))
    # fixed per stage across reports
    colors = {
        s: color(STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER) + i) for i, s in enumerate(stages)
    }
    timed = [v for v in r.iterations if v.t > 0]
    times = stacked_bars(
        [v.t for v in timed],
        {s: [v.stage_seconds.get(s, 0.0) for v in timed] for s in stages},
        colors,
        "seconds",
        "stage wall time per iteration",
        unit=" s",
    )
    cards = [
        card(
            "Reward of solver responses",
            reward,
            "Rewards of the responses sampled for the training prompts (solve stage).",
            reward_keys,
            "chart-reward",
        ),
        *(metric_card(r, *spec) for spec in METRIC_CHARTS),
        card(
            "Stage wall time",
            times,
            "Seconds per stage, stacked (metrics.json; zeros filled from events.jsonl).",
            legend([(s, colors[s]) for s in stages]),
            "chart-stages",
        ),
        tokens_card(timed, colors),
    ]
    return section(
        "solver",
        "Solver",
        "Did the policy improve on the prompts it was given?",
        f'<div class="grid">{"".join(cards)}</div>',
    )


def tokens_card(views: list[IterationView], colors: dict[str, str]) -> str:
    names = sorted(
        {k for v in views for k in v.metrics.tokens_generated},
        key=lambda k: STAGE_ORDER.index(k) if k in STAGE_ORDER else 99,
    )
    keyed = {k: colors.get(k, color(len(STAGE_ORDER) + i)) for i, k in enumerate(names)}
    chart = stacked_bars(
        [v.t for v in views],
        {k: [float(v.metrics.tokens_generated.get(k, 0)) for v in views] for k in names},
        keyed,
        "new tokens",
        "tokens generated per iteration",
    )
    return card(
        "Tokens generated",
        chart,
        "New tokens sampled per stage: estimate and solve by the policy, evolve by the creator.",
        legend([(k, keyed[k]) for k in names]),
        "chart-tokens",
    )


# --- creator ---------------------------------------------------------------------------------------------


def creator_section(r: Report) -> str:
    cards = [
        info_histograms(r),
        info_summary_card(r),
        operator_card(r),
        depth_card(r),
        length_card(r),
        train_mix_card(r),
    ]
    intro = (
        "How the creator moved the prompt distribution: what it found informative, what it wrote, and what the "
        "solver trained on."
    )
    return section("creator", "Creator and prompt population", intro, f'<div class="grid">{"".join(cards)}</div>')


def info_histograms(r: Report) -> str:
    views = [v for v in r.iterations if v.t in r.histogram_iterations]
    values = [x for v in views for x in v.info]
    if not values:
        return card(
            "Informativeness distribution",
            None,
            "No committed estimate stage yet (a baseline run has none).",
            chart_id="chart-info-hist",
        )
    lo, hi = min(values), max(values)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, 21).tolist()
    rows = [(f"iteration {v.t}", f"n={len(v.info):,}", np.histogram(v.info, bins=edges)[0].tolist()) for v in views]
    shown = len(r.histogram_iterations)
    total = sum(1 for v in r.iterations if v.info)
    note = (
        "Per iteration, informativeness of every prompt of the estimate stage; each row is scaled to its tallest bar."
    )
    if shown < total:
        note += (
            f" Showing {shown} of {total} iterations, evenly spaced with the first and the last (limit: "
            f"{MAX_HISTOGRAMS} histograms)."
        )
    return card(
        "Informativeness distribution",
        histogram_rows(rows, edges, "informativeness", "informativeness histogram per iteration"),
        note,
        chart_id="chart-info-hist",
    )


def info_summary_card(r: Report) -> str:
    ss = [(v.t, v.metrics.info_summary) for v in r.iterations if v.metrics.info_summary.get("count")]
    chart = line_chart(
        [Series("mean", [(t, s.get("mean")) for t, s in ss], color(1), band=[(t, s["p10"], s["p90"]) for t, s in ss])],
        "informativeness",
        "informativeness mean and p10–p90 per iteration",
    )
    return card(
        "Informativeness over iterations",
        chart,
        "Mean with the p10–p90 band (info_summary of metrics.json); covers every iteration.",
        chart_id="chart-info",
    )


def _category_colors(names: Sequence[str]) -> dict[str, str]:
    evolved = [n for n in names if n != "seed"]
    # the last palette colour is the seed grey
    out = {n: PALETTE[i % (len(PALETTE) - 1)] for i, n in enumerate(evolved)}
    return {"seed": SEED_COLOR, **out} if "seed" in names else out


def operator_card(r: Report) -> str:
    ops = sorted({op for v in r.iterations for op in v.by_operator}, key=lambda o: (o != "seed", o))
    colors = _category_colors(ops)
    chart = stacked_bars(
        [v.t for v in r.iterations],
        {op: [v.by_operator.get(op, 0) for v in r.iterations] for op in ops},
        colors,
        "prompts",
        "buffer prompts by operator",
    )
    return card(
        "Buffer by operator",
        chart,
        "Prompts in the buffer after each iteration, by the operator that wrote them.",
        legend([(op, colors[op]) for op in ops]),
        "chart-operators",
    )


def depth_card(r: Report) -> str:
    depths = sorted({d for v in r.iterations for d in v.by_depth})
    names = {d: "seed (depth 0)" if d == 0 else f"depth {d}" for d in depths}
    colors = {names[d]: SEED_COLOR if d == 0 else PALETTE[(d - 1) % (len(PALETTE) - 1)] for d in depths}
    chart = stacked_bars(
        [v.t for v in r.iterations],
        {names[d]: [v.by_depth.get(d, 0) for v in r.iterations] for d in depths},
        colors,
        "prompts",
        "buffer prompts by depth",
    )
    return card(
        "Buffer by depth",
        chart,
        "Depth = number of rewrites from the seed prompt.",
        legend([(names[d], colors[names[d]]) for d in depths]),
        "chart-depths",
    )


def length_card(r: Report) -> str:
    vs = [v for v in r.iterations if v.length]
    chart = line_chart(
        [
            Series(
                "buffer mean",
                [(v.t, v.length["mean"]) for v in vs],
                color(0),
                band=[(v.t, v.length["p10"], v.length["p90"]) for v in vs],
            ),
            Series("training prompts mean", [(v.t, v.train_length) for v in r.iterations], color(2), dashed=True),
        ],
        "characters",
        "prompt length per iteration",
        fmt="{:.1f}",
    )
    keys = legend(
        [("buffer mean", color(0)), ("buffer p10–p90", "rgba(66,105,208,.25)"), ("training prompts mean", color(2))],
        dashed=["training prompts mean"],
    )
    return card(
        "Prompt length drift",
        chart,
        "Length in characters of the buffer prompts and of the prompts trained on.",
        keys,
        "chart-length",
    )


def train_mix_card(r: Report) -> str:
    names = ("seed", "evolved earlier", "evolved this iteration")
    colors = {"seed": SEED_COLOR, "evolved earlier": color(3), "evolved this iteration": color(0)}
    vs = [v for v in r.iterations if v.t > 0]
    chart = stacked_bars(
        [v.t for v in vs],
        {n: [v.train_mix.get(n, 0) for v in vs] for n in names},
        colors,
        "training prompts",
        "training prompts by origin",
    )
    last = vs[-1] if vs else None
    note = "Training prompts of each iteration (train_prompts.json) by origin."
    total = sum(int(n) for n in last.train_mix.values()) if last is not None else 0
    if last is not None and total:
        share = 1 - last.train_mix.get("seed", 0) / total
        note += f" Evolved share in iteration {last.t}: <b>{share:.0%}</b>."
    return card("Seed vs evolved in training", chart, note, legend([(n, colors[n]) for n in names]), "chart-train-mix")


# --- lineage, table, diff, eval --------------------------------------------------------------------------


def step_html(s: PromptRow) -> str:
    facts = f"info {num(s.info)} · gap {num(s.gap)} · mean reward {num(s.mean_reward)} · born in iteration {s.born}"
    return (
        f'<li class="step" data-id="{esc(s.id)}"><div class="step-head"><span class="op '
        f'op-{esc(s.operator)}">{esc(s.operator)}</span>'
        f'<span class="depth">depth {s.depth}</span><code>{esc(s.id)}</code><span '
        f'class="facts-inline">{esc(facts)}</span></div>'
        f'<div class="text clamp" title="click to expand">{clip(s.text)}</div></li>'
    )


def chain_html(i: int, chain: Chain) -> str:
    last = chain.steps[-1]
    head = f"#{i} · info {num(last.info)} · gap {num(last.gap)} · {_rewrites(chain)}"
    steps = "".join(step_html(s) for s in chain.steps)
    if chain.missing_parent is not None:  # the break goes first: it stands where the unknown older steps would be
        steps = (
            f'<li class="step missing" data-missing="{esc(chain.missing_parent)}"><b>lineage broken:</b> parent '
            f"<code>{esc(chain.missing_parent)}</code> of <code>{esc(chain.steps[0].id)}</code> is not in the buffer; "
            f"the {chain.steps[0].depth} earlier step(s) are unknown</li>{steps}"
        )
    elif chain.cycle:
        steps = (
            f'<li class="step missing"><b>lineage broken:</b> the parents of <code>{esc(chain.steps[0].id)}</code> '
            f"form a cycle</li>{steps}"
        )
    broken = " broken" if chain.broken else ""
    return f'<article class="chain{broken}"><h3>{head}</h3><ol class="steps">{steps}</ol></article>'


def lineage_section(r: Report) -> str:
    if not r.lineage:
        content = '<p class="empty">No prompt has an informativeness yet.</p>'
    else:
        content = f'<div class="lineage">{"".join(chain_html(i, c) for i, c in enumerate(r.lineage, start=1))}</div>'
    intro = (
        f"The {len(r.lineage)} most informative prompts of iteration {r.lineage_iteration}, each with its "
        f"chain from the seed prompt "
        "through every rewrite. Gap = max − min of the prompt's latest rewards; click a text to expand it."
    )
    broken = sum(c.broken for c in r.lineage)
    if broken:
        intro += (
            f' <b class="bad">{broken} of these chains are broken</b> (a parent is missing from the buffer): each '
            f"shows the steps that exist."
        )
    return section("lineage", "Lineage of the most informative prompts", intro, content)


def _rewrites(chain: Chain) -> str:
    if chain.broken:
        return f"depth {chain.steps[-1].depth}, lineage broken"
    n = len(chain.steps) - 1
    return "a seed prompt (no rewrite)" if n == 0 else f"{n} rewrite{'s' if n > 1 else ''} from its seed"


def table_section(r: Report) -> str:
    numeric = {
        "depth",
        "born",
        "info",
        "gap",
        "mean reward",
        "sampled",
        "trained",
    }  # right-aligned over their right-aligned numbers
    head = "".join(
        f'<th class="num">{h}</th>' if h in numeric else f"<th>{h}</th>"
        for h in ("id", "depth", "operator", "born", "info", "gap", "mean reward", "sampled", "trained", "text")
    )
    rows = "".join(
        f'<tr data-id="{esc(p.id)}"><td><code>{esc(p.id)}</code></td><td '
        f'class="num">{p.depth}</td><td>{esc(p.operator)}</td><td class="num">{p.born}</td>'
        f'<td class="num">{num(p.info)}</td><td class="num">{num(p.gap)}</td><td class="num">{num(p.mean_reward)}</td>'
        f'<td class="num">{p.times_sampled}</td><td class="num">{p.times_trained}</td><td class="text"><div '
        f'class="clamp">{clip(p.text)}</div></td></tr>'
        for p in r.table_rows
    )
    if r.table_total > len(r.table_rows):
        limit = (
            f"The buffer holds {r.table_total:,} prompts; the table is capped at {r.max_rows:,} rows and shows "
            f"a uniform random sample "
            f"of {len(r.table_rows):,} (seed 0). <code>eva export RUN --iteration {r.table_iteration}</code> "
            f"writes them all."
        )
    else:
        limit = (
            f"All {r.table_total:,} prompts of the buffer (the table is capped at {r.max_rows:,} rows; larger "
            f"buffers are sampled)."
        )
    search = (
        f'<div class="search"><input id="prompt-search" type="search" placeholder="Filter by text, id or '
        f'operator…" autocomplete="off">'
        f'<span id="prompt-count">{len(r.table_rows):,} of {len(r.table_rows):,} rows</span></div>'
    )
    table = (
        f'<div class="scroll tall"><table '
        f'id="prompt-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )
    intro = f"Prompts of iteration {r.table_iteration}, most informative first. {limit}"
    return section("prompts", f"Prompts of iteration {r.table_iteration}", intro, search + table)


def _prompt_list(rows: Sequence[PromptRow], total: int, what: str) -> str:
    if not rows:
        return f'<p class="empty">No prompt {what}.</p>'
    more = f'<p class="note">Showing {len(rows)} of {total:,}, most informative first.</p>' if total > len(rows) else ""
    items = "".join(
        f'<li><span class="op op-{esc(p.operator)}">{esc(p.operator)}</span> <span class="depth">depth '
        f"{p.depth}</span> "
        f'<span class="facts-inline">info {num(p.info)}</span><div class="text clamp">{clip(p.text)}</div></li>'
        for p in rows
    )
    return f'{more}<ul class="plist">{items}</ul>'


def diff_section(d: Diff | None) -> str:
    if d is None:
        return section("diff", "Diff between iterations", "Only one committed iteration: nothing to compare yet.", "")
    ops = ", ".join(f"{esc(op)} {n}" for op, n in d.added_by_operator.items()) or "–"
    depths = ", ".join(f"depth {k}: {n}" for k, n in d.added_by_depth.items()) or "–"
    stats = (
        f'<ul class="diffstats"><li>buffer <b>{d.size_a:,} → {d.size_b:,}</b> prompts: <b '
        f'id="diff-added">+{d.num_added:,}</b> added, '
        f'<b id="diff-dropped">−{d.num_dropped:,}</b> dropped</li><li>added by operator: {ops}</li><li>added '
        f"by depth: {depths}</li>"
        f"<li>mean prompt length {num(d.mean_length[0], 1)} → {num(d.mean_length[1], 1)} characters</li>"
        f"<li>mean informativeness {num(d.mean_info[0])} → {num(d.mean_info[1])}</li>"
        f"<li>{_train_change(d)}</li></ul>"
    )
    lists = (
        f'<div class="grid"><div class="card"><h3>Added</h3>{_prompt_list(d.added, d.num_added, "added")}</div>'
        f'<div class="card"><h3>Dropped</h3>{_prompt_list(d.dropped, d.num_dropped, "dropped")}</div></div>'
    )
    intro = (
        f"Buffer of iteration {d.a} against iteration {d.b} (<code>eva report --diff A B</code> picks others). "
        f"Buffers only grow, so “dropped” is normally empty."
    )
    return section("diff", f"Diff: iteration {d.a} → {d.b}", intro, stats + lists)


def _train_change(d: Diff) -> str:
    if d.a == 0:  # iteration 0 trains nothing: "no longer trained on" would be meaningless
        return f"training prompts of iteration {d.b}: {d.train_added:,} (iteration 0 trains nothing)"
    return (
        f"training prompts: {d.train_added:,} new in iteration {d.b}, {d.train_dropped:,} of iteration {d.a} no "
        f"longer trained on"
    )


def eval_section(evals: list[dict[str, Any]]) -> str:
    if not evals:
        intro = (
            "No held-out evaluation yet. Run <code>eva eval RUN_DIR --prompts HELD_OUT.jsonl --iteration T</code>, "
            "then regenerate this report."
        )
        return section("eval", "Held-out evaluation", intro, "")
    rows = "".join(
        f"<tr "
        f'data-iteration="{e["iteration"]}"><th>{e["iteration"]}</th>'
        f"{cell(e.get('n'), 'n', 0)}{cell(e.get('win_rate'), 'win_rate', 3)}"
        f"{cell(e.get('win_rate_se'), 'win_rate_se', 3)}{cell(e.get('mean_reward'), 'mean_reward')}"
        f"{cell(e.get('mean_reward_initial'), 'mean_reward_initial')}"
        f"<td>{esc(e.get('prompts', ''))}</td></tr>"
        for e in evals
    )
    table = (
        '<div class="scroll"><table id="eval-table" '
        'class="numbers"><thead><tr><th>iteration</th><th>prompts</th><th>win rate</th><th>± se</th>'
        f"<th>mean reward</th><th>initial policy</th><th>prompt "
        f"file</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    pts = [(e["iteration"], e.get("win_rate")) for e in evals]
    band = [
        (e["iteration"], e["win_rate"] - e["win_rate_se"], e["win_rate"] + e["win_rate_se"])
        for e in evals
        if _finite(e.get("win_rate"), e.get("win_rate_se"))
    ]
    chart = line_chart(
        [
            Series("win rate", pts, color(4), band=band),
            Series("tie level", [(t, 0.5) for t, _ in pts], SEED_COLOR, dashed=True),
        ],
        "win rate vs initial",
        "held-out win rate",
        y_domain=(0.0, 1.0),
    )
    figure = card(
        "Win rate against the initial policy",
        chart,
        "Band: ± one standard error; dashed: 0.5 (no change).",
        chart_id="chart-eval",
    )
    return section(
        "eval",
        "Held-out evaluation",
        "Results of <code>eva eval</code> (eval/iteration_NNNN.json): each policy against the initial one.",
        table + f'<div class="grid">{figure}</div>' + eval_examples(evals[-1]),
    )


def eval_examples(e: dict[str, Any]) -> str:
    """The biggest wins and losses of one evaluated iteration, initial and trained responses side by side."""
    examples = e.get("examples") or {}
    rows = "".join(
        f'<tr data-outcome="{kind}"><td>{kind[:-1] if kind == "wins" else "loss"}</td>{cell(r["delta"], "delta")}'
        f"<td>{esc(r['prompt'])}</td><td>{esc(r['response_initial'])}<br><small>reward "
        f"{r['reward_initial']:.4f}</small></td><td>{esc(r['response'])}<br><small>reward "
        f"{r['reward']:.4f}</small></td></tr>"
        for kind in ("wins", "losses")
        for r in examples.get(kind, [])
    )
    if not rows:
        return ""
    return (
        f"<h3>Iteration {e['iteration']}: biggest wins and losses over the initial policy</h3>"
        f"<p>All responses: <code>{esc(e.get('responses', ''))}</code> (Parquet; <code>eva eval-diff</code>).</p>"
        '<div class="scroll"><table id="eval-examples"><thead><tr><th></th><th>Δ reward</th><th>prompt</th>'
        f"<th>initial policy</th><th>iteration {e['iteration']}</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def footer(r: Report) -> str:
    return (
        f"<footer>Generated by <code>eva report</code> from committed iterations and events.jsonl only. "
        f"Limits: prompt table {r.max_rows:,} rows "
        f"(uniform sample beyond), prompt texts {TEXT_LIMIT:,} characters, informativeness histograms for at "
        f"most {MAX_HISTOGRAMS} iterations, diff lists {DIFF_LIST} prompts each. "
        "Self-contained: no network access; the numbers behind the charts are in the "
        "<code>eva-report-data</code> JSON block.</footer>"
    )


CSS = """
:root{--fg:#1d2433;--muted:#5d6678;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#4269d0}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:24px 28px 48px}
header h1{font-size:24px;margin:0 0 4px}
header .name{color:var(--accent)}
.meta{color:var(--muted);margin:0 0 10px}
.live{background:#fff6dc;border:1px solid #f0d68a;padding:8px 12px;border-radius:6px}
.warn{background:#fdecea;border:1px solid #f1b5ae;color:#7a1f14;padding:8px 12px;border-radius:6px}
.bad{color:#b3261e}
dl.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:6px 18px;margin:12px 0;padding:12px 14px;background:var(--card);border:1px solid var(--line);border-radius:8px}
dl.facts div{min-width:0}
dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0 0}
nav a{padding:4px 10px;border-radius:14px;background:#e8edf9;color:var(--accent);text-decoration:none;font-weight:500}
nav a:hover{background:#d6e0f7}
section{margin-top:34px}
h2{font-size:19px;margin:0 0 2px;padding-bottom:4px;border-bottom:2px solid var(--line)}
.intro{color:var(--muted);margin:6px 0 14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
.card{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;min-width:0}
.card h3{font-size:15px;margin:0 0 2px}
.note{color:var(--muted);font-size:12.5px;margin:0 0 8px}
.empty{color:var(--muted);font-style:italic}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#edf0f4}
svg .axis{stroke:#9aa3b2}
svg .tick{font-size:11px;fill:#5d6678}
svg .axis-title{font-size:11.5px;fill:#3b4456}
svg .line{fill:none;stroke-width:2.2}
svg .point{stroke:#fff;stroke-width:1}
svg .bar:hover,svg .point:hover{opacity:.75}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:6px;font-size:12.5px;color:var(--muted)}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.legend i.dash{width:18px;height:0;border-top:2.5px dashed;border-radius:0;vertical-align:3px}
table{border-collapse:collapse;width:100%;background:var(--card);font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{position:sticky;top:0;background:#eef1f6;font-weight:600;white-space:nowrap;z-index:1}
td.num,table.numbers td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.numbers th,th.num{text-align:right}
table.numbers thead th{white-space:normal;vertical-align:bottom;min-width:52px}
.scroll{overflow:auto;border:1px solid var(--line);border-radius:8px}
.scroll.tall{max-height:640px}
.clamp{display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden;cursor:pointer;white-space:pre-wrap;overflow-wrap:anywhere}
.clamp.open{display:block;-webkit-line-clamp:unset}
td.text{min-width:320px;max-width:640px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#3b4456}
.search{display:flex;align-items:center;gap:12px;margin-bottom:8px}
.search input{flex:0 1 420px;padding:7px 10px;border:1px solid #c9cfda;border-radius:6px;font:inherit}
#prompt-count{color:var(--muted)}
.lineage{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
.chain{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;min-width:0}
.chain h3{font-size:14px;margin:0 0 8px}
ol.steps{list-style:none;margin:0;padding:0}
.step{position:relative;padding:6px 0 6px 16px;border-left:2px solid #c9d4f0;margin-left:6px}
.step::before{content:"";position:absolute;left:-6px;top:12px;width:10px;height:10px;border-radius:50%;background:var(--accent)}
.step:first-child::before{background:#9498a0}
.step.missing{color:#b3261e;font-size:12.5px;border-left-style:dashed}
.step.missing::before{background:#fff;border:2px solid #b3261e}
.step-head{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;font-size:12.5px}
.step .text{margin-top:3px}
.op{padding:1px 7px;border-radius:10px;background:#e8edf9;color:#2f4fa8;font-size:12px;font-weight:600}
.op-seed{background:#eceef2;color:#505a6b}
.depth,.facts-inline,.cut{color:var(--muted);font-size:12.5px}
ul.diffstats{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px 10px 32px;margin:0 0 16px}
ul.plist{list-style:none;margin:0;padding:0;max-height:520px;overflow:auto}
ul.plist li{padding:6px 0;border-bottom:1px solid var(--line)}
footer{margin-top:40px;color:var(--muted);font-size:12.5px;border-top:1px solid var(--line);padding-top:12px}
"""  # noqa: E501 (CSS, one rule per line)

# Filters the prompt table as the user types; expands a clamped text on click. No other script.
SCRIPT = """
(function () {
  var box = document.getElementById("prompt-search");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#prompt-table tbody tr"));
  var haystack = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var count = document.getElementById("prompt-count");
  function filter() {
    var q = box.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (r, i) { var hit = !q || haystack[i].indexOf(q) !== -1; r.hidden = !hit; if (hit) shown++; });
    count.textContent = shown.toLocaleString("en-US") + " of " + rows.length.toLocaleString("en-US") + " rows";
  }
  if (box) box.addEventListener("input", filter);
  document.addEventListener("click", function (e) {
    var t = e.target.closest && e.target.closest(".clamp");
    if (t) t.classList.toggle("open");
  });
})();
"""
