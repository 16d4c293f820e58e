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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": actor_env()})
    yield ray
    ray.shutdown()


# Fixtures that load a real model, start Ray or run the CLI: a test that uses one is not a unit test.
HEAVY_FIXTURES = frozenset({"tiny_model_path", "tiny_engine", "minilm", "ray_session", "eva", "reference_run", "reference_run_3"})


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a heavy fixture `integration`, so plain `pytest` (the fast tier,
    pyproject's addopts) leaves it out without each test having to say so."""
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
