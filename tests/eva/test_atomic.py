"""Durable folder writes: what is fsynced, and in which order relative to the rename."""

from __future__ import annotations

from pathlib import Path

import pytest

from eva.atomic import atomic_folder, is_temp_file, remove_temp_leftovers


def test_atomic_folder_fsyncs_files_and_folders_before_and_the_parent_after_the_rename(
    tmp_path: Path, durable_writes
) -> None:
    target = tmp_path / "it" / "policy"
    with atomic_folder(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"w" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.json").write_text("{}")
    assert (target / "sub" / "tokenizer.json").read_text() == "{}"
    durable_writes.assert_folder(target)
    assert [p.name for p in target.parent.iterdir()] == ["policy"]


def test_atomic_folder_refuses_or_replaces_an_existing_folder_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "policy"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_folder(target):
            pass
    with pytest.raises(RuntimeError), atomic_folder(target, replace=True) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["policy"] and (target / "old").is_file()
    with atomic_folder(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]


def test_remove_temp_leftovers_takes_files_and_folders_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / ".policy.ab.tmp" / "deep").mkdir(parents=True)
    (tmp_path / ".policy.ab.tmp" / "deep" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / ".train.done.1.tmp").write_text("x")
    (tmp_path / "stages" / "train.done").write_text("{}")
    (tmp_path / ".hidden").write_text("not a temp name")
    removed = remove_temp_leftovers(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [".policy.ab.tmp", "stages/.train.done.1.tmp"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        ".hidden",
        "stages",
        "stages/train.done",
    ]
    assert is_temp_file(Path(".policy.tmp")) and not is_temp_file(Path("policy.tmp"))
