"""Engine placement on a Ray cluster with (logical) GPUs: tensor-parallel replicas each get a
placement group of one GPU bundle per rank, the engine actor takes no GPU itself and the tasks it
starts (vLLM's rank workers) land in its group. Runs in its own Ray instance (4 logical GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.cluster import engine_bundles, engines_sleep
from eva.config import ActorResources, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.ray

PROBE = r"""
import json, ray
from actors.cluster import ClusterError, _engine_placement, _engines
from eva.config import ActorResources
from ray.util.placement_group import placement_group_table

ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)

@ray.remote(num_gpus=1, num_cpus=0)
class Rank:  # what vLLM's Ray executor starts per tensor-parallel rank: an actor holding one GPU
    def where(self):
        pg = ray.util.get_current_placement_group()
        return pg.id.hex() if pg else None, ray.get_runtime_context().get_accelerator_ids()["GPU"]

class Probe:
    def __init__(self, tag):
        self.tag = tag
    def where(self):
        pg = ray.util.get_current_placement_group()
        ranks = [Rank.remote() for _ in range(2)]  # alive together, as an engine's workers are
        return {"group": pg.id.hex(), "gpus": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
                "ranks": ray.get([r.where.remote() for r in ranks])}

res = ActorResources(num_cpus=0.5, num_gpus=2, replicas=2)
groups = _engine_placement(res, 2, "PACK", 60, "engine")
out = {"replicas": ray.get([a.where.remote() for a in _engines(Probe, res, groups, 2, ("x",))], timeout=120)}
try:  # a third TP-2 replica has no GPUs left: a clear error, and nothing left reserved
    _engine_placement(ActorResources(num_cpus=0.1, num_gpus=2, replicas=1), 2, "PACK", 3, "creator")
except ClusterError as e:
    out["error"] = str(e)
out["pending"] = sum(
    1 for g in placement_group_table().values() if g["state"] != "REMOVED" and g["name"].startswith("eva-creator")
)
print("RESULT " + json.dumps(out))
"""


def test_bundles_per_tensor_parallel_rank():
    res = ActorResources(num_cpus=2, num_gpus=1, replicas=3)
    assert engine_bundles(res, 1, "STRICT_SPREAD") == [([{"CPU": 2, "GPU": 1}] * 3, "STRICT_SPREAD")]
    res = ActorResources(num_cpus=2, num_gpus=4, replicas=2)
    assert (
        engine_bundles(res, 4, "SPREAD")
        == [([{"CPU": 2, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}], "STRICT_PACK")] * 2
    )


def test_engines_sleep_through_training_on_cpu_or_on_a_gpu_they_share_with_the_trainer():
    """model.sleep auto: CPU engines sleep (the machine's memory is shared); GPU engines sleep only when
    engines and trainer ask for fractions of GPUs (Ray may put them on one card); an explicit value wins."""

    def sleeps(*sets: str) -> bool:
        return engines_sleep(load_config(None, ["model.sleep=auto", *sets], preset="tiny"))

    assert sleeps()
    assert not sleeps("ray.engine.num_gpus=1", "ray.trainer.num_gpus=1")
    assert not sleeps("ray.engine.num_gpus=0.5", "ray.trainer.num_gpus=1")
    assert sleeps("ray.engine.num_gpus=0.5", "ray.trainer.num_gpus=0.5")
    assert not engines_sleep(load_config(None, ["model.sleep=false"], preset="cpu-default"))
    assert engines_sleep(load_config(None, ["model.sleep=true", "ray.engine.num_gpus=1"], preset="tiny"))
    assert not engines_sleep(load_config(None, [], preset="tiny"))  # the tiny preset turns it off
    assert not sleeps("run.mode=online")  # engines generate between every optimizer step


def test_tensor_parallel_needs_one_gpu_per_rank():
    with pytest.raises(
        ConfigError,
        match=r"--set model.tensor_parallel_size=2: .*ray.engine.num_gpus is 1 but model.tensor_parallel_size is 2",
    ):
        load_config(None, ["ray.engine.num_gpus=1", "model.tensor_parallel_size=2"], preset="tiny")
    cfg = load_config(None, ["ray.engine.num_gpus=2", "model.tensor_parallel_size=2"], preset="tiny")
    assert cfg.ray.engine.num_gpus == 2


def test_tensor_parallel_replicas_and_their_rank_workers_share_a_group():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    replicas = out["replicas"]
    assert len({r["group"] for r in replicas}) == 2  # a group per replica
    for r in replicas:
        assert r["gpus"] == []  # the engine actor holds no GPU: its ranks do
        assert {group for group, _ in r["ranks"]} == {r["group"]}  # captured: the ranks run in the replica's group
        assert len({gpu for _, gpus in r["ranks"] for gpu in gpus}) == 2
    used = [gpu for r in replicas for _, gpus in r["ranks"] for gpu in gpus]
    assert sorted(used) == ["0", "1", "2", "3"]  # 2 replicas x TP 2 = every GPU once
    assert "did not fit the cluster" in out["error"] and "tensor_parallel_size" in out["error"] and out["pending"] == 0


COLOCATE_PROBE = r"""
import json, ray
from actors.cluster import _engine_placement, _engines, _in, _remote
from eva.config import ActorResources

ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)

