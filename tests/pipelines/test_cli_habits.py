"""Habits of the field in the CLI, without Ray or a model: `eva inspect` readable at 80 columns and
with id prefixes, `eva config` printing a resolved config that loads back equal. The run directory is
built by hand (eva.checkpoint, pipelines.loop.init_iteration_zero) with one evolved generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eva.checkpoint import RunDir
from eva.config import load_config
from eva.types import IterationMetrics, match_id
from pipelines import cli
from pipelines.loop import init_iteration_zero

LONG = (
    "Explain, step by step and with one worked example for each step, how a hash map resolves collisions "
    "with open addressing, and why its load factor matters for lookups"
)


@pytest.fixture
def eva_cli(monkeypatch):
    """`eva_cli(*args, width=80)`: the CLI in this process at a console width; returns (code, stdout, stderr)."""

    def invoke(*args: str, width: int = 80) -> tuple[int, str, str]:
        monkeypatch.setattr(cli.console, "width", width)
        monkeypatch.setattr(cli.err, "width", 4000)
        result = CliRunner().invoke(cli.app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"eva {' '.join(args)} raised") from result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Iteration 0: 12 seeds; iteration 1: a chain seed -> child -> grandchild with the long text."""
    seeds = tmp_path / "seeds.jsonl"
    lines = (json.dumps({"prompt": f"Seed prompt number {i} about topic {i * 7}"}) for i in range(12))
    seeds.write_text("\n".join(lines) + "\n")
    policy = tmp_path / "policy-src"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    cfg = load_config(preset="tiny", overrides=[f"run.dir={tmp_path / 'run'}", f"prompts.path={seeds}"])
    run = RunDir(cfg.run.run_dir)
    run.init(cfg)
    init_iteration_zero(cfg, run, str(policy))
    buf = run.iteration(0).buffer()
    seed = buf.prompts()[0]
    child = seed.child("A harder version of the first seed prompt, with two constraints", "in-depth", 1)
    grandchild = child.child(LONG, "concretize", 1)
    buf.add([child, grandchild])
    folder = run.iteration(1)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_buffer_changes(buf)
    folder.write_train_ids([child.id, grandchild.id])
    folder.write_metrics(IterationMetrics(iteration=1, buffer_size=len(buf)))
    run.commit(1)
    return run.root


def test_match_id_resolves_unique_prefixes_and_names_ambiguity():
    ids = ["4d2cc7190aa1b2c3", "4d2cff0011223344", "a0b1c2d3e4f50617"]
    assert match_id("4d2cc", ids) == "4d2cc7190aa1b2c3"
    assert match_id("A0B1", ids) == "a0b1c2d3e4f50617"  # ids are lower-case hex
    assert match_id("a0b1c2d3e4f50617", ids) == "a0b1c2d3e4f50617"
    with pytest.raises(ValueError, match=r"'4d2c' is ambiguous in it 1: 2 ids .*4d2cc7190aa1b2c3, 4d2cff0011223344"):
        match_id("4d2c", ids, "it 1")
    with pytest.raises(ValueError, match="no prompt id starts with 'ff'"):
        match_id("ff", ids)


def test_inspect_at_80_columns_shows_the_whole_prompt_text(eva_cli, run_dir: Path):
    code, out, _ = eva_cli("inspect", str(run_dir), "--sort", "depth", "--top", "3")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    flat = " ".join(out.split())
    assert LONG in flat  # every word, in order, wrapped but not cut
    grandchild = next(p for p in RunDir(run_dir).iteration(1).buffer().prompts() if p.depth == 2)
    assert f"{grandchild.id}  depth 2  operator concretize  born 1" in out
    # wide consoles keep the table, with the text in its own column
    code, wide, _ = eva_cli("inspect", str(run_dir), "--sort", "depth", "--top", "3", width=200)
    assert code == 0 and "┃ id" in wide and f" {grandchild.id} " in wide and LONG[:60] in wide


def test_inspect_lineage_takes_a_unique_prefix(eva_cli, run_dir: Path):
    buf = RunDir(run_dir).iteration(1).buffer()
    grandchild = next(p for p in buf.prompts() if p.depth == 2)
    code, out, _ = eva_cli("inspect", str(run_dir), "--lineage", grandchild.id[:8])
    assert code == 0, out
    assert f"lineage of {grandchild.id} (iteration 1)" in out
    chain = [p.id for p in buf.ancestry(grandchild.id)]
    assert len(chain) == 3 and [line.split()[0] for line in out.splitlines() if line[:16] in chain] == chain
    assert LONG in " ".join(out.split())
    # a prefix several ids share: exit 2 naming them; an unknown one: exit 2
    ids = buf.ids()
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    code, _, error = eva_cli("inspect", str(run_dir), "--lineage", shared)
    n = sum(i.startswith(shared) for i in ids)
    assert code == 2 and f"prompt id prefix {shared!r} is ambiguous in iteration 1 of {run_dir}: {n} ids" in error
    code, _, error = eva_cli("inspect", str(run_dir), "--lineage", "zz")
    assert code == 2 and "no prompt id starts with 'zz'" in error


@pytest.mark.parametrize("preset", ["cpu-default", "cpu-arithmetic", "tiny"])
def test_eva_config_prints_yaml_that_loads_back_as_the_resolved_config(eva_cli, tmp_path: Path, preset: str):
    sets = ["solver.beta=0.2", "creator.operators=[breadth, deepen]", "creator.prompt_filter=off"]
    if preset == "cpu-arithmetic":
        sets = ["solver.beta=0.2"]
    code, out, _ = eva_cli("config", "--preset", preset, *(x for s in sets for x in ("--set", s)))
    assert code == 0
    resolved = load_config(preset=preset, overrides=sets)
    (tmp_path / "c.yaml").write_text(out)
    assert load_config(tmp_path / "c.yaml") == resolved  # the file alone, no preset underneath
    assert resolved.solver.beta == 0.2
    lines = out.splitlines()
    # each field right below its description; sections below theirs
    beta = lines.index("  beta: 0.2")
    assert lines[beta - 1].startswith("  # ") and "DPO beta" in " ".join(lines[beta - 3 : beta])
    assert lines[lines.index("solver:") - 1] == "# Rollouts and preference optimization."
    assert out.startswith(f"# eva run config, resolved from: preset {preset}, --set solver.beta=0.2")
    # --out writes the same text
    code, _, _ = eva_cli(
        "config", "--preset", preset, *(x for s in sets for x in ("--set", s)), "--out", str(tmp_path / "o.yaml")
    )
    assert code == 0 and (tmp_path / "o.yaml").read_text() == out


def test_eva_config_of_a_file_and_bad_input(eva_cli, tmp_path: Path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("run:\n  name: mine\nsolver:\n  n_responses: 3\n")
    code, out, _ = eva_cli("config", str(mine))
    assert code == 0 and "  name: mine" in out and "  n_responses: 3" in out
    (tmp_path / "back.yaml").write_text(out)
    assert load_config(tmp_path / "back.yaml") == load_config(mine)
    code, _, error = eva_cli("config", "--preset", "nope")
    assert code == 2 and "unknown preset 'nope'" in error
    code, _, error = eva_cli("config", "--set", "solver.beta=-1")
    assert code == 2 and "--set solver.beta=-1: solver.beta" in error
