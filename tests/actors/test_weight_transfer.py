"""Collective weight transfer (ray.weight_sync; actors.weight_transfer): the chunk plan, the path each
config resolves to, and a real push over eva's gloo backend from the trainer actor into vLLM engine
actors, through vLLM's own weight-transfer control plane."""

from __future__ import annotations

import pytest
import torch

from actors.cluster import transfer_backend, weight_sync
from actors.weight_transfer import _nbytes, _plan
from eva.config import load_config

TEXTS = ["What is 3 plus 3?", "Name three primary colors.", "What is 5 plus 5?"]


def test_the_plan_packs_consecutive_parameters_up_to_the_chunk_size_and_a_larger_one_alone():
    assert _plan([40, 50, 20, 300, 10], 100) == [[0, 1], [2], [3], [4]]
    assert _plan([500], 100) == [[0]]
    assert _plan([], 100) == []
    sizes = [7, 7, 7, 7, 7, 7, 7]
    plan = _plan(sizes, 21)
    assert plan == [[0, 1, 2], [3, 4, 5], [6]] and sum(plan, []) == list(range(7))
    assert _nbytes([3, 4], torch.bfloat16) == 24 and _nbytes([], torch.float32) == 4


@pytest.mark.parametrize(
    ("sets", "path", "backend"),
    [
        ([], "object_store", None),  # auto: the object store until nccl and ipc have run on a GPU
        (["ray.engine.num_gpus=1", "ray.trainer.num_gpus=1"], "object_store", None),
        (["ray.engine.num_gpus=1", "ray.trainer.num_gpus=1", "ray.weight_sync=nccl"], "nccl", "nccl"),
        (
            ["ray.engine.num_gpus=0.5", "ray.trainer.num_gpus=0.5", "ray.colocate=true", "ray.weight_sync=ipc"],
            "ipc",
            "ipc",
        ),
        (["ray.weight_sync=gloo"], "gloo", "eva_gloo"),
    ],
)
def test_each_path_resolves_to_its_vllm_backend(sets, path, backend):
    cfg = load_config(None, sets)
    assert weight_sync(cfg) == path and transfer_backend(cfg) == backend


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["ray.weight_sync=nccl"], "ray.weight_sync nccl .*ray.engine.num_gpus is 0 and ray.trainer.num_gpus is 0"),
        (["ray.weight_sync=ipc", "ray.engine.num_gpus=1", "ray.trainer.num_gpus=1"], "set ray.colocate true"),
        (
            ["ray.weight_sync=gloo", "model.tensor_parallel_size=2", "ray.engine.num_gpus=2"],
            "gloo with model.tensor_parallel_size 2",
        ),
        (["ray.weight_sync=shm"], "ray.weight_sync"),
    ],
)
def test_a_path_the_placement_cannot_use_is_refused_by_name(sets, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, sets)


@pytest.mark.ray
def test_a_gloo_push_serves_what_the_object_store_push_serves_and_survives_an_engine_restart(
    ray_session, tiny_model_path, tmp_path
):
    """Two replicas (their own rank offsets in one group) receive a trained policy from the trainer over
    gloo, packed in several chunks: each then serves exactly what an engine given the same weights
    through the object store serves (logprobs equal, output head included). A replica Ray restarts
    has left the group: the pool gives it the weights through the object store before its retry, and
    the next push forms a new group with both."""
    from actors.engine import GenerationEngine, SamplingSpec
    from actors.pool import EnginePool
    from actors.trainer import PolicyTrainer
    from eva.config import ModelSection, SolverSection
    from eva.types import PreferencePair

    ray = ray_session
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    engine_cls = ray.remote(num_cpus=0.25, max_restarts=1)(GenerationEngine)
    gloo = [
        engine_cls.remote(tiny_model_path, model, str(tmp_path / f"e{i}"), 0, "policy-0", False, "eva_gloo")
        for i in range(2)
    ]
    plain = ray.remote(num_cpus=0.25)(GenerationEngine).remote(tiny_model_path, model, str(tmp_path / "p"))
    pairs = [
        PreferencePair(f"p{i}", f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "No.", 1.0, 0.0, 1)
        for i in range(4)
    ]
    solver = SolverSection(learning_rate=1e-2, epochs=1, per_device_batch_size=2, max_length=128, max_prompt_length=64)
    trainer = ray.remote(num_cpus=0.25, runtime_env={"env_vars": {"EVA_GLOO_CHUNK_BYTES": str(1 << 18)}})(
        PolicyTrainer
    ).remote(tiny_model_path, tiny_model_path, solver, "float32", str(tmp_path / "t"), 0, iteration=0)
    try:
        ray.get([h.ready.remote() for h in [*gloo, plain]], timeout=300)
        prompts = [ray.get(plain.apply_chat_template.remote(t)) for t in TEXTS]
        start = ray.get(plain.next_token_logprobs.remote(prompts, 5), timeout=120)
        assert ray.get(trainer.train.remote(pairs, 1), timeout=300)["steps"] == 2
        ray.get(trainer.__ray_call__.remote(lambda self: setattr(self, "iteration", 1)))
        ray.get(plain.update_weights.remote(trainer.state_dict.remote(1), "policy-1"), timeout=120)
        want = ray.get(plain.next_token_logprobs.remote(prompts, 5), timeout=120)
        assert want != start

        pool = EnginePool(gloo, timeout_s=300, retries=2, version="policy-0")
        assert pool.send_from(trainer, "eva_gloo", 1, 1, "policy-1") > 0
        for h in gloo:
            assert ray.get(h.next_token_logprobs.remote(prompts, 5), timeout=120) == want
            assert ray.get(h.ready.remote())["weights_version"] == "policy-1"
        sent = ray.get(trainer.__ray_call__.remote(lambda self: (self._sender.formed, len(self._sender.engines))))
        assert sent == (1, 2)
        weights = ray.get(trainer.state_dict.remote(1))
        assert sum(t.numel() * t.element_size() for t in weights.values()) > 3 << 18  # several 256 KiB chunks

        greedy = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=8)
        served = pool.generate(["a", "b"], TEXTS[:2], [0, 0], greedy)
        pid = ray.get(gloo[1].ready.remote())["pid"]
        ray.kill(gloo[1], no_restart=False)  # a crash: it comes back with policy-0, outside the group
        again = pool.generate(["a", "b"], TEXTS[:2], [0, 0], greedy)
        assert again.generations == served.generations and any("policy-1" in r for r in again.retries)
        assert ray.get(gloo[1].ready.remote())["pid"] != pid
        assert ray.get(gloo[1].transfer_group.remote()) is None

        pool.send_from(trainer, "eva_gloo", 1, 1, "policy-1b")  # a new group, both replicas in it
        assert ray.get(trainer.__ray_call__.remote(lambda self: self._sender.formed)) == 2
        groups = ray.get([h.transfer_group.remote() for h in gloo])
        assert groups[0] is not None and groups[0] == groups[1]
        for h in gloo:
            assert ray.get(h.next_token_logprobs.remote(prompts, 5), timeout=120) == want
    finally:
        for h in [*gloo, plain, trainer]:
            ray.kill(h)
