"""Bad input to the CLI fails before anything is written or Ray starts: exit 2, the cause named, no
traceback, and a run directory byte-identical afterwards. Also: the writer lock as the CLI uses it,
export's atomic write, and what `status` says about a damaged run. No Ray, no model: a run directory
with a committed iteration 0 is built by hand (eva.checkpoint, pipelines.loop.init_iteration_zero)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eva.checkpoint import MANIFEST, RunDir
from eva.config import load_config
from eva.runlock import LOCK_FILE
from pipelines import cli
from pipelines.loop import init_iteration_zero

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def eva(monkeypatch):
    """`eva(*args)`: the CLI in this process; returns (exit code, stdout, stderr) with messages unwrapped."""
    monkeypatch.setattr(cli.err, "width", 4000)
    monkeypatch.setattr(cli.console, "width", 4000)

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli.app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"eva {' '.join(args)} raised") from result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (folders by name): what 'byte-identical' compares."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A tiny-preset run directory with iteration 0 committed (a fake policy folder)."""
    policy = tmp_path / "policy-src"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").write_bytes(b"weights")
    cfg = load_config(preset="tiny", overrides=[f"run.dir={tmp_path / 'run'}"])
    run = RunDir(cfg.run.run_dir)
    run.init(cfg)
    init_iteration_zero(cfg, run, str(policy))
    return run.root


def _prompts(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD_PROMPT_FILES = {
    "latin1": ("p.jsonl", '{"prompt": "Caf\u00e9?"}\n'.encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    "random-bytes": ("p.jsonl", bytes(range(128, 256)) * 3, "not UTF-8 text"),  # read line by line: the first problem
    "lone-surrogate": ("p.jsonl", b'{"prompt": "half \\udc00 a pair"}\n', "lone surrogate"),
    "nul": ("p.jsonl", b'{"prompt": "a\\u0000b"}\n', "NUL character"),
    "huge": (
        "p.jsonl",
        json.dumps({"prompt": "x" * (4 << 20)}).encode() + b"\n",
        "1 prompt(s) longer than 100,000 characters",
    ),
    "damaged-parquet": ("prompts.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", "not a readable Parquet file"),
}


# --- eva run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.max_new_tokens=512", "solver.max_new_tokens (512) must be below model.max_model_len (512)"),
        ("ray.timeout_s=.inf", "ray.timeout_s: Input should be a finite number"),
        (
            "reward.components=[{kind: judge, weight: 0}, {kind: wellformed, weight: 0}]",
            "sum to 0; they must sum to a positive number",
        ),
        (
            "reward.components=[{kind: judge, weight: .nan}]",
            "reward.components.0.weight: Input should be a finite number",
        ),
        ("prompts.path=/no/such/prompts.jsonl", "/no/such/prompts.jsonl: file does not exist"),
    ],
)
def test_run_refuses_bad_config_before_writing(eva, tmp_path: Path, override: str, message: str) -> None:
    target = tmp_path / "new-run"
    code, _, stderr = eva("run", "--preset", "tiny", "--run-dir", str(target), "--set", override)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not target.exists()  # not even run.yaml (or the lock)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_mod:f", "cannot import module 'no_such_mod'"),
        ("json:NOT_THERE", "module 'json' has no callable 'NOT_THERE'"),
    ],
)
def test_run_imports_the_reward_function_before_anything_starts(eva, tmp_path: Path, spec: str, message: str) -> None:
    target = tmp_path / "new-run"
    code, _, stderr = eva(
        "run",
        "--preset",
        "tiny",
        "--run-dir",
        str(target),
        "--set",
        "reward.kind=function",
        "--set",
        f"reward.function={spec}",
    )
    assert code == 2 and f"reward.function: reward function {spec!r}: {message}" in stderr
    assert not target.exists()


@pytest.mark.parametrize("case", sorted(BAD_PROMPT_FILES))
def test_run_refuses_bad_prompt_files_before_writing(eva, tmp_path: Path, case: str) -> None:
    name, data, message = BAD_PROMPT_FILES[case]
    path = _prompts(tmp_path, name, data)
    target = tmp_path / "new-run"
    code, _, stderr = eva("run", "--preset", "tiny", "--run-dir", str(target), "--set", f"prompts.path={path}")
    assert code == 2 and str(path) in stderr and message in stderr, stderr
    assert not target.exists()


def test_run_refuses_a_folder_that_is_not_a_run_directory(eva, tmp_path: Path) -> None:
    folder = tmp_path / "my-data"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    before = snapshot(folder)
    code, _, stderr = eva("run", "--preset", "tiny", "--run-dir", str(folder))
    assert code == 2 and "exists and is not a run directory" in stderr and "thesis.tex" in stderr
    assert snapshot(folder) == before


