"""GPU checks of issue 17 (memory and the GPU path): they run only where torch sees a CUDA device and are
skipped elsewhere. No GPU has run them yet (benchmarks/RESULTS.md says so). Each prints what it measured
(`pytest -s tests/gpu` shows it) for benchmarks/RESULTS.md.

- A policy engine in vLLM's sleep mode (model.sleep) gives back its GPU memory while asleep, and wakes
  serving the saved policy folder it is given: the responses of a fresh engine started from it.
- eva's engine actor against bare vLLM `generate` on the same prompts (target: >= 90% of its tokens/s).
- One colocated iteration of the CPU default's settings on one GPU (ray.colocate: engine and trainer
  share it): the peak GPU memory the card reached, sampled with nvidia-smi.
- A push over vLLM's CUDA IPC (one GPU) and NCCL (two) weight-transfer engines (ray.weight_sync) serves
  what the object-store push serves; seconds per GB of each path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from actors.cluster import _remote
from actors.engine import GenerationEngine, SamplingSpec
from eva.config import ActorResources, ModelSection

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not tested here"),
    pytest.mark.ray,
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=64)
SPEC = SamplingSpec(n=4, temperature=0.8, top_p=0.95, max_tokens=128)
TEXTS = [f"Write a short story about the number {i}." for i in range(64)]


def _free_gib(ray, engine) -> float:
    """Free memory of the engine's GPU as the engine's process sees it."""
    return ray.get(engine.__ray_call__.remote(lambda self: torch.cuda.mem_get_info()[0] / 2**30), timeout=120)


def _smollm2() -> str:
    from actors.models import resolve_model_path

    return resolve_model_path("builtin:smollm2-135m-instruct")


def test_a_sleeping_gpu_engine_frees_its_memory_and_wakes_serving_the_saved_policy(ray_session, tmp_path):
    ray = ray_session
    path = _smollm2()
    moved = tmp_path / "policy-1"
    shutil.copytree(path, moved)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(moved / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    save_file(
        {k: v + 0.01 * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in weights.items()},
        str(moved / "model.safetensors"),
    )
    res = ActorResources(num_cpus=0.1, num_gpus=0.5)
    section = ModelSection(path=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.4)
    engine = _remote(GenerationEngine, res).remote(path, section, str(tmp_path / "a"), 0, "policy-0", True)
    fresh = None
    try:
        ray.get(engine.ready.remote(), timeout=900)
        awake = _free_gib(ray, engine)
        seconds = ray.get(engine.sleep.remote(False), timeout=300)
        asleep = _free_gib(ray, engine)
        woke = ray.get(engine.wake_up.remote(str(moved), "policy-1"), timeout=300)
        info = ray.get(engine.ready.remote())
        got = ray.get(engine.generate.remote(["a", "b"], TEXTS[:2], [0, 1], GREEDY, True, "policy-1"), timeout=300)
        print(
            f"\nsleep mode, SmolLM2-135M, 0.4 of the GPU: free {awake:.2f} GiB awake, {asleep:.2f} asleep "
            f"(+{asleep - awake:.2f}); sleep {seconds:.2f}s, wake + load the folder {woke:.2f}s"
        )
        assert asleep - awake > 0.5 * 0.4 * torch.cuda.get_device_properties(0).total_memory / 2**30
        assert (info["asleep"], info["weights_version"]) == (False, "policy-1")
        section = ModelSection(path=str(moved), dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.4)
        ray.get(engine.sleep.remote(False), timeout=300)  # room for the fresh engine
        fresh = _remote(GenerationEngine, res).remote(str(moved), section, str(tmp_path / "b"))
        want = ray.get(fresh.generate.remote(["a", "b"], TEXTS[:2], [0, 1], GREEDY), timeout=900)
        assert got.generations == want.generations
    finally:
        for actor in (engine, fresh):
            if actor is not None:
                ray.kill(actor)


class BareVLLM:
    """vLLM's LLM with nothing of eva around it: the throughput eva's engine actor is held to."""

    def __init__(self, path: str) -> None:
        import os

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.llm = LLM(model=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.4, seed=0)

    def tokens_per_s(self, texts: list[str], spec: SamplingSpec) -> float:
        from vllm import SamplingParams

        tok = self.llm.get_tokenizer()
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts
        ]
        params = SamplingParams(n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens)
        t0 = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs) / (time.perf_counter() - t0)


def test_eva_engine_generates_at_least_90_percent_of_bare_vllm_tokens_per_s(ray_session, tmp_path):
    ray = ray_session
    path = _smollm2()
    res = ActorResources(num_cpus=0.1, num_gpus=0.5)
    rates: dict[str, float] = {}
    bare = _remote(BareVLLM, res).remote(path)
    try:
        ray.get(bare.tokens_per_s.remote(TEXTS, SPEC), timeout=900)  # warm-up
        rates["bare"] = ray.get(bare.tokens_per_s.remote(TEXTS, SPEC), timeout=900)
    finally:
        ray.kill(bare)
    section = ModelSection(path=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.4)
    engine = _remote(GenerationEngine, res).remote(path, section, str(tmp_path))
    try:
        keys, seeds = [str(i) for i in range(len(TEXTS))], list(range(len(TEXTS)))
        ray.get(engine.generate.remote(keys, TEXTS, seeds, SPEC), timeout=900)
        t0 = time.perf_counter()
        batch = ray.get(engine.generate.remote(keys, TEXTS, seeds, SPEC), timeout=900)
        rates["eva"] = batch.new_tokens / (time.perf_counter() - t0)  # the actor call included
    finally:
        ray.kill(engine)
    print(f"\nSmolLM2-135M, 64 prompts x 4 x 128 tokens: bare vLLM {rates['bare']:.0f} tok/s, eva {rates['eva']:.0f}")
    assert rates["eva"] >= 0.9 * rates["bare"]


@pytest.mark.parametrize("weight_sync", ["object_store", "ipc"])
def test_one_colocated_iteration_and_its_peak_gpu_memory(tmp_path, weight_sync):
    """cpu-default's run on one GPU shared by the engine and the trainer (the judge on its own share).
    ipc: the engine's weights wake alone after the round and take the trainer's push over CUDA IPC."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                peak[0] = max(peak[0], int(out.stdout.split()[0]))
            time.sleep(0.5)

    sets = [
        "ray.colocate=true",
        "ray.engine.num_gpus=0.5",
        "ray.trainer.num_gpus=0.4",
        "ray.reward.num_gpus=0.1",
        "model.gpu_memory_utilization=0.3",
        f"ray.weight_sync={weight_sync}",
    ]
    args = [sys.executable, "-m", "pipelines.cli", "run", "--preset", "cpu-default", "--iterations", "1"]
    args += ["--run-dir", str(tmp_path / "run"), *[x for s in sets for x in ("--set", s)]]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)
    finally:
        done.set()
        thread.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(
        f"\ncolocated cpu-default iteration on one GPU ({weight_sync}): {time.perf_counter() - t0:.0f}s, "
        f"peak {peak[0]} MiB used"
    )


