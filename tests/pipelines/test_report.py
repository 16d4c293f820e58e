"""`eva report`: the numbers on the page, escaping, limits, errors, and a real headless browser.

Two kinds of run directory: `reference_run` (the real two-iteration tiny run, marked `ray`) and a
synthetic one written here with the eva core only (RunDir and its IterationDir writers) in well
under a second, for the cases a real run cannot produce on demand: hostile prompt text, a buffer
larger than the table limit, a run stopped mid-iteration, held-out eval results.

The browser tests need Debian's chromium and the playwright Python package (which must not download
its own browser):  apt-get install -y chromium  &&  pip install playwright
They skip, saying so, when either is missing, except under EVA_REQUIRE_BROWSER=1 (set by .ci/run),
where a missing browser fails the test instead. The browser test keeps what a human should look at
after CI in EVA_ARTIFACTS (default <repo>/artifacts/): the report itself and its screenshots.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.compute as pc
import pytest

from eva.buffer import PromptBuffer
from eva.checkpoint import MANIFEST, RunDir, atomic_write_json
from eva.config import load_config
from eva.iteration import METRICS, PROMPTS, SCORED
from eva.metrics import summarize
from eva.tables import write_table
from eva.types import IterationMetrics, Prompt, ScoredPrompt, Timing
from pipelines.report import build_report
from pipelines.report_data import DIFF_LIST, MAX_HISTOGRAMS

HOSTILE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & </textarea> "quoted" \'single\''
)
CHROMIUM = os.environ.get("EVA_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EVA_ARTIFACTS") or REPO / "artifacts")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# --- a synthetic run (eva core only, no Ray) ----------------------------------------------------------


def make_run(root: Path, iterations: int = 2, seeds: int = 12, extra_text: str = "") -> RunDir:
    """Iteration 0 (seeds) plus `iterations` committed iterations with every file the report reads."""
    run = RunDir(root)
    run.init(load_config(preset="tiny", overrides=[f"run.dir={root}", f"run.iterations={iterations}"]))
    texts = [f"Explain topic number {i} in plain words." for i in range(seeds)] + ([extra_text] if extra_text else [])
    buffer = PromptBuffer.from_prompts(Prompt.seed(t) for t in texts)
    current = buffer.prompts()
    _commit(run, 0, buffer, current, IterationMetrics(iteration=0, buffer_size=len(buffer)))
    rng = np.random.default_rng(0)
    for t in range(1, iterations + 1):
        run.log_event("iteration_start", iteration=t)
        scored = [ScoredPrompt(p, ("a", "b", "c"), tuple(rng.normal(0.5, 0.1, 3).round(6)), None) for p in current]
        scored = [ScoredPrompt(s.prompt, s.responses, s.rewards, max(s.rewards) - min(s.rewards)) for s in scored]
        run.iteration(t).write_scored("estimate", scored)
        parents = sorted(scored, key=lambda s: -s.info)[:2]
        children = [
            s.prompt.child(
                f"{s.prompt.text} Rewrite {t}.{k}: {extra_text or 'add a constraint'}", ("deepen", "breadth")[k], t
            )
            for s in parents
            for k in range(2)
        ]
        buffer.add(children)
        run.iteration(t).write_evolved(children)
        current = children + buffer.prompts(buffer.ids()[:1])
        solved = [
            ScoredPrompt(p, ("a", "b", "c"), tuple(rng.normal(0.5 + 0.02 * t, 0.1, 3).round(6)), 0.1) for p in current
        ]
        buffer.update_stats(scored, t)
        buffer.update_stats(solved, t)
        metrics = IterationMetrics(
            iteration=t,
            stage_seconds={"estimate": 2.0 + t, "evolve": 1.5, "solve": 3.0, "train": 4.0, "commit": 0.0},
            info_summary=summarize([s.info for s in scored]),
            reward_summary=summarize([r for s in solved for r in s.rewards]),
            num_sampled=len(parents),
            num_evolved=len(children),
            num_train_prompts=len(current),
            num_pairs=len(current),
            mean_margin=0.1 * t,
            train_loss=0.69 - 0.01 * t,
            reward_accuracy=0.5 + 0.03 * t,
            train_steps=3,
            buffer_size=len(buffer),
            timing=Timing(sync_s=0.01),
        )
        run.log_event("stage_end", iteration=t, stage="commit", seconds=0.25)
        _commit(run, t, buffer, current, metrics)
        run.log_event("iteration_end", iteration=t)
    return run


def _commit(run: RunDir, t: int, buffer: PromptBuffer, train: list[Prompt], metrics: IterationMetrics) -> None:
    folder = run.iteration(t)
    folder.write_buffer(buffer)
    folder.write_train_ids([p.id for p in train])
    folder.write_metrics(metrics)
    run.commit(t)


# --- reading the page back ------------------------------------------------------------------------------
#
# The checks read what a reader sees: the visible text of the tables and the marks of the SVG charts
# (where a point is drawn on the y axis, not only the number it carries), and compare them with the
# run's own files (metrics.json, events.jsonl, prompts.parquet, train_prompts.json). The page's JSON
# data block is a copy of the same numbers and is not used as evidence.

SVG = "{http://www.w3.org/2000/svg}"


class Cells(HTMLParser):
    """Collects the data-key/data-value cells of every row that has a data-iteration attribute."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.row, self.key = table_id, False, None, None
        self.cells: dict[tuple[int, str], tuple[str, str]] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tr" and "data-iteration" in a:
            self.row = int(a["data-iteration"])
        elif self.inside and tag == "td" and "data-key" in a and self.row is not None:
            self.key = a["data-key"]
            self.cells[(self.row, self.key)] = (a["data-value"], "")

    def handle_data(self, data: str) -> None:
        if self.key is not None:
            value, text = self.cells[(self.row, self.key)]
            self.cells[(self.row, self.key)] = (value, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.key = None
        elif tag == "table":
            self.inside = False


def page_data(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="eva-report-data">(.*?)</script>', html, re.S)
    assert block is not None
    return json.loads(block.group(1))


def summary_cells(html: str, table_id: str = "summary-table") -> dict[tuple[int, str], tuple[str, str]]:
    parser = Cells(table_id)
    parser.feed(html)
    return parser.cells


def shown(x, digits: int = 4) -> str:
    """How the page prints a number (the spec, written out here rather than imported)."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:,}" if isinstance(x, int) else f"{x:,.{digits}f}"


def check_cell(cells: dict, t: int, key: str, expected, text: str) -> None:
    """The exact value sits in data-value, the formatted one is the visible text."""
    value, seen = cells[(t, key)]
    assert value == ("" if expected is None else repr(expected) if isinstance(expected, float) else str(expected)), (
        t,
        key,
    )
    assert seen == text, (t, key, seen, text)


def text_of(fragment: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


# --- the run's own numbers, read independently of pipelines.report --------------------------------------------


def committed(run: RunDir) -> list[int]:
    return [t for t in run.iterations() if run.committed(t)]


def metrics_of(run: RunDir) -> dict[int, dict]:
    """metrics.json as JSON, on purpose not through IterationMetrics: the page is checked against
    the file the loop wrote, in the shape it wrote it."""
    return {t: json.loads(run.iteration(t).file(METRICS).read_text()) for t in committed(run)}


def stage_seconds_of(run: RunDir, t: int, metrics: dict) -> dict[str, float]:
    """metrics.json's stage seconds, a zero replaced by the stage_end event (the rule the page states)."""
    seconds = {s: float(v) for s, v in metrics["stage_seconds"].items()}
    for e in run.events():
        if e.get("kind") == "stage_end" and e.get("iteration") == t and not seconds.get(e["stage"]):
            seconds[e["stage"]] = float(e["seconds"])
    return {s: v for s, v in seconds.items() if v > 0}


# --- reading the charts ------------------------------------------------------------------------------------------


def charts(html: str) -> dict[str, ET.Element]:
    """The SVG of every chart card, by the card's id (our SVG is well-formed XML)."""
    out = {}
    for m in re.finditer(r'<figure class="card" id="([\w-]+)">(.*?)</figure>', html, re.S):
        svg = re.search(r"<svg .*?</svg>", m.group(2), re.S)
        if svg is not None:
            out[m.group(1)] = ET.fromstring(svg.group(0))
    return out


class YScale:
    """Pixel -> value along a chart's y axis, from its grid lines; checks the tick labels on the way."""

    def __init__(self, svg: ET.Element) -> None:
        grid = [
            (float(g.get("data-value")), float(g.get("y1"))) for g in svg.iter(f"{SVG}line") if g.get("class") == "grid"
        ]
        labels = [
            (float(t.get("data-value")), t.text) for t in svg.iter(f"{SVG}text") if "y-tick" in (t.get("class") or "")
        ]
        assert len(grid) >= 2 and [v for v, _ in grid] == [v for v, _ in labels]
        step = abs(grid[1][0] - grid[0][0])
        for v, label in labels:  # the reader's axis: each label names the value of its grid line
            assert abs(float(label.replace(",", "")) - v) <= step / 2, (label, v)
        (self.v0, self.y0), (v1, y1) = grid[0], grid[-1]
        self.per_px = (v1 - self.v0) / (y1 - self.y0)
        self.tol = abs(self.per_px) * 0.15  # coordinates are printed to 0.1 px

    def value(self, px: float) -> float:
        return self.v0 + (px - self.y0) * self.per_px


def plotted(svg: ET.Element, series: str) -> dict[int, float]:
    """{iteration: y} of one line series: the exact value a point carries, after checking that its
    position on the axis and its tooltip say the same."""
    scale, out = YScale(svg), {}
    for c in svg.iter(f"{SVG}circle"):
        if c.get("data-series") == series:
            t, y = int(c.get("data-x")), float(c.get("data-y"))
            assert scale.value(float(c.get("cy"))) == pytest.approx(y, abs=scale.tol), (series, t)
            tip = c.find(f"{SVG}title").text  # "<series>, iteration <t>: <value as printed>"
            assert tip.startswith(f"{series}, iteration {t}: ") and float(tip.rsplit(": ", 1)[1]) == pytest.approx(
                y, rel=1e-3, abs=0.051
            ), tip
            out[t] = y
    return out


def band(svg: ET.Element, series: str) -> dict[int, tuple[float, float]]:
    """{iteration: (lo, hi)} of the p10-p90 band under a series, read from the polygon's vertices."""
    scale = YScale(svg)
    x_of = {
        float(c.get("cx")): int(c.get("data-x")) for c in svg.iter(f"{SVG}circle") if c.get("data-series") == series
    }
    poly = next(p for p in svg.iter(f"{SVG}polygon") if p.get("data-series") == series)
    pts = [tuple(map(float, xy.split(","))) for xy in poly.get("points").split()]
    top, bottom = pts[: len(pts) // 2], pts[len(pts) // 2 :][::-1]
    return {x_of[x]: (scale.value(lo), scale.value(hi)) for (x, hi), (_, lo) in zip(top, bottom, strict=True)}


def bars(svg: ET.Element) -> dict[int, dict[str, float]]:
    """{iteration: {stack: value}} of a stacked bar chart; checks that the top of every segment sits
    at the running total on the y axis."""
    scale, out = YScale(svg), {}
    for r in svg.iter(f"{SVG}rect"):
        if r.get("data-stack") is not None:
            stack = out.setdefault(int(r.get("data-x")), {})
            stack[r.get("data-stack")] = float(r.get("data-value"))
            assert scale.value(float(r.get("y"))) == pytest.approx(sum(stack.values()), abs=scale.tol), (
                r.get("data-x"),
                r.get("data-stack"),
            )
    return out


def assert_band(svg: ET.Element, series: str, lo: dict[int, float], hi: dict[int, float]) -> None:
    drawn = band(svg, series)
    assert sorted(drawn) == sorted(lo) == sorted(hi), series
    tol = YScale(svg).tol
    for t, (d_lo, d_hi) in drawn.items():
        assert (d_lo, d_hi) == (pytest.approx(lo[t], abs=tol), pytest.approx(hi[t], abs=tol)), (series, t)


def check_charts(html: str, run: RunDir) -> None:
    """Every curve and bar of the Solver and Creator sections against the run's files."""
    svgs, metrics = charts(html), metrics_of(run)
    trained = [t for t in metrics if t > 0]

    def field(key: str) -> dict[int, float]:
        return {t: metrics[t][key] for t in trained if metrics[t].get(key) is not None}

    def summary(name: str, key: str) -> dict[int, float]:
        return {t: m[name][key] for t, m in metrics.items() if m.get(name, {}).get("count")}

    assert plotted(svgs["chart-loss"], "train loss") == field("train_loss") != {}
    assert plotted(svgs["chart-accuracy"], "reward accuracy") == field("reward_accuracy") != {}
    assert plotted(svgs["chart-margin"], "mean margin") == field("mean_margin") != {}
    assert plotted(svgs["chart-reward"], "mean") == summary("reward_summary", "mean") != {}
    assert plotted(svgs["chart-reward"], "median") == summary("reward_summary", "p50")
    assert_band(svgs["chart-reward"], "mean", summary("reward_summary", "p10"), summary("reward_summary", "p90"))
    assert plotted(svgs["chart-info"], "mean") == summary("info_summary", "mean") != {}
    assert_band(svgs["chart-info"], "mean", summary("info_summary", "p10"), summary("info_summary", "p90"))
    stages = bars(svgs["chart-stages"])
    for t in trained:
        expected = stage_seconds_of(run, t, metrics[t])
        assert stages[t] == expected, t
        assert sum(stages[t].values()) == pytest.approx(sum(expected.values()))
    tokens = {t: {k: float(v) for k, v in metrics[t].get("tokens_generated", {}).items() if v} for t in trained}
    assert bars(svgs["chart-tokens"]) == tokens if any(tokens.values()) else "chart-tokens" not in svgs
    buffers = {t: run.iteration(t).buffer().prompts() for t in metrics}
    assert bars(svgs["chart-operators"]) == {
        t: {k: float(n) for k, n in Counter(p.operator for p in ps).items()} for t, ps in buffers.items()
    }
    depth_name = lambda d: "seed (depth 0)" if d == 0 else f"depth {d}"  # noqa: E731
    assert bars(svgs["chart-depths"]) == {
        t: {depth_name(d): float(n) for d, n in Counter(p.depth for p in ps).items()} for t, ps in buffers.items()
    }
    trained_on = {t: [p for p in buffers[t] if p.id in set(run.iteration(t).train_ids())] for t in trained}
    origin = lambda p, t: (  # noqa: E731
        "seed" if p.depth == 0 else "evolved this iteration" if p.iteration == t else "evolved earlier"
    )
    assert bars(svgs["chart-train-mix"]) == {
        t: {k: float(n) for k, n in Counter(origin(p, t) for p in ps).items()} for t, ps in trained_on.items()
    }
    mean_length = lambda ps: float(np.mean([len(p.text) for p in ps]))  # noqa: E731
    length = svgs["chart-length"]
    assert plotted(length, "buffer mean") == pytest.approx({t: mean_length(ps) for t, ps in buffers.items()})
    # none in iteration 0
    assert plotted(length, "training prompts mean") == pytest.approx(
        {t: mean_length(ps) for t, ps in trained_on.items()}
    )


def check_summary_table(html: str, run: RunDir) -> None:
    """Every cell of the summary table: its exact value and its visible text, from metrics.json."""
    cells = summary_cells(html)
    for t, m in metrics_of(run).items():
        rs, info = m["reward_summary"], m["info_summary"]
        expected = {
            "buffer_size": (m["buffer_size"], 0),
            "num_sampled": (m["num_sampled"], 0),
            "num_evolved": (m["num_evolved"], 0),
            "num_train_prompts": (m["num_train_prompts"], 0),
            "num_pairs": (m["num_pairs"], 0),
            "train_steps": (m["train_steps"], 0),
            "reward_mean": (rs.get("mean"), 4),
            "reward_p10": (rs.get("p10"), 4),
            "reward_p90": (rs.get("p90"), 4),
            "info_mean": (info.get("mean"), 4),
            "mean_margin": (m["mean_margin"], 4),
            "train_loss": (m["train_loss"], 4),
            "reward_accuracy": (m["reward_accuracy"], 3),
        }
        for key, (value, digits) in expected.items():
            check_cell(cells, t, key, value, shown(value, digits))
        wall = round(float(sum(stage_seconds_of(run, t, m).values())), 3)
        assert (
            float(cells[(t, "wall_seconds")][0]) == pytest.approx(wall)
            and cells[(t, "wall_seconds")][1] == f"{wall:,.1f}"
        )
    assert sorted({t for t, _ in cells}) == committed(run)


def check_lineage_and_table(html: str, run: RunDir, max_rows: int) -> None:
    """The lineage chains are the buffer's own ancestry; the prompt table shows the buffer's stats."""
    last = run.iteration(committed(run)[-1]).buffer()
    chains = re.findall(r'<article class="chain">(.*?)</article>', html, re.S)
    assert len(chains) == min(10, int(np.isfinite(last.info_array()).sum())) > 0
    for chain in chains:
        ids = re.findall(r'<li class="step" data-id="(\w+)">', chain)
        assert ids == [p.id for p in last.ancestry(ids[-1])]
        assert f"info {shown(last.stats(ids[-1])['info'])}" in text_of(chain.split("</h3>")[0])
    rows = re.findall(r'<tr data-id="(\w+)">(.*?)</tr>', html, re.S)
    assert len(rows) == min(len(last), max_rows) and {pid for pid, _ in rows} <= set(last.ids())
    for pid, row in rows:
        st, p = last.stats(pid), last.get(pid)
        texts = [text_of(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        gap = max(st["rewards"]) - min(st["rewards"]) if len(st["rewards"]) >= 2 else None
        assert texts[:9] == [
            pid,
            str(p.depth),
            p.operator,
            str(p.iteration),
            shown(st["info"]),
            shown(gap),
            shown(st["mean_reward"]),
            str(st["times_sampled"]),
            str(st["times_trained"]),
        ], pid


# --- (a) the numbers on the page ----------------------------------------------------------------------------------


@pytest.mark.ray
def test_report_of_the_tiny_run_matches_metrics_json(eva, reference_run: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = eva("report", str(reference_run), "--out", str(out))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert str(out / "index.html") in proc.stdout.replace("\n", "")
    run = RunDir(reference_run)
    assert committed(run) == [0, 1, 2]
    assert "iterations committed: <b>2 of 2</b>" in html and '<b id="run-state">complete</b>' in html
    check_summary_table(html, run)
    check_charts(html, run)
    check_lineage_and_table(html, run, max_rows=2000)
    first, last = (run.iteration(t).buffer() for t in (0, 2))
    assert f'<b id="diff-added">+{len(last) - len(first)}</b> added' in html and len(last) > len(first)
    assert f"All {len(last)} prompts of the buffer" in html
    assert "No held-out evaluation yet" in html and 'class="warn"' not in html


def test_every_chart_of_a_synthetic_run_plots_its_files(tmp_path: Path):
    run = make_run(tmp_path / "run", iterations=3)
    html = build_report(run.root, tmp_path / "out").read_text(encoding="utf-8")
    check_summary_table(html, run)
    check_charts(html, run)
    check_lineage_and_table(html, run, max_rows=2000)


def test_the_chart_check_fails_when_a_chart_plots_the_wrong_field(tmp_path: Path, monkeypatch):
    """The checks above must be able to fail: a loss chart fed the pair margin, and a point drawn at
    the wrong height while still labelled with the right value, are both caught."""
    from pipelines import report_html

    run = make_run(tmp_path / "run", iterations=2)
    specs = [
        spec[:5] + ("mean_margin",) + spec[6:] if spec[0] == "chart-loss" else spec
        for spec in report_html.METRIC_CHARTS
    ]
    monkeypatch.setattr(report_html, "METRIC_CHARTS", tuple(specs))
    wrong_field = build_report(run.root, tmp_path / "wrong").read_text(encoding="utf-8")
    with pytest.raises(AssertionError):
        check_charts(wrong_field, run)
    monkeypatch.undo()
    html = build_report(run.root, tmp_path / "right").read_text(encoding="utf-8")
    check_charts(html, run)
    point = re.search(r'(<circle class="point" data-series="train loss" [^>]*? cy=")([\d.]+)"', html)
    moved = html.replace(point.group(0), f'{point.group(1)}{float(point.group(2)) + 9:.1f}"')
    with pytest.raises(AssertionError):
        check_charts(moved, run)


# --- synthetic runs: escaping, limits, progress, eval, errors ----------------------------------------------------


def test_hostile_prompt_text_is_escaped_everywhere(tmp_path: Path):
    make_run(tmp_path / "run", extra_text=HOSTILE)
    html = build_report(tmp_path / "run", tmp_path / "out").read_text(encoding="utf-8")
    assert "window.__pwned" in html  # the text is there ...
    # ... but never as markup
    assert "<script>window" not in html and "<img src=x" not in html and "</textarea>" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=&quot;" in html
    assert html.count("<script") == 2  # the JSON data block and the page's own script, nothing else
    data_block = html.split('id="eva-report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_block and ">" not in data_block
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_a_run_over_every_size_limit_renders_within_the_limits_and_says_so(tmp_path: Path):
    """14 estimated iterations (> MAX_HISTOGRAMS), 176 prompts (> --max-rows 50), 56 added (> DIFF_LIST)."""
    iterations = MAX_HISTOGRAMS + 2
    run = make_run(tmp_path / "run", iterations=iterations, seeds=120)
    html = build_report(run.root, tmp_path / "out", max_rows=50).read_text(encoding="utf-8")
    size = len(run.iteration(iterations).buffer())
    assert size == 120 + 4 * iterations
    # histograms: at most the limit, evenly spread from the first estimated iteration to the last,
    # each with its own count
    rows = [
        (g.get("data-row"), g) for g in charts(html)["chart-info-hist"].iter(f"{SVG}g") if g.get("class") == "hist-row"
    ]
    picked = [int(name.removeprefix("iteration ")) for name, _ in rows]
    assert (
        len(picked) == MAX_HISTOGRAMS and picked[0] == 1 and picked[-1] == iterations and picked == sorted(set(picked))
    )
    for t, (_, g) in zip(picked, rows, strict=True):
        n = int(
            np.isfinite(run.iteration(t).scored_table("estimate").column("info").to_numpy(zero_copy_only=False)).sum()
        )
        assert [x.text for x in g.iter(f"{SVG}text")][1] == f"n={n:,}"
    assert (
        f"Showing {MAX_HISTOGRAMS} of {iterations} iterations, evenly spaced with the first and the last "
        f"(limit: {MAX_HISTOGRAMS} histograms)." in html
    )
    assert len(plotted(charts(html)["chart-loss"], "train loss")) == iterations  # the curves are never subsampled
    # prompt table: a uniform sample of max_rows, the same one every time
    assert html.count("<tr data-id=") == 50
    assert f"holds {size} prompts; the table is capped at 50 rows and shows a uniform random sample of 50" in html
    again = build_report(run.root, tmp_path / "out2", max_rows=50).read_text(encoding="utf-8")
    assert re.findall(r'<tr data-id="(\w+)"', html) == re.findall(r'<tr data-id="(\w+)"', again)
    # diff lists: at most DIFF_LIST prompts each
    added = html.split("<h3>Added</h3>", 1)[1].split("</ul>", 1)[0]
    assert (
        added.count("<li>") == DIFF_LIST < size - 120
        and f"Showing {DIFF_LIST} of {size - 120:,}, most informative first." in added
    )
    assert (
        f"informativeness histograms for at most {MAX_HISTOGRAMS} iterations, diff lists {DIFF_LIST} prompts each"
        in html
    )


def test_very_long_prompts_are_cut_and_the_cut_is_said(tmp_path: Path):
    long_text = "word " * 1000  # a seed of 5,000 characters
    make_run(tmp_path / "run", iterations=1, seeds=3, extra_text=long_text)
    html = build_report(tmp_path / "run", tmp_path / "out").read_text(encoding="utf-8")
    assert "(3,000 more characters)" in html
    assert long_text[:2500] not in html


def test_a_run_in_progress_reports_committed_iterations_only(tmp_path: Path):
    run = make_run(tmp_path / "run", iterations=2)
    cfg = run.config()
    run.init(cfg.model_copy(update={"run": cfg.run.model_copy(update={"iterations": 3})}))
    run.log_event("iteration_start", iteration=3)
    run.log_event("stage_end", iteration=3, stage="estimate", seconds=1.0)
    (run.iteration_dir(3)).mkdir()
    run.iteration(3).file(SCORED["estimate"]).write_bytes(b"half-written")  # never read: not committed
    html = build_report(run.root, tmp_path / "out").read_text(encoding="utf-8")
    data = page_data(html)
    assert [it["iteration"] for it in data["iterations"]] == [0, 1, 2]
    assert data["status"] == {"state": "in progress (or stopped mid-iteration)", "committed": [0, 1, 2], "current": 3}
    assert "Iteration 3 started and is not committed: estimate." in html
    assert data["iterations"][2]["stage_seconds"]["commit"] == 0.25  # metrics.json has 0: filled from events.jsonl


def test_held_out_eval_results_are_shown(tmp_path: Path):
    run = make_run(tmp_path / "run")
    result = {
        "iteration": 2,
        "n": 40,
        "win_rate": 0.6125,
        "win_rate_se": 0.07,
        "mean_reward": 0.55,
        "mean_reward_initial": 0.5,
        "prompts": "held.jsonl",
    }
    atomic_write_json(run.eval_path(2), result)
    atomic_write_json(run.eval_path(9), {**result, "iteration": 9})  # not committed: ignored
    html = build_report(run.root, tmp_path / "out").read_text(encoding="utf-8")
    cells = summary_cells(html, "eval-table")
    check_cell(cells, 2, "win_rate", 0.6125, "0.613")
    check_cell(cells, 2, "mean_reward_initial", 0.5, "0.5000")
    assert [e["iteration"] for e in page_data(html)["evals"]] == [2]
    assert 'id="chart-eval"' in html


def test_missing_or_uncommitted_run_exits_2(eva, tmp_path: Path):
    proc = eva("report", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr and "Traceback" not in proc.stderr
    run = RunDir(tmp_path / "fresh")
    run.init(load_config(preset="tiny"))
    (run.iteration_dir(0)).mkdir(parents=True)  # started, nothing committed yet
    proc = eva("report", str(run.root), check=False)
    assert proc.returncode == 2 and "no committed iteration" in proc.stderr
    make_run(tmp_path / "run")
    proc = eva("report", str(tmp_path / "run"), "--diff", "0", "7", check=False)
    assert proc.returncode == 2 and "iteration 7 is not committed" in proc.stderr
    proc = eva("report", str(tmp_path / "run"), "--diff", "0", "1", "--iteration", "1")
    assert (tmp_path / "run" / "report" / "index.html").is_file() and "Diff: iteration 0 → 1" in (
        tmp_path / "run" / "report" / "index.html"
    ).read_text()
    RunDir(tmp_path / "run").iteration(1).file(METRICS).write_text("[1, 2")  # a committed file torn after the fact
    proc = eva("report", str(tmp_path / "run"), check=False)
    # the message names the file as the user knows it: the on-disk name, spelled out on purpose
    assert (
        proc.returncode == 2
        and "iterations/0001/metrics.json: not valid JSON" in proc.stderr.replace("\n", "")
        and "Traceback" not in proc.stderr
    )


def _drop_prompt(run: RunDir, t: int, pid: str) -> None:
    """Damage committed iteration t the way a bad copy or a hand edit would: remove one row of its
    prompts.parquet, then commit it again so the manifest matches (the damage is in the data, not
    the checksums)."""
    folder = run.iteration(t)
    table = folder.buffer().to_table()
    # by hand: no writer drops a prompt
    write_table(table.filter(pc.not_equal(table.column("id"), pid)), folder.file(PROMPTS))
    folder.file(MANIFEST).unlink()
    run.commit(t)


def test_a_broken_lineage_is_reported_not_a_traceback(eva, tmp_path: Path):
    run = make_run(tmp_path / "run", iterations=2)
    buffer = run.iteration(2).buffer()
    orphan = next(p for p in buffer.prompts() if p.depth == 2)
    missing = orphan.parent_id
    _drop_prompt(run, 2, missing)
    with pytest.raises(KeyError):  # what the report used to die of
        run.iteration(2).buffer().ancestry(orphan.id)
    proc = eva("report", str(run.root), "--top", "100", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    html = (run.root / "report" / "index.html").read_text(encoding="utf-8")
    chain = next(
        c
        for c in re.findall(r'<article class="chain broken">(.*?)</article>', html, re.S)
        if f'data-id="{orphan.id}"' in c
    )
    assert re.findall(r'<li class="step[^"]*" data-(?:id|missing)="(\w+)"', chain) == [
        missing,
        orphan.id,
    ]  # the break first, then what exists
    assert (
        f"lineage broken: parent {missing} of {orphan.id} is not in the buffer; the 2 earlier step(s) are unknown"
        in text_of(chain)
    )  # depth 2: parent and seed
    warning = text_of(re.search(r'<p class="warn">(.*?)</p>', html).group(1))
    assert warning.startswith(
        "Damaged lineage in the buffer of iteration 2 (read from iterations/0002/prompts.parquet): "
    )
    assert missing in warning
    assert "of these chains are broken" in html
    healthy = re.findall(r'<article class="chain">(.*?)</article>', html, re.S)
    assert healthy and all('class="step missing"' not in c for c in healthy)


def test_a_lineage_cycle_is_cut_and_marked():
    from pipelines.report import lineage_chain

    a = Prompt(id="a" * 16, text="a", parent_id="b" * 16, root_id="r", depth=2, operator="deepen", iteration=1)
    b = Prompt(id="b" * 16, text="b", parent_id="a" * 16, root_id="r", depth=1, operator="deepen", iteration=1)
    chain = lineage_chain(PromptBuffer.from_prompts([a, b]), a.id)
    assert chain.cycle and chain.broken and chain.missing_parent is None
    assert [s.id for s in chain.steps] == [b.id, a.id]


# --- (b) a real headless browser --------------------------------------------------------------------------------


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine without a browser; fail where one is required (CI), so the
    browser checks can never silently not run there."""
    if os.environ.get("EVA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"EVA_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser_page(tmp_path: Path):
    """A Playwright page in Debian's chromium (headless, fresh profile); collects console errors and
    every request that is not a local file (a self-contained report makes none)."""
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("needs the playwright package: pip install playwright (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1)")
    if not Path(CHROMIUM).is_file():
        skip_or_fail(f"needs Debian chromium at {CHROMIUM} (or EVA_CHROMIUM=PATH): apt-get install -y chromium")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 900},
        )
        page = context.new_page()
        seen = SimpleNamespace(page=page, errors=[], remote=[])
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        page.on("request", lambda r: seen.remote.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        yield seen
        context.close()


@pytest.mark.ray
def test_report_renders_in_a_real_browser(browser_page, reference_run: Path):
    path = build_report(reference_run, ARTIFACTS / "report")  # kept: a human can open it after CI
    page = browser_page.page
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    assert browser_page.errors == [] and browser_page.remote == []
    charts = page.locator("svg.chart")
    assert charts.count() >= 10
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100, i
        assert charts.nth(i).locator("circle, rect, polyline").count() > 0, i
    for chart_id in (
        "chart-reward",
        "chart-loss",
        "chart-margin",
        "chart-stages",
        "chart-tokens",
        "chart-info-hist",
        "chart-operators",
        "chart-depths",
        "chart-length",
        "chart-train-mix",
    ):
        assert page.locator(f"#{chart_id} svg.chart").is_visible(), chart_id
    run = RunDir(reference_run)
    for t, m in metrics_of(run).items():  # the numbers as rendered (inner_text: what CSS lets the reader see)
        if t > 0:
            assert page.inner_text(f'#summary-table tr[data-iteration="{t}"] td[data-key="reward_mean"]') == shown(
                m["reward_summary"]["mean"]
            )
            assert page.inner_text(f'#summary-table tr[data-iteration="{t}"] td[data-key="train_loss"]') == shown(
                m["train_loss"]
            )
    last = run.iteration(committed(run)[-1]).buffer()
    chains = page.locator(".lineage .chain")
    assert chains.count() == min(10, int(np.isfinite(last.info_array()).sum())) > 0
    target = chains.first.locator(".step").last.get_attribute("data-id")
    assert chains.first.is_visible() and chains.first.locator(".step").count() == len(last.ancestry(target))
    rows = page.locator("#prompt-table tbody tr")
    total = rows.count()
    page.fill("#prompt-search", target)
    assert page.locator("#prompt-table tbody tr:visible").count() == 1
    assert page.locator(f'#prompt-table tr[data-id="{target}"]').is_visible()
    assert page.text_content("#prompt-count") == f"1 of {total} rows"
    page.fill("#prompt-search", "no prompt contains this §§")
    assert page.locator("#prompt-table tbody tr:visible").count() == 0
    page.fill("#prompt-search", "")
    assert page.locator("#prompt-table tbody tr:visible").count() == total == len(last)
    shot = ARTIFACTS / "report_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    for anchor in ("solver", "creator", "lineage"):  # one readable picture per section; the full page is very tall
        page.locator(f"#{anchor}").screenshot(path=str(ARTIFACTS / f"report_{anchor}.png"))
    print(f"report and screenshots: {ARTIFACTS}")
    assert shot.stat().st_size > 50_000 and browser_page.errors == []


def test_hostile_prompt_stays_inert_in_a_real_browser(browser_page, tmp_path: Path):
    make_run(tmp_path / "run", extra_text=HOSTILE)
    path = build_report(tmp_path / "run", tmp_path / "out")
    page = browser_page.page
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert browser_page.errors == [] and browser_page.remote == []
    page.fill("#prompt-search", "__pwned")
    visible = page.locator("#prompt-table tbody tr:visible")
    assert visible.count() >= 1
    assert "<script>window.__pwned = 1</script>" in visible.first.inner_text()  # shown as text
    clamp = visible.first.locator(".clamp")
    clamp.click()
    assert "open" in (clamp.get_attribute("class") or "")


def test_chart_ticks_are_round_and_cover_the_data():
    from pipelines.report_svg import fmt_tick, nice_ticks

    ticks = nice_ticks(4.9617, 4.9992)  # range 0.0375 / 5 ticks = 0.0075 -> step 0.01
    assert ticks == pytest.approx([4.96, 4.97, 4.98, 4.99, 5.0])
    assert [fmt_tick(v, ticks) for v in ticks[:2]] == ["4.96", "4.97"]
    assert nice_ticks(0, 27.6) == [0, 10, 20, 30]
    assert nice_ticks(0, 0.25) == pytest.approx([0, 0.05, 0.1, 0.15, 0.2, 0.25])
    assert [fmt_tick(v, [0, 0.25, 0.5]) for v in (0, 0.25, 0.5)] == ["0.00", "0.25", "0.50"]
    one = nice_ticks(5.0, 5.0)  # a single value still gets a readable window around it
    assert one[0] < 5.0 < one[-1] and len(one) >= 3
    assert [fmt_tick(v, [0, 25_000, 50_000]) for v in (0, 25_000)] == ["0", "25,000"]
    # a train loss of a tiny run, 0.69273..0.69305: ticks 1e-4 apart (their difference is 9.99...e-05 in floats)
    ticks = nice_ticks(0.6927311420440674, 0.693047308921814)
    assert [fmt_tick(v, ticks) for v in ticks] == ["0.6927", "0.6928", "0.6929", "0.6930", "0.6931"]
    ticks = nice_ticks(0.692731, 0.692738)  # steps below 1e-4 keep every digit that tells ticks apart
    assert [float(fmt_tick(v, ticks)) for v in ticks] == pytest.approx(ticks, abs=1e-9) and len(
        {fmt_tick(v, ticks) for v in ticks}
    ) == len(ticks)
    assert [fmt_tick(v, [0, 2e-5, 4e-5]) for v in (2e-5, 4e-5)] == ["2e-05", "4e-05"]
    assert [fmt_tick(v, [1_000_000, 1_010_000]) for v in (1_000_000, 1_010_000)] == ["1e+06", "1.01e+06"]


def test_line_chart_keeps_every_point_on_the_chart():
    from pipelines.report_svg import MARGIN_TOP, Series, line_chart

    chart = ET.fromstring(
        line_chart([Series("s", [(1, 0.5), (7, 1.25), (14, -0.1)], "#000")], "y", "label", y_domain=(0.0, 1.0))
    )
    cys = [float(c.get("cy")) for c in chart.iter(f"{SVG}circle")]
    scale = YScale(chart)
    # the range widened to the data
    assert scale.value(max(cys)) <= -0.1 + scale.tol and scale.value(min(cys)) >= 1.25 - scale.tol
    assert min(cys) >= MARGIN_TOP - 0.05
    x_labels = [
        t.text for t in chart.iter(f"{SVG}text") if t.get("class") == "tick" and t.get("text-anchor") == "middle"
    ]
    assert x_labels[0] == "1" and int(x_labels[-1]) <= 14  # no tick for an iteration past the data


def test_a_missing_browser_skips_on_a_laptop_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("EVA_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs chromium"):
        skip_or_fail("needs chromium")
    monkeypatch.setenv("EVA_REQUIRE_BROWSER", "1")
    with pytest.raises(
        pytest.fail.Exception, match="EVA_REQUIRE_BROWSER=1 but the browser test cannot run: needs chromium"
    ):
        skip_or_fail("needs chromium")


def test_report_modules_import_one_way():
    """numbers (report) -> page (report_html) -> records (report_data): no module imports one above it."""
    import subprocess
    import sys

    code = (
        "import sys, importlib\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipelines.report')))\n"
    )
    seen = {
        m: subprocess.run(
            [sys.executable, "-c", code, m], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        for m in ("pipelines.report_data", "pipelines.report_html")
    }
    assert seen["pipelines.report_data"] == "['pipelines.report_data']"
    assert seen["pipelines.report_html"] == "['pipelines.report_data', 'pipelines.report_html', 'pipelines.report_svg']"
