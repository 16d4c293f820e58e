"""GPU checks of issue 18 (items 1, 2, 7): they run only where torch sees a CUDA device and are skipped
elsewhere (no GPU has run them yet: benchmarks/RESULTS.md says so). Each prints the numbers it measured
(`pytest -s` shows them) for benchmarks/RESULTS.md.

- 1: two engines sharing one GPU, started one after another (actors.cluster.launch), get KV caches of
  the same size; started at once, vLLM charges one's weights to the other's free-memory measurement.
- 2: with model.enforce_eager unset a GPU engine runs with CUDA graphs, and is faster than eager.
- 7: the cost of per-request seeds on GPU (seeded rows skip FlashInfer's sampler), and that seeded
  sampling reproduces across batch compositions only with model.batch_invariant.
"""

from __future__ import annotations

import time

import pytest
import torch

from actors.cluster import Launch, _remote, launch, shares_gpu
from actors.engine import GenerationEngine, SamplingSpec
from eva.config import ActorResources, ModelSection

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not tested here"),
    pytest.mark.ray,
    pytest.mark.slow,
]

SPEC = SamplingSpec(n=4, temperature=0.8, top_p=0.95, max_tokens=128)
TEXTS = [f"Write a short story about the number {i}." for i in range(64)]


def _vllm_config(ray, engine):
    return ray.get(engine.__ray_call__.remote(lambda self: self.llm.llm_engine.vllm_config), timeout=120)


def _tokens_per_s(ray, engine, seeds: list[int] | None = None) -> float:
    seeds = seeds or list(range(len(TEXTS)))
    batch = ray.get(engine.generate.remote([str(i) for i in range(len(TEXTS))], TEXTS, seeds, SPEC), timeout=600)
    return batch.new_tokens / batch.seconds


def _engine(ray, path: str, tmp_path, res: ActorResources, **model):
    section = ModelSection(path=path, dtype="bfloat16", max_model_len=512, **model)
    return _remote(GenerationEngine, res).remote(path, section, str(tmp_path))


def test_engines_sharing_a_gpu_started_in_sequence_get_equal_kv_caches(ray_session, tiny_model_path, tmp_path):
    ray = ray_session
    res = ActorResources(num_cpus=0.1, num_gpus=0.3)
    assert shares_gpu(res)
    section = ModelSection(path=tiny_model_path, dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.3)
    actor = _remote(GenerationEngine, res)
    launches = [
        Launch(lambda: actor.remote(tiny_model_path, section, str(tmp_path)), lambda h: h.ready.remote(), True)
        for _ in range(2)
    ]
    engines = launch(launches, 900)
    try:
        blocks = [_vllm_config(ray, e).cache_config.num_gpu_blocks for e in engines]
        print(f"\nKV cache blocks of two 0.3-GPU engines started in sequence: {blocks}")
        assert blocks[0] and abs(blocks[0] - blocks[1]) <= 0.02 * blocks[0]
    finally:
        for e in engines:
            ray.kill(e)


def test_gpu_engines_run_with_cuda_graphs_unless_told_otherwise(ray_session, tiny_model_path, tmp_path):
    ray = ray_session
    res = ActorResources(num_cpus=0.1, num_gpus=1)
    rates = {}
    for eager in (None, True):
        engine = _engine(ray, tiny_model_path, tmp_path / str(eager), res, enforce_eager=eager)
        try:
            ray.get(engine.ready.remote(), timeout=900)
            assert _vllm_config(ray, engine).model_config.enforce_eager is bool(eager)
            _tokens_per_s(ray, engine)  # warm-up
            rates[eager] = _tokens_per_s(ray, engine)
        finally:
            ray.kill(engine)
    print(f"\nnew tokens/s, 64 prompts x 4 x 128: CUDA graphs {rates[None]:.0f}, eager {rates[True]:.0f}")
    assert rates[None] > rates[True]


def test_seeded_sampling_cost_and_batch_invariance(ray_session, tiny_model_path, tmp_path):
    ray = ray_session
    res = ActorResources(num_cpus=0.1, num_gpus=1)
    rates, alone_equal = {}, {}
    for seeded, invariant in ((True, False), (False, False), (True, True)):
        engine = _engine(
            ray,
            tiny_model_path,
            tmp_path / f"{seeded}{invariant}",
            res,
            seeded_sampling=seeded,
            batch_invariant=invariant,
        )
        try:
            ray.get(engine.ready.remote(), timeout=900)
            _tokens_per_s(ray, engine)
            t0 = time.perf_counter()
            rates[(seeded, invariant)] = _tokens_per_s(ray, engine)
            if seeded:
                full = ray.get(engine.generate.remote(["a"] * 64, TEXTS, list(range(64)), SPEC), timeout=600)
                alone = ray.get(engine.generate.remote(["a"], TEXTS[5:6], [5], SPEC), timeout=600)
                alone_equal[invariant] = alone.generations[0] == full.generations[5]
            print(
                f"seeded={seeded} batch_invariant={invariant}: {rates[(seeded, invariant)]:.0f} tok/s "
                f"({time.perf_counter() - t0:.1f}s)"
            )
        finally:
            ray.kill(engine)
    print(
        f"\nseeded vs unseeded: {rates[(True, False)] / rates[(False, False)]:.2f}x; "
        f"same responses alone and in a batch of 64: {alone_equal}"
    )
    assert alone_equal[True]  # batch-invariant kernels + seeds: exact, whatever the batch
