"""Start-up of actors that share a GPU (issue 18, item 1): on a Ray cluster with logical GPUs, actors
with a fraction of a GPU start one after another (each up before the next is created), whole-GPU
and CPU actors meanwhile; the reward and trainer get placement groups bounded by
`ray.placement_timeout_s`. Runs in its own Ray instance (2 logical GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.cluster import shares_gpu
from eva.config import ActorResources

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.ray

PROBE = r"""
import json, time, ray
from actors.cluster import ClusterError, Launch, _engine_options, _engine_placement, _remote, launch, shares_gpu
from eva.config import ActorResources

ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)

class Slow:  # an actor whose start takes a while, like a vLLM engine profiling its memory
    def __init__(self, tag, fail=False):
        self.start = time.time()
        time.sleep(1.5)
        if fail:
            raise RuntimeError("No available memory for the cache blocks")
        self.end, self.tag = time.time(), tag
    def ready(self):
        return {"tag": self.tag, "start": self.start, "end": self.end,
                "gpus": ray.get_runtime_context().get_accelerator_ids()["GPU"]}

def make(res, options, tag, fail=False, k=1):
    actor = _remote(Slow, res, **options)
    return Launch(lambda: actor.remote(tag, fail), lambda h: h.ready.remote(), shares_gpu(res, k))

# the 2B deploy config, scaled: 2 engines at 0.25 GPU, the reward at 0.5, the trainer on a GPU of its own
engine = ActorResources(num_cpus=0.1, num_gpus=0.25, replicas=2)
reward = ActorResources(num_cpus=0.1, num_gpus=0.5)
trainer = ActorResources(num_cpus=0.1, num_gpus=1)
groups = {what: _engine_placement(res, 1, "PACK", 30, what) for what, res in
          (("engine", engine), ("reward", reward), ("trainer", trainer))}
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In
launches = [make(engine, o, f"engine{i}") for i, o in enumerate(_engine_options(engine, groups["engine"], 1))]
for what, res in (("reward", reward), ("trainer", trainer)):
    launches.append(make(res, {"scheduling_strategy": In(groups[what][0], placement_group_bundle_index=0)}, what))
t0 = time.time()
handles = launch(launches, 60)
out = {"seconds": time.time() - t0, "actors": ray.get([h.ready.remote() for h in handles], timeout=60)}
for h in handles:
    ray.kill(h)
from ray.util.placement_group import remove_placement_group
for made in groups.values():
    remove_placement_group(made[0])

# a trainer that cannot be placed: a clear error within placement_timeout_s, not after timeout_s
t0 = time.time()
try:
    _engine_placement(ActorResources(num_cpus=0.1, num_gpus=3), 1, "PACK", 2, "trainer")
except ClusterError as e:
    out["unplaced"] = {"error": str(e), "seconds": time.time() - t0}

# a start that fails: the error comes back and every actor launch created is gone
time.sleep(1)
free = ray.available_resources().get("GPU", 0)
try:
    launch([make(ActorResources(num_cpus=0.1, num_gpus=0.25), {}, "a"),
            make(ActorResources(num_cpus=0.1, num_gpus=0.25), {}, "b", fail=True),
            make(ActorResources(num_cpus=0.1, num_gpus=0.25), {}, "c")], 60)
except Exception as e:
    out["failed"] = type(e).__name__ + ": " + str(e)
time.sleep(3)
out["gpus_free_before"], out["gpus_free_after"] = free, ray.available_resources().get("GPU", 0)
print("RESULT " + json.dumps(out))
"""


def test_which_actors_share_a_gpu():
    assert shares_gpu(ActorResources(num_gpus=0.25))
    assert shares_gpu(ActorResources(num_gpus=0.5))
    assert not shares_gpu(ActorResources(num_gpus=1))
    assert not shares_gpu(ActorResources(num_gpus=0))
    assert not shares_gpu(ActorResources(num_gpus=2), tensor_parallel=2)  # its ranks take whole GPUs


def test_actors_sharing_a_gpu_start_one_after_another():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    by_tag = {a["tag"]: a for a in out["actors"]}
    shared = sorted((by_tag[t] for t in ("engine0", "engine1", "reward")), key=lambda a: a["start"])
    assert [a["tag"] for a in shared] == ["engine0", "engine1", "reward"]  # in the order given
    for before, after in zip(shared, shared[1:], strict=False):
        assert after["start"] >= before["end"], (before, after)  # created only once the previous one was up
    trainer = by_tag["trainer"]
    assert trainer["start"] < shared[0]["end"]  # a whole-GPU actor starts meanwhile
    assert trainer["gpus"] and all(trainer["gpus"] != a["gpus"] for a in shared)
    assert 3 * 1.5 <= out["seconds"] < 3 * 1.5 + 20  # three starts in a row; the trainer's overlapped
    unplaced = out["unplaced"]
    assert "ray.trainer" in unplaced["error"] and "did not fit the cluster within 2s" in unplaced["error"]
    assert unplaced["seconds"] < 15
    assert out["failed"].startswith("ActorDiedError") and "No available memory for the cache blocks" in out["failed"]
    assert out["gpus_free_after"] == out["gpus_free_before"] == 2  # nothing left running or reserved