def test_bad_input_on_an_existing_run_leaves_it_byte_identical(eva, run_dir: Path, tmp_path: Path) -> None:
    before = snapshot(run_dir)
    latin1 = _prompts(tmp_path, "p.jsonl", BAD_PROMPT_FILES["latin1"][1])
    for args in (
        ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "solver.beta=0.5"],  # a changed config
        ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "ray.timeout_s=.inf"],
        [
            "run",
            "--preset",
            "tiny",
            "--run-dir",
            str(run_dir),
            "--set",
            "reward.kind=function",
            "--set",
            "reward.function=no_such_mod:f",
        ],
        ["eval", str(run_dir), "--prompts", str(latin1)],
        ["eval", str(run_dir), "--prompts", str(tmp_path / "missing.jsonl")],
        ["eval", str(run_dir), "--prompts", str(latin1), "--limit", "0"],
        ["inspect", str(run_dir), "--top", "-1"],
    ):
        code, _, stderr = eva(*args)
        assert code == 2 and "Traceback" not in stderr, (args, stderr)
        assert snapshot(run_dir) == before, args


@pytest.mark.parametrize("case", ["latin1", "random-bytes", "lone-surrogate", "damaged-parquet"])
def test_eval_refuses_bad_held_out_prompts(eva, run_dir: Path, tmp_path: Path, case: str) -> None:
    name, data, message = BAD_PROMPT_FILES[case]
    path = _prompts(tmp_path, name, data)
    before = snapshot(run_dir)
    code, _, stderr = eva("eval", str(run_dir), "--prompts", str(path))
    assert code == 2 and message in stderr
    assert snapshot(run_dir) == before


