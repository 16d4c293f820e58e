"""`eva report`: the numbers on the page, escaping, limits, errors, and a real headless browser.

Two kinds of run directory: `reference_run` (the real two-iteration tiny run, marked `ray`) and a
synthetic one written here with the eva core only (RunDir, PromptBuffer, IterationMetrics) in well
under a second, for the cases a real run cannot produce on demand: hostile prompt text, a buffer
larger than the table limit, a run stopped mid-iteration, held-out eval results.

The browser tests need Debian's chromium and the playwright Python package (which must not download
its own browser):  apt-get install -y chromium  &&  pip install playwright
They skip, saying so, when either is missing.
"""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from eva.buffer import PromptBuffer, save_prompts_table, write_table
from eva.checkpoint import RunDir, atomic_write_json
from eva.config import load_config
from eva.metrics import summarize
from eva.types import IterationMetrics, Prompt, ScoredPrompt
from pipelines.report import build_report

HOSTILE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"> & </textarea> \"quoted\" 'single'"
CHROMIUM = os.environ.get("EVA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- a synthetic run (eva core only, no Ray) ----------------------------------------------------------


def _scored_table(scored: list[ScoredPrompt]) -> pa.Table:
    """estimate.parquet as pipelines.loop writes it (not imported: the loop module imports Ray)."""
    return pa.table({
        "prompt_id": [s.prompt.id for s in scored], "prompt": [s.prompt.text for s in scored],
        "responses": [list(s.responses) for s in scored], "rewards": [list(s.rewards) for s in scored],
        "info": pa.array([s.info for s in scored], pa.float64()),
    })


def make_run(root: Path, iterations: int = 2, seeds: int = 12, extra_text: str = "") -> RunDir:
    """Iteration 0 (seeds) plus `iterations` committed iterations with every file the report reads."""
    run = RunDir(root)
    run.init(load_config(preset="tiny", overrides=[f"run.dir={root}", f"run.iterations={iterations}"]))
    texts = [f"Explain topic number {i} in plain words." for i in range(seeds)] + ([extra_text] if extra_text else [])
    buffer = PromptBuffer.from_prompts(Prompt.seed(t) for t in texts)
    current = buffer.prompts()
    _commit(run, 0, buffer, current, IterationMetrics(iteration=0, extra={"buffer_size": len(buffer)}))
    rng = np.random.default_rng(0)
    for t in range(1, iterations + 1):
        run.log_event("iteration_start", iteration=t)
        scored = [ScoredPrompt(p, ("a", "b", "c"), tuple(rng.normal(0.5, 0.1, 3).round(6)), None) for p in current]
        scored = [ScoredPrompt(s.prompt, s.responses, s.rewards, max(s.rewards) - min(s.rewards)) for s in scored]
        write_table(_scored_table(scored), run.iteration_dir(t) / "estimate.parquet")
        parents = sorted(scored, key=lambda s: -s.info)[:2]
        children = [s.prompt.child(f"{s.prompt.text} Rewrite {t}.{k}: {extra_text or 'add a constraint'}", ("deepen", "breadth")[k], t) for s in parents for k in range(2)]
        buffer.add(children)
        save_prompts_table(run.iteration_dir(t) / "evolved.parquet", children)
        current = children + buffer.prompts(buffer.ids()[:1])
        solved = [ScoredPrompt(p, ("a", "b", "c"), tuple(rng.normal(0.5 + 0.02 * t, 0.1, 3).round(6)), 0.1) for p in current]
        buffer.update_stats(scored, t)
        buffer.update_stats(solved, t)
        metrics = IterationMetrics(
            iteration=t, stage_seconds={"estimate": 2.0 + t, "evolve": 1.5, "solve": 3.0, "train": 4.0, "commit": 0.0},
            info_summary=summarize([s.info for s in scored]), reward_summary=summarize([r for s in solved for r in s.rewards]),
            num_sampled=len(parents), num_evolved=len(children), num_train_prompts=len(current), num_pairs=len(current),
            mean_margin=0.1 * t, train_loss=0.69 - 0.01 * t, reward_accuracy=0.5 + 0.1 * t, train_steps=3, extra={"buffer_size": len(buffer), "sync_s": 0.01},
        )
        run.log_event("stage_end", iteration=t, stage="commit", seconds=0.25)
        _commit(run, t, buffer, current, metrics)
        run.log_event("iteration_end", iteration=t)
    return run


def _commit(run: RunDir, t: int, buffer: PromptBuffer, train: list[Prompt], metrics: IterationMetrics) -> None:
    folder = run.iteration_dir(t)
    buffer.save(folder / "prompts.parquet")
    atomic_write_json(folder / "train_prompts.json", {"ids": [p.id for p in train]})
    atomic_write_json(folder / "metrics.json", metrics.to_dict())
    run.commit(t)


# --- reading the page back ------------------------------------------------------------------------------


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


def check_cell(cells: dict, t: int, key: str, expected, text: str) -> None:
    """The exact value sits in data-value, the formatted one is the visible text."""
    value, shown = cells[(t, key)]
    assert value == ("" if expected is None else repr(expected) if isinstance(expected, float) else str(expected)), (t, key)
    assert shown == text, (t, key, shown, text)


# --- (a) numbers of a real run ------------------------------------------------------------------------------


@pytest.mark.ray
def test_report_of_the_tiny_run_matches_metrics_json(eva, reference_run: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = eva("report", str(reference_run), "--out", str(out))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert str(out / "index.html") in proc.stdout.replace("\n", "")
    run = RunDir(reference_run)
    committed = [t for t in run.iterations() if run.committed(t)]
    data = page_data(html)
    assert [it["iteration"] for it in data["iterations"]] == committed == [0, 1, 2]
    cells = summary_cells(html)
    for it in data["iterations"]:
        t = it["iteration"]
        metrics = json.loads((run.iteration_dir(t) / "metrics.json").read_text())
        assert it["metrics"] == metrics  # the JSON block carries metrics.json unchanged
        rs = metrics["reward_summary"]
        if t > 0:
            check_cell(cells, t, "reward_mean", rs["mean"], f"{rs['mean']:,.4f}")
            check_cell(cells, t, "reward_p10", rs["p10"], f"{rs['p10']:,.4f}")
            check_cell(cells, t, "train_loss", metrics["train_loss"], f"{metrics['train_loss']:,.4f}")
            check_cell(cells, t, "mean_margin", metrics["mean_margin"], f"{metrics['mean_margin']:,.4f}")
            assert metrics["train_loss"] is not None and rs["count"] > 0
        check_cell(cells, t, "num_pairs", metrics["num_pairs"], f"{metrics['num_pairs']:,}")
        check_cell(cells, t, "buffer_size", metrics["extra"]["buffer_size"], f"{metrics['extra']['buffer_size']:,}")
        assert it["buffer_size"] == metrics["extra"]["buffer_size"]
        assert sum(it["stage_seconds"].values()) >= sum(metrics["stage_seconds"].values())
    last = PromptBuffer.load(run.iteration_dir(2) / "prompts.parquet")
    assert data["table"] == {"iteration": 2, "rows": len(last), "total": len(last), "max_rows": 2000}
    assert all(f'<tr data-id="{pid}">' in html for pid in last.ids())
    for chain in data["lineage"]["chains"]:  # each chain is the buffer's own ancestry of its prompt
        assert chain == [p.id for p in last.ancestry(chain[-1])]
    assert len(data["lineage"]["chains"]) == min(10, int(np.isfinite(last.info_array()).sum()))
    assert data["diff"] == {"a": 0, "b": 2, "added": len(last) - len(PromptBuffer.load(run.iteration_dir(0) / "prompts.parquet")), "dropped": 0}
    assert f"+{data['diff']['added']}</b> added" in html
    assert "No held-out evaluation yet" in html


# --- synthetic runs: escaping, limits, progress, eval, errors ----------------------------------------------------


def test_hostile_prompt_text_is_escaped_everywhere(tmp_path: Path):
    make_run(tmp_path / "run", extra_text=HOSTILE)
    html = build_report(tmp_path / "run", tmp_path / "out").read_text(encoding="utf-8")
    assert "window.__pwned" in html  # the text is there ...
    assert "<script>window" not in html and "<img src=x" not in html and "</textarea>" not in html  # ... but never as markup
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=&quot;" in html
    assert html.count("<script") == 2  # the JSON data block and the page's own script, nothing else
    data_block = html.split('id="eva-report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_block and ">" not in data_block
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_large_buffer_is_sampled_and_the_page_says_so(tmp_path: Path):
    make_run(tmp_path / "run", iterations=1, seeds=120)
    html = build_report(tmp_path / "run", tmp_path / "out", max_rows=50).read_text(encoding="utf-8")
    data = page_data(html)
    assert data["table"] == {"iteration": 1, "rows": 50, "total": 124, "max_rows": 50}
    assert html.count("<tr data-id=") == 50
    assert "holds 124 prompts; the table is capped at 50 rows and shows a uniform random sample of 50" in html
    again = build_report(tmp_path / "run", tmp_path / "out2", max_rows=50).read_text(encoding="utf-8")
    assert re.findall(r'<tr data-id="(\w+)"', html) == re.findall(r'<tr data-id="(\w+)"', again)  # same sample


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
    (run.iteration_dir(3) / "estimate.parquet").write_bytes(b"half-written")  # never read: not committed
    html = build_report(run.root, tmp_path / "out").read_text(encoding="utf-8")
    data = page_data(html)
    assert [it["iteration"] for it in data["iterations"]] == [0, 1, 2]
    assert data["status"] == {"state": "in progress (or stopped mid-iteration)", "committed": [0, 1, 2], "current": 3}
    assert "Iteration 3 started and is not committed: estimate." in html
    assert data["iterations"][2]["stage_seconds"]["commit"] == 0.25  # metrics.json has 0: filled from events.jsonl


def test_held_out_eval_results_are_shown(tmp_path: Path):
    run = make_run(tmp_path / "run")
    result = {"iteration": 2, "n": 40, "win_rate": 0.6125, "win_rate_se": 0.07, "mean_reward": 0.55, "mean_reward_initial": 0.5, "prompts": "held.jsonl"}
    atomic_write_json(run.root / "eval" / "iteration_0002.json", result)
    atomic_write_json(run.root / "eval" / "iteration_0009.json", {**result, "iteration": 9})  # not committed: ignored
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
    assert (tmp_path / "run" / "report" / "index.html").is_file() and "Diff: iteration 0 → 1" in (tmp_path / "run" / "report" / "index.html").read_text()


# --- (b) a real headless browser --------------------------------------------------------------------------------


@pytest.fixture
def browser_page(tmp_path: Path):
    """A Playwright page in Debian's chromium (headless, fresh profile); collects console errors and
    every request that is not a local file (a self-contained report makes none)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package: pip install playwright")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs Debian chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1360, "height": 900}
        )
        page = context.new_page()
        seen = SimpleNamespace(page=page, errors=[], remote=[])
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        page.on("request", lambda r: seen.remote.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        yield seen
        context.close()


@pytest.mark.ray
def test_report_renders_in_a_real_browser(browser_page, reference_run: Path, tmp_path: Path):
    path = build_report(reference_run, tmp_path / "report")
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
    for chart_id in ("chart-reward", "chart-loss", "chart-margin", "chart-stages", "chart-tokens", "chart-info-hist", "chart-operators", "chart-depths", "chart-length", "chart-train-mix"):
        assert page.locator(f"#{chart_id} svg.chart").is_visible(), chart_id
    data = json.loads(page.locator("#eva-report-data").text_content())
    chains = page.locator(".lineage .chain")
    assert chains.count() == len(data["lineage"]["chains"]) > 0
    assert chains.first.is_visible() and chains.first.locator(".step").count() == len(data["lineage"]["chains"][0])
    rows = page.locator("#prompt-table tbody tr")
    total = rows.count()
    target = data["lineage"]["chains"][0][-1]
    page.fill("#prompt-search", target)
    assert page.locator("#prompt-table tbody tr:visible").count() == 1
    assert page.locator(f'#prompt-table tr[data-id="{target}"]').is_visible()
    assert page.text_content("#prompt-count") == f"1 of {total} rows"
    page.fill("#prompt-search", "no prompt contains this §§")
    assert page.locator("#prompt-table tbody tr:visible").count() == 0
    page.fill("#prompt-search", "")
    assert page.locator("#prompt-table tbody tr:visible").count() == total == data["table"]["rows"]
    shot = tmp_path / "report_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"report screenshot: {shot}")
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
