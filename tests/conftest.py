"""Shared fixtures: the tiny model folder and one local Ray cluster per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from actors.models import TINY_MODEL, resolve_model_path

    return resolve_model_path(TINY_MODEL)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster (2 CPUs), started once and shut down at the end of the session."""
    import ray

    from actors.cluster import actor_env

    # address="local": a fresh cluster, never one a `ray start` left behind (/tmp/ray/ray_current_cluster)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": actor_env()}
    )
    yield ray
    ray.shutdown()


class DurableWrites:
    """Every os.fsync (by the path of its descriptor) and os.rename, in order (`durable_writes`)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def assert_folder(self, target) -> None:
        """Every file and folder of `target` was fsynced under the temp name before the rename that
        made it `target`, and the parent folder was fsynced after the rename."""
        from pathlib import Path

        from eva.atomic import is_temp_file

        target = Path(target)
        [at] = [i for i, e in enumerate(self.events) if e[0] == "rename" and e[2] == str(target)]
        tmp = Path(self.events[at][1])
        assert is_temp_file(tmp) and tmp.parent == target.parent
        before = {e[1] for e in self.events[:at] if e[0] == "fsync"}
        after = [e[1] for e in self.events[at + 1 :] if e[0] == "fsync"]
        for path in [target, *target.rglob("*")]:
            assert str(tmp / path.relative_to(target)) in before, f"{path} was not fsynced before the rename"
        assert str(target.parent) in after, "the parent folder was not fsynced after the rename"


@pytest.fixture
def durable_writes(monkeypatch) -> DurableWrites:
    """Records fsyncs and renames (os.fsync, os.rename patched) for tests of durable writes."""
    journal = DurableWrites()
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        journal.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        journal.events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return journal


# Fixtures that load a real model, start Ray or run the CLI: a test that uses one is not a unit test.
HEAVY_FIXTURES = frozenset(
    {"tiny_model_path", "tiny_engine", "minilm", "ray_session", "eva", "reference_run", "reference_run_3"}
)


# The modules of the longest tests (5-15 minutes each on a 2-core AVX2 CPU, most of them SIGKILL-and-resume:
# one process start per kill), run first. Under `pytest -n 2 --dist worksteal` (CI, the README) the
# worker that has them starts them at once, and the other takes its last pending tests when it runs
# out: last in collection order, one of them would run alone at the end.
LONGEST_FIRST = ("tests/pipelines/test_resume.py", "tests/pipelines/test_online.py", "tests/cluster/test_two_node.py")


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a heavy fixture `integration`, so plain `pytest` (the fast tier,
    pyproject's addopts) leaves it out without each test having to say so; run LONGEST_FIRST first."""
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