def test_eval_imports_the_reward_function_before_anything_starts(eva, tmp_path: Path) -> None:
    policy = tmp_path / "policy-src"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    cfg = load_config(
        preset="tiny",
        overrides=[f"run.dir={tmp_path / 'run'}", "reward.kind=function", "reward.function=no_such_mod:score"],
    )
    run = RunDir(cfg.run.run_dir)
    run.init(cfg)
    init_iteration_zero(cfg, run, str(policy))
    before = snapshot(run.root)
    heldout = _prompts(tmp_path, "h.jsonl", b'{"prompt": "hi"}\n')
    code, _, stderr = eva("eval", str(run.root), "--prompts", str(heldout), "--iteration", "0")
    assert (
        code == 2
        and "reward.function: reward function 'no_such_mod:score': cannot import module 'no_such_mod'" in stderr
    )
    assert snapshot(run.root) == before
    code, _, stderr = eva("resume", str(run.root))
    assert code == 2 and "no_such_mod" in stderr and snapshot(run.root) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--limit", "0"], "--limit"),
        (["eval", "--limit", "-1"], "--limit"),
        (["inspect", "--top", "-1"], "--top"),
    ],
)
def test_counts_are_bounded(eva, run_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    command, *options = args
    extra = ["--prompts", str(tmp_path / "p.jsonl")] if command == "eval" else []
    code, _, stderr = eva(command, str(run_dir), *extra, *options)
    assert code == 2 and message in stderr and "Traceback" not in stderr


# --- the writer lock --------------------------------------------------------------------------------


def test_a_second_writer_gets_exit_2_naming_the_holder(eva, run_dir: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from eva.runlock import RunLock; RunLock(sys.argv[1], 'eva run "
            "--first').acquire(); print('held', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_dir)
        heldout = _prompts(tmp_path, "h.jsonl", b'{"prompt": "hi"}\n')
        for args in (
            ["resume", str(run_dir)],
            ["run", "--preset", "tiny", "--run-dir", str(run_dir)],
            ["eval", str(run_dir), "--prompts", str(heldout)],
        ):
            code, _, stderr = eva(*args)
            assert (
                code == 2 and f"is in use by another writer: pid {holder.pid}" in stderr and "eva run --first" in stderr
            ), stderr
            assert snapshot(run_dir) == before
        code, stdout, _ = eva("status", str(run_dir))  # readers take no lock
        assert code == 0 and f"running: pid {holder.pid} on" in stdout and "continue with" not in stdout
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_writers_lock_is_taken_over_with_a_note(eva, run_dir: Path, tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (run_dir / LOCK_FILE).write_text(
        json.dumps(
            {
                "pid": int(dead),
                "host": __import__("socket").gethostname(),
                "started": "2026-01-02T03:04:05+00:00",
                "command": "eva run --killed",
            }
        )
    )
    heldout = _prompts(tmp_path, "bad.jsonl", BAD_PROMPT_FILES["latin1"][1])
    code, _, stderr = eva("eval", str(run_dir), "--prompts", str(heldout))  # takes the lock, then fails on its input
    assert (
        code == 2 and f"took over the lock of {run_dir}, left by pid {dead}" in stderr and "eva run --killed" in stderr
    )
    assert not (run_dir / LOCK_FILE).exists()
    event = [e for e in RunDir(run_dir).events() if e["kind"] == "lock_taken_over"][-1]
    assert event["holder"]["pid"] == int(dead)


# --- export, report ---------------------------------------------------------------------------------


def test_export_refuses_destinations_inside_any_run_directory(eva, run_dir: Path, tmp_path: Path) -> None:
    other = RunDir(tmp_path / "other-run")
    other.init(load_config(preset="tiny"))
    before, before_other = snapshot(run_dir), snapshot(other.root)
    for out in (
        run_dir / "iterations" / "0000" / "prompts.parquet",
        run_dir / "exports" / "p.jsonl",
        other.root / "p.parquet",
    ):
        code, _, stderr = eva("export", str(run_dir), "--out", str(out))
        assert code == 2 and "is inside the run directory" in stderr
    assert snapshot(run_dir) == before and snapshot(other.root) == before_other


def test_export_replaces_its_file_atomically(eva, run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out" / "prompts.jsonl"
    code, _, _ = eva("export", str(run_dir), "--out", str(out))
    assert code == 0 and len(out.read_text().splitlines()) == 16 and oct(out.stat().st_mode & 0o777) == "0o644"
    exported = out.read_bytes()
    calls = []

    def crash_midway(row):
        calls.append(row)
        if len(calls) == 5:
            raise OSError("disk full")
        return row

    monkeypatch.setattr(cli, "_json_safe", crash_midway)
    code, _, stderr = eva("export", str(run_dir), "--out", str(out))
    assert code == 2 and "disk full" in stderr
    assert out.read_bytes() == exported and [p.name for p in out.parent.iterdir()] == ["prompts.jsonl"]


def test_report_out_must_be_a_folder_outside_run_directories(eva, run_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "report.html"
    existing.write_text("mine")
    code, _, stderr = eva("report", str(run_dir), "--out", str(existing))
    assert code == 2 and "is an existing file" in stderr and existing.read_text() == "mine"
    before = snapshot(run_dir)
    code, _, stderr = eva("report", str(run_dir), "--out", str(run_dir / "iterations" / "0000"))
    assert code == 2 and "is inside the run directory" in stderr
    assert snapshot(run_dir) == before


# --- status on a damaged run ---------------------------------------------------------------------------


def test_status_of_a_garbled_manifest_says_resume_will_refuse_and_what_to_do(eva, run_dir: Path) -> None:
    (run_dir / "iterations" / "0000" / MANIFEST).write_text('{"files": {"prompts.parq')
    code, stdout, _ = eva("status", str(run_dir))
    assert code == 0
    assert "`eva resume` will refuse" in stdout and "iterations/0000/MANIFEST.json: missing or invalid" in stdout
    assert "Restore the named files" in stdout and "continue with: eva resume" not in stdout
    code, _, stderr = eva("resume", str(run_dir))
    assert code == 2 and "iterations/0000/MANIFEST.json" in stderr


def test_status_of_an_intact_unfinished_run_says_resume(eva, run_dir: Path) -> None:
    code, stdout, _ = eva("status", str(run_dir))
    assert (
        code == 0
        and f"0/2 iterations committed; continue with: eva resume {run_dir}" in stdout
        and "damaged" not in stdout
    )


def test_verify_hashes_every_committed_file_and_names_the_damaged_one(eva, run_dir: Path) -> None:
    code, stdout, _ = eva("verify", str(run_dir))
    assert code == 0 and "1 committed iteration(s), 5 files: all match their manifests" in stdout
    weights = run_dir / "iterations" / "0000" / "policy" / "model.safetensors"
    weights.write_bytes(b"Weights")  # same size: only the hash can tell
    before = snapshot(run_dir)
    code, _, stderr = eva("verify", str(run_dir))
    assert code == 2 and "iterations/0000/policy/model.safetensors: sha256 mismatch" in stderr
    assert snapshot(run_dir) == before


def test_cli_errors_are_one_line_without_traceback_in_a_real_process(tmp_path: Path) -> None:
    latin1 = _prompts(tmp_path, "p.jsonl", BAD_PROMPT_FILES["latin1"][1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--preset",
            "tiny",
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            f"prompts.path={latin1}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "COLUMNS": "400"},
        timeout=120,
    )
    assert proc.returncode == 2 and "not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