class Probe:
    def __init__(self, tag):
        self.tag = tag
    def where(self):
        pg = ray.util.get_current_placement_group()
        return {"group": pg.id.hex(), "gpus": ray.get_runtime_context().get_accelerator_ids().get("GPU", [])}

engine, trainer = ActorResources(num_cpus=0.5, num_gpus=0.6, replicas=2), ActorResources(num_cpus=0.5, num_gpus=0.4)
groups = _engine_placement(engine, 1, "PACK", 60, "engine", share=trainer)
replicas = _engines(Probe, engine, groups, 1, ("engine",))
beside = _remote(Probe, trainer, scheduling_strategy=_in(groups)).remote("trainer")
out = {"replicas": ray.get([a.where.remote() for a in replicas], timeout=120)}
out["trainer"] = ray.get(beside.where.remote(), timeout=120)
print("RESULT " + json.dumps(out))
"""


def test_colocate_puts_the_trainer_on_the_first_engine_replicas_gpu():
    """ray.colocate on 2 logical GPUs: the trainer (0.4 GPU) joins replica 0's bundle (0.6 GPU), on the
    same GPU; replica 1 keeps the other GPU to itself."""
    assert engine_bundles(
        ActorResources(num_cpus=1, num_gpus=0.6, replicas=2), 1, "PACK", ActorResources(num_cpus=0.5, num_gpus=0.4)
    ) == [([{"CPU": 1.5, "GPU": 1.0}, {"CPU": 1, "GPU": 0.6}], "PACK")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", COLOCATE_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    first, second = out["replicas"]
    assert out["trainer"]["group"] == first["group"] and out["trainer"]["gpus"] == first["gpus"]
    assert len(first["gpus"]) == 1 and second["gpus"] != first["gpus"]


def test_colocate_needs_fractions_of_one_gpu_and_no_tensor_parallelism():
    base = ["ray.colocate=true", "ray.engine.num_gpus=0.5", "ray.trainer.num_gpus=0.5"]
    cfg = load_config(None, base, preset="tiny")
    assert cfg.ray.colocate and engines_sleep(load_config(None, [*base, "model.sleep=auto"], preset="tiny"))
    for sets, said in (
        (["ray.colocate=true"], "give both a fraction of one GPU"),
        (["ray.colocate=true", "ray.engine.num_gpus=0.7", "ray.trainer.num_gpus=0.5"], "summing to at most 1"),
        ([*base, "ray.engine.num_gpus=2", "model.tensor_parallel_size=2"], "ranks take whole GPUs"),
    ):
        with pytest.raises(ConfigError, match=said):
            load_config(None, sets, preset="tiny")
