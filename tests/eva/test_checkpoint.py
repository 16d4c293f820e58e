"""The run directory: atomic writes, commit/verify, LATEST, stages, pruning, config checks, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eva.checkpoint import (
    MANIFEST,
    CorruptCheckpointError,
    RunDir,
    RunDirError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from eva.config import RunConfig


def _config(**sections: dict) -> RunConfig:
    return RunConfig.model_validate(sections)


def _write_iteration(run: RunDir, t: int, policy: bool = True) -> Path:
    folder = run.iteration_dir(t)
    atomic_write_bytes(folder / "prompts.parquet", f"prompts of {t}".encode() * 10)
    atomic_write_json(folder / "metrics.json", {"iteration": t})
    if policy:
        atomic_write_bytes(folder / "policy" / "model.safetensors", bytes(range(256)) * 4)
        atomic_write_text(folder / "policy" / "config.json", "{}")
    return folder


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    r = RunDir(tmp_path / "run")
    r.init(_config())
    return r


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a" / "c.txt", "héllo")
    atomic_write_json(tmp_path / "a" / "d.json", {"x": [1, 2]})
    atomic_write_text(tmp_path / "a" / "c.txt", "replaced")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "c.txt", "d.json"]
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "c.txt").read_text() == "replaced"
    assert json.loads((tmp_path / "a" / "d.json").read_text()) == {"x": [1, 2]}


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# --- commit / verify / LATEST ---------------------------------------------------------------------


def test_commit_then_verify_clean(run: RunDir) -> None:
    _write_iteration(run, 0)
    assert not run.committed(0)
    manifest = run.commit(0)
    assert run.committed(0)
    assert set(manifest["files"]) == {
        "prompts.parquet",
        "metrics.json",
        "policy/model.safetensors",
        "policy/config.json",
    }
    assert manifest["files"]["policy/model.safetensors"]["size"] == 1024
    assert run.verify(0) == []
    run.ensure_valid(0)
    assert run.verify_all() == []


def test_one_corrupted_byte_is_named(run: RunDir) -> None:
    folder = _write_iteration(run, 0)
    run.commit(0)
    weights = folder / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert run.verify(0) == ["iterations/0000/policy/model.safetensors: sha256 mismatch"]
    with pytest.raises(CorruptCheckpointError, match="policy/model.safetensors: sha256 mismatch") as err:
        run.ensure_valid(0)
    assert err.value.problems == ["iterations/0000/policy/model.safetensors: sha256 mismatch"]


def test_missing_and_truncated_files_are_named(run: RunDir) -> None:
    folder = _write_iteration(run, 0)
    run.commit(0)
    (folder / "metrics.json").unlink()
    (folder / "prompts.parquet").write_bytes(b"short")
    assert run.verify(0) == [
        "iterations/0000/metrics.json: missing file",
        "iterations/0000/prompts.parquet: size mismatch (manifest 120 bytes, found 5)",
    ]


def test_unlisted_extra_file_is_ignored(run: RunDir) -> None:
    folder = _write_iteration(run, 0)
    run.commit(0)
    (folder / "notes.txt").write_text("added later")
    assert run.verify(0) == []


def test_uncommitted_iteration_fails_verify(run: RunDir) -> None:
    _write_iteration(run, 0)
    assert run.verify(0) == ["iterations/0000/MANIFEST.json: missing or invalid: iteration 0 is not committed"]
    (run.iteration_dir(0) / MANIFEST).write_text("{not json")
    assert not run.committed(0)
    assert run.incomplete() == [0]


def test_latest_moves_only_on_commit(run: RunDir) -> None:
    assert run.latest() is None
    _write_iteration(run, 0)
    assert run.latest() is None
    run.commit(0)
    assert run.latest() == 0
    _write_iteration(run, 1)
    run.mark_stage(1, "estimate")
    assert run.latest() == 0
    run.commit(1)
    assert run.latest() == 1
    assert run.latest_path.read_text() == "1\n"
    with pytest.raises(RunDirError, match="already committed"):
        run.commit(1)


def test_commit_drops_leftover_temp_files(run: RunDir) -> None:
    folder = _write_iteration(run, 0)
    (folder / ".prompts.parquet.abc123.tmp").write_bytes(b"torn write")
    manifest = run.commit(0)
    assert not (folder / ".prompts.parquet.abc123.tmp").exists()
    assert ".prompts.parquet.abc123.tmp" not in manifest["files"]


def test_commit_of_missing_folder_is_refused(run: RunDir) -> None:
    with pytest.raises(RunDirError, match="iterations/0003"):
        run.commit(3)


def test_corrupt_latest_is_reported(run: RunDir) -> None:
    run.latest_path.write_text("garbage")
    with pytest.raises(CorruptCheckpointError, match="LATEST"):
        run.latest()


# --- stages -------------------------------------------------------------------------------------------


def test_stage_markers(run: RunDir) -> None:
    assert run.stages_done(2) == []
    run.mark_stage(2, "estimate", {"prompts": 10})
    run.mark_stage(2, "sample")
    run.mark_stage(2, "evolve", {"kept": 7})
    assert run.stage_done(2, "sample") and not run.stage_done(2, "train")
    assert run.stages_done(2) == ["estimate", "sample", "evolve"]
    assert run.stage_info(2, "evolve") == {"kept": 7}
    marker = json.loads((run.iteration_dir(2) / "stages" / "estimate.done").read_text())
    assert marker["stage"] == "estimate" and "time" in marker
    with pytest.raises(ValueError, match="invalid stage name"):
        run.mark_stage(2, "../x")
    with pytest.raises(RunDirError, match="not done"):
        run.stage_info(2, "train")


def test_stage_markers_are_committed_and_clear_iteration(run: RunDir) -> None:
    _write_iteration(run, 0)
    run.mark_stage(0, "seed")
    assert "stages/seed.done" in run.commit(0)["files"]
    with pytest.raises(RunDirError, match="committed"):
        run.mark_stage(0, "seed")
    with pytest.raises(RunDirError, match="committed"):
        run.clear_iteration(0)
    _write_iteration(run, 1)
    run.mark_stage(1, "estimate")
    run.clear_iteration(1)
    assert not run.iteration_dir(1).exists()
    assert run.iterations() == [0]


# --- pruning --------------------------------------------------------------------------------------------


def test_prune_keeps_prompts_iteration0_and_last_k(run: RunDir) -> None:
    for t in range(5):
        _write_iteration(run, t)
        run.commit(t)
    assert run.prune_policies(None) == []
    assert run.prune_policies(2) == [1, 2]
    for t in range(5):
        folder = run.iteration_dir(t)
        assert (folder / "prompts.parquet").is_file()
        assert (folder / "policy").exists() == (t in (0, 3, 4))
    assert run.verify_all() == []
    manifest = run.manifest(1)
    assert manifest is not None
    assert set(manifest["pruned"]) == {"policy/model.safetensors", "policy/config.json"}
    assert "prompts.parquet" in manifest["files"]
    assert run.prune_policies(2) == []  # idempotent


def test_prune_ignores_incomplete_iterations(run: RunDir) -> None:
    for t in range(3):
        _write_iteration(run, t)
        run.commit(t)
    _write_iteration(run, 3)  # in progress: its policy is being written
    assert run.prune_policies(1) == [1]
    assert (run.iteration_dir(3) / "policy").is_dir()
    assert (run.iteration_dir(2) / "policy").is_dir()


# --- config ------------------------------------------------------------------------------------------------


def test_config_round_trips(tmp_path: Path) -> None:
    cfg = _config(creator={"metric": "var", "sample_frac": 0.5}, solver={"beta": 0.1})
    run = RunDir(tmp_path / "r")
    assert run.init(cfg) == []
    assert run.config() == cfg
    text = run.config_path.read_text()
    assert text.startswith(f"config_hash: {cfg.fingerprint()}")
    assert run.init(cfg) == []  # reopening with the same config is fine


def test_fingerprint_mismatch_is_refused_naming_field(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.init(_config())
    changed = _config(creator={"metric": "var"}, solver={"beta": 0.2})
    with pytest.raises(RunDirError, match=r"creator\.metric, solver\.beta") as err:
        run.init(changed)
    assert "run.yaml" in str(err.value)
    with pytest.raises(RunDirError, match=r"solver\.beta"):
        run.init(changed, allow_changes=["creator.metric"])
    assert run.config() == _config()  # nothing was written by the refused calls
    assert run.init(changed, allow_changes=["creator.metric", "solver.beta"]) == ["creator.metric", "solver.beta"]
    assert run.config() == changed
    event = [e for e in run.events() if e["kind"] == "config_changed"][-1]
    assert event["fields"]["solver.beta"] == {"old": 0.05, "new": 0.2}


def test_mutable_fields_never_matter(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.init(_config())
    longer = _config(run={"iterations": 9}, checkpoint={"keep_policies": 2})
    assert run.init(longer) == []
    assert run.config().run.iterations == 9


def test_timeouts_may_change_on_resume_and_older_run_yaml_still_opens(tmp_path: Path) -> None:
    import yaml

    from eva.config import MUTABLE_FIELDS_V1, fingerprint

    run = RunDir(tmp_path / "r")
    run.init(_config())
    slower = _config(ray={"timeout_s": 20000, "train_step_timeout_s": 7200, "restart_timeout_s": 60})
    assert run.init(slower) == []  # no --allow-change needed: how long to wait computes nothing
    assert run.config().ray.timeout_s == 20000
    # a run.yaml written before ray.timeout_s was mutable: its hash covered the timeout
    data = yaml.safe_load(run.config_path.read_text())
    data.pop("config_hash")
    for field in ("train_step_timeout_s", "restart_timeout_s"):  # not known then
        del data["ray"][field]
    del data["solver"]["checkpoint_steps"]
    run.config_path.write_text(yaml.safe_dump({"config_hash": fingerprint(data, MUTABLE_FIELDS_V1), **data}))
    assert run.config().ray.timeout_s == 20000
    run.config_path.write_text(run.config_path.read_text().replace("timeout_s: 20000", "timeout_s: 30000"))
    with pytest.raises(CorruptCheckpointError, match="edited by hand"):  # and it still catches an edit
        run.config()


def test_hand_edited_run_yaml_is_detected(run: RunDir) -> None:
    text = run.config_path.read_text().replace("beta: 0.05", "beta: 0.5")
    run.config_path.write_text(text)
    with pytest.raises(CorruptCheckpointError, match="edited by hand"):
        run.config()


def test_missing_run_yaml(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="run.yaml does not exist"):
        RunDir(tmp_path / "nothing").config()


# --- events ----------------------------------------------------------------------------------------------


def test_events_are_appended(run: RunDir) -> None:
    run.log_event("stage_start", iteration=1, stage="estimate")
    run.log_event("stage_end", iteration=1, stage="estimate", seconds=1.5, count=12)
    events = run.events()
    assert [e["kind"] for e in events] == ["stage_start", "stage_end"]
    assert events[1]["seconds"] == 1.5 and events[1]["count"] == 12
    assert events[0]["ts"] <= events[1]["ts"]
    with pytest.raises(ValueError, match="ts"):
        run.log_event("bad", ts=3)


def test_torn_event_line_is_skipped_and_next_line_starts_fresh(run: RunDir) -> None:
    run.log_event("a")
    with open(run.events_path, "a") as f:
        f.write('{"kind": "tor')  # crash mid-append
    run.log_event("b")
    assert [e["kind"] for e in run.events()] == ["a", "b"]


# --- leftovers of a killed policy save, verification beyond LATEST -------------------------------------


def test_commit_removes_a_killed_saves_temp_folder_and_never_hashes_it(run: RunDir) -> None:
    folder = _write_iteration(run, 1)
    leftover = folder / ".policy.k3j2.tmp"  # what actors.trainer's save leaves when SIGKILLed mid-write
    atomic_write_bytes(leftover / "model.safetensors", b"half a model")
    atomic_write_text(leftover / "sub" / "config.json", "{}")
    (folder / "stages").mkdir()
    (folder / "stages" / ".train.done.x1.tmp").write_text("torn")
    manifest = run.commit(1)
    assert sorted(manifest["files"]) == [
        "metrics.json",
        "policy/config.json",
        "policy/model.safetensors",
        "prompts.parquet",
    ]
    assert not leftover.exists() and not (folder / "stages" / ".train.done.x1.tmp").exists()
    event = [e for e in run.events() if e["kind"] == "temp_leftovers_removed"][-1]
    assert sorted(event["paths"]) == ["iterations/0001/.policy.k3j2.tmp", "iterations/0001/stages/.train.done.x1.tmp"]
    assert run.verify(1) == []


def test_prune_drops_temp_folders_an_older_eva_committed(run: RunDir) -> None:
    for t in range(3):
        _write_iteration(run, t)
        run.commit(t)
    folder = run.iteration_dir(1)  # as an eva before the fix committed it: the temp folder in the manifest
    atomic_write_bytes(folder / ".policy.old.tmp" / "model.safetensors", b"weights")
    manifest = run.manifest(1)
    manifest["files"][".policy.old.tmp/model.safetensors"] = {"size": 7, "sha256": "x"}
    atomic_write_json(folder / MANIFEST, manifest)
    assert run.prune_policies(1) == [1]
    assert not (folder / ".policy.old.tmp").exists() and not (folder / "policy").exists()
    assert ".policy.old.tmp/model.safetensors" in run.manifest(1)["pruned"]
    assert run.verify_all() == []


def test_verify_all_covers_an_iteration_committed_after_latest(run: RunDir) -> None:
    """A kill between MANIFEST.json and LATEST: resume continues from the MANIFEST, so verify it."""
    for t in range(3):
        _write_iteration(run, t)
        run.commit(t)
    atomic_write_text(run.latest_path, "1\n")  # as if killed before LATEST moved to 2
    (run.iteration_dir(2) / "prompts.parquet").write_bytes(b"damaged")
    assert run.last_committed() == 2 and run.latest() == 1
    assert run.verify_all() == ["iterations/0002/prompts.parquet: size mismatch (manifest 120 bytes, found 7)"]
    assert run.verify_all(hashes=False) == run.verify_all()


def test_verify_all_names_a_gap_below_the_highest_manifest(run: RunDir) -> None:
    for t in range(3):
        _write_iteration(run, t)
        run.commit(t)
    (run.iteration_dir(1) / MANIFEST).write_text("{garbled")
    atomic_write_text(run.latest_path, "0\n")
    assert run.verify_all() == ["iterations/0001/MANIFEST.json: missing or invalid: iteration 1 is not committed"]


def test_sync_latest_moves_latest_to_the_highest_manifest(run: RunDir) -> None:
    for t in range(2):
        _write_iteration(run, t)
        run.commit(t)
    atomic_write_text(run.latest_path, "0\n")
    assert run.sync_latest() == 1 and run.latest() == 1
    assert [e for e in run.events() if e["kind"] == "latest_repaired"][-1]["old"] == 0
    assert run.sync_latest() == 1


def test_verify_without_hashes_misses_only_same_size_damage(run: RunDir) -> None:
    folder = _write_iteration(run, 0)
    run.commit(0)
    data = bytearray((folder / "prompts.parquet").read_bytes())
    data[0] ^= 1
    (folder / "prompts.parquet").write_bytes(bytes(data))
    assert run.verify(0, hashes=False) == [] and run.verify(0) == ["iterations/0000/prompts.parquet: sha256 mismatch"]


def test_resume_hashes_the_policies_it_loads_and_sizes_the_rest(run: RunDir) -> None:
    """verify_for_resume hashes every file but the policies resume never reads (those of iterations
    other than 0 and the last): same-size damage there is for `verify_all`; everything else is caught."""
    for t in range(4):
        _write_iteration(run, t)
        run.commit(t)

    def flip(t: int, name: str) -> None:
        path = run.iteration_dir(t) / name
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))

    flip(2, "policy/model.safetensors")
    assert run.verify_for_resume() == []
    assert run.verify_all() == ["iterations/0002/policy/model.safetensors: sha256 mismatch"]
    for t, name in [(3, "policy/model.safetensors"), (0, "policy/model.safetensors"), (1, "prompts.parquet")]:
        flip(t, name)
        assert f"iterations/{t:04d}/{name}: sha256 mismatch" in run.verify_for_resume()
    (run.iteration_dir(1) / "policy" / "config.json").write_text("{ }")  # any size change is seen
    assert "iterations/0001/policy/config.json: size mismatch (manifest 2 bytes, found 3)" in run.verify_for_resume()


def test_is_committed_and_find_run_dir(run: RunDir, tmp_path: Path) -> None:
    from eva.checkpoint import find_run_dir, is_committed

    folder = _write_iteration(run, 0)
    assert not is_committed(folder)
    run.commit(0)
    assert is_committed(folder)
    assert find_run_dir(folder / "policy" / "x.parquet").root == run.root.resolve()
    assert find_run_dir(run.root / "new" / "deeper" / "out.jsonl").root == run.root.resolve()
    assert find_run_dir(tmp_path / "elsewhere" / "out.jsonl") is None
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "run.yaml").write_text("run: {}")  # a config file is not a run directory
    assert find_run_dir(tmp_path / "cfgs" / "out.jsonl") is None


def test_foreign_entries_of_a_folder_that_is_not_a_run_directory(tmp_path: Path) -> None:
    assert RunDir(tmp_path / "missing").foreign_entries() == []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    (tmp_path / "data" / "run.lock").write_text("")
    assert RunDir(tmp_path / "data").foreign_entries() == ["notes.txt"]
    run = RunDir(tmp_path / "r")
    run.init(_config())
    assert run.foreign_entries() == [] and run.is_run_dir()


# --- stage markers record the config they ran under ------------------------------------------------------


def test_stages_run_under_another_config_are_stale_with_everything_after_them(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    old, new = _config(), _config(solver={"beta": 0.2})
    run.init(old)
    run.mark_stage(1, "estimate", config_hash=old.fingerprint())
    run.mark_stage(1, "sample", config_hash=old.fingerprint())
    run.mark_stage(1, "evolve", config_hash=old.fingerprint())
    assert run.stale_stages(1, old.fingerprint()) == []
    assert run.stale_stages(1, new.fingerprint()) == ["estimate", "sample", "evolve"]
    run.init(new, allow_changes=["solver.beta"])
    run.drop_stages(1, run.stale_stages(1, new.fingerprint()))
    assert run.stages_done(1) == []
    assert [e for e in run.events() if e["kind"] == "stages_dropped"][-1]["stages"] == ["estimate", "sample", "evolve"]
    # redone under the new config, then changed back to the old one for the later stages
    run.mark_stage(1, "estimate", config_hash=new.fingerprint())
    run.mark_stage(1, "sample", config_hash=old.fingerprint())
    run.mark_stage(1, "evolve", config_hash=new.fingerprint())
    assert run.stale_stages(1, new.fingerprint()) == ["sample", "evolve"]  # evolve read sample's output
    assert json.loads((run.iteration_dir(1) / "stages" / "sample.done").read_text())["config_hash"] == old.fingerprint()


def test_markers_without_a_fingerprint_count_as_current(run: RunDir) -> None:
    run.mark_stage(1, "estimate")  # as written by an eva that did not record the config
    assert run.stale_stages(1, "anything") == []
    _write_iteration(run, 1)
    run.commit(1)
    with pytest.raises(RunDirError, match="committed"):
        run.drop_stages(1, ["estimate"])


def test_only_the_newest_committed_iteration_keeps_the_fp32_masters(run: RunDir) -> None:
    """policy/master/ (the trainer's fp32 masters) of iteration t - 1 goes once t is committed: a resume
    reads the newest iteration's only. Listed as pruned in the manifest; the rest of the policy stays."""
    for t in range(3):
        folder = _write_iteration(run, t)
        if t:
            atomic_write_bytes(folder / "policy" / "master" / "master.safetensors", bytes(range(256)) * 8)
        run.commit(t)
        assert run.prune_masters(t) is (t == 2)  # iteration 0 has none; 1's go when 2 commits
    assert not (run.iteration_dir(1) / "policy" / "master").exists()
    assert (run.iteration_dir(1) / "policy" / "model.safetensors").is_file()
    assert (run.iteration_dir(2) / "policy" / "master" / "master.safetensors").is_file()
    assert "policy/master/master.safetensors" in run.manifest(1)["pruned"]
    assert run.verify_all() == [] and run.prune_masters(2) is False  # idempotent