@pytest.mark.parametrize("backend", ["ipc", "nccl"])
def test_a_collective_push_serves_what_the_object_store_push_serves_and_its_seconds_per_gb(
    ray_session, tmp_path, backend
):
    """ray.weight_sync ipc (trainer and engine on one GPU) and nccl (one GPU each): the trainer pushes a
    moved SmolLM2 through vLLM's weight-transfer engine and the engine then generates what an engine
    given the same weights through the object store generates. Prints seconds per GB of each path."""
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("nccl needs two GPUs: NCCL refuses two ranks on one device")
    from actors.pool import EnginePool
    from actors.trainer import PolicyTrainer
    from eva.config import SolverSection

    ray = ray_session
    path = _smollm2()
    share = 0.5 if backend == "ipc" else 1.0
    section = ModelSection(path=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.3)
    res = ActorResources(num_cpus=0.1, num_gpus=share)
    engine = _remote(GenerationEngine, res).remote(path, section, str(tmp_path / "e"), 0, "policy-0", False, backend)
    trainer = _remote(PolicyTrainer, ActorResources(num_cpus=0.1, num_gpus=share)).remote(
        path, path, SolverSection(), "bfloat16", str(tmp_path / "t"), 0, iteration=0
    )
    try:
        ray.get([engine.ready.remote(), trainer.ready.remote()], timeout=900)

        def move(self) -> int:  # a trained policy stand-in: every weight moved, on the trainer's GPU
            gen = torch.Generator(device=self.policy.device).manual_seed(0)
            with torch.no_grad():
                for p in self.policy.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))
            self.iteration = 1
            return sum(p.numel() * p.element_size() for p in self.policy.parameters())

        nbytes = ray.get(trainer.__ray_call__.remote(move), timeout=300)
        pool = EnginePool([engine], timeout_s=600, version="policy-0")
        seconds = [pool.send_from(trainer, backend, 1, 1, f"policy-1.{i}") for i in range(3)]  # 1st forms the group
        got = pool.generate(["a", "b"], TEXTS[:2], [0, 1], GREEDY)
        t0 = time.perf_counter()
        pool.update_weights(trainer.state_dict.remote(1), "policy-1-store")
        store = time.perf_counter() - t0
        want = pool.generate(["a", "b"], TEXTS[:2], [0, 1], GREEDY)
        gb = nbytes / 1e9
        print(
            f"\n{backend}: SmolLM2-135M bf16 ({gb:.2f} GB): first push (group formed) {seconds[0]:.2f}s, then "
            f"{min(seconds[1:]) / gb:.2f} s/GB; object store {store / gb:.2f} s/GB"
        )
        assert got.generations == want.generations
    finally:
        for actor in (engine, trainer):
            ray.kill(actor)
