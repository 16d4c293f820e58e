"""The vLLM generation engine as a real Ray actor on the tiny model."""

from __future__ import annotations

import math
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.engine import EngineAsleepError, GenerationEngine, SamplingSpec, StaleWeightsError
from actors.pool import EnginePool
from eva.config import ModelSection

pytestmark = pytest.mark.ray

SPEC = SamplingSpec(n=4, temperature=1.0, top_p=0.95, max_tokens=12)
GREEDY = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=12)
TEXTS = ["Name three primary colors.", "What is the capital of France?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def engines(ray_session, tiny_model_path, tmp_path_factory):
    ray = ray_session
    cls = ray.remote(num_cpus=0.5)(GenerationEngine)
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    work = str(tmp_path_factory.mktemp("engine"))
    handles = [cls.remote(tiny_model_path, model, work) for _ in range(2)]
    ray.get([h.ready.remote() for h in handles], timeout=300)
    yield handles
    for h in handles:
        ray.kill(h)


def test_the_kv_cache_holds_max_num_seqs_full_length_sequences(ray_session, engines):
    """kv_cache_gib auto on CPU: 32 sequences of max_model_len (256) tokens in 128-token blocks, plus
    the block vLLM keeps empty: 65 blocks. Never a whole GiB for a model that needs kilobytes."""
    info = ray_session.get(engines[0].ready.remote())
    assert info["max_num_seqs"] == 32 and info["kv_cache_tokens"] == (32 * 2 + 1) * 128


def test_more_sequences_than_the_engine_runs_at_once_wait_and_reproduce(ray_session, engines):
    """12 prompts x 4 samples = 48 sequences > max_num_seqs (32): the rest wait their turn, and every
    prompt's samples are the ones it gets alone."""
    texts = [f"{t} ({i})" for i in range(4) for t in TEXTS]
    keys = [str(i) for i in range(len(texts))]
    seeds = list(range(100, 100 + len(texts)))
    pool = EnginePool(engines[:1], timeout_s=120)
    many = pool.generate(keys, texts, seeds, SPEC)
    for i in (0, 5, 11):
        assert pool.generate([keys[i]], [texts[i]], [seeds[i]], SPEC).generations[0] == many.generations[i]


def test_n_distinct_samples_and_exact_reproduction(ray_session, engines):
    pool = EnginePool(engines[:1], timeout_s=120)
    first = pool.generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
    assert [g.prompt_id for g in first.generations] == ["a", "b", "c"]
    for g in first.generations:
        assert len(g.responses) == 4 and len(set(g.responses)) == 4
        assert all(0 < n <= 12 for n in g.num_tokens)
    assert first.new_tokens == sum(sum(g.num_tokens) for g in first.generations)
    again = pool.generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
    assert again.generations == first.generations
    other_seed = pool.generate(["a"], TEXTS[:1], [12], SPEC)
    assert other_seed.generations[0].responses != first.generations[0].responses


def test_batch_composition_and_replica_split_do_not_change_outputs(ray_session, engines):
    one = EnginePool(engines[:1], timeout_s=120).generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
    alone = EnginePool(engines[1:], timeout_s=120).generate(["c"], TEXTS[2:], [33], SPEC)  # other engine, other batch
    assert alone.generations[0] == one.generations[2]
    split = EnginePool(engines, timeout_s=120).generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
    assert split.generations == one.generations


def test_weight_update_changes_greedy_output_and_restore_is_exact(ray_session, engines, tiny_model_path):
    ray = ray_session
    pool = EnginePool(engines, timeout_s=120)
    original = load_file(f"{tiny_model_path}/model.safetensors")
    before = pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY).generations
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    pool.update_weights(ray.put(perturbed))
    changed = pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY).generations
    assert [g.responses for g in changed] != [g.responses for g in before]
    pool.update_weights(ray.put(original))
    assert pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY).generations == before
    # The fallback path: reload from the saved folder.
    pool.update_weights(ray.put(perturbed))
    pool.load_weights_from_path(tiny_model_path)
    assert pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY).generations == before


def test_pushed_weights_serve_what_an_engine_started_from_them_serves(ray_session, engines, tiny_model_path, tmp_path):
    """The served policy is the pushed one, output head included: the tiny model ties its LM head to
    the embeddings, which vLLM's reload used to leave computing from the start weights (a resumed run,
    whose engines start from the committed policy, then diverged from the uninterrupted one)."""
    ray = ray_session
    original = load_file(f"{tiny_model_path}/model.safetensors")
    gen = torch.Generator().manual_seed(1)
    moved = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    folder = tmp_path / "moved"
    shutil.copytree(tiny_model_path, folder)
    save_file(moved, str(folder / "model.safetensors"))
    prompts = [ray.get(engines[0].apply_chat_template.remote(t)) for t in TEXTS]
    model = ModelSection(path=str(folder), dtype="float32", max_model_len=256)
    fresh = ray.remote(num_cpus=0.5)(GenerationEngine).remote(str(folder), model, str(tmp_path / "work"))
    try:
        want = ray.get(fresh.next_token_logprobs.remote(prompts, 5), timeout=300)
    finally:
        ray.kill(fresh)
    pool = EnginePool(engines[:1], timeout_s=120)
    for push in (lambda: pool.update_weights(ray.put(moved)), lambda: pool.load_weights_from_path(str(folder))):
        push()
        assert ray.get(engines[0].next_token_logprobs.remote(prompts, 5), timeout=120) == want
    pool.update_weights(ray.put(original))


def test_a_sleeping_engine_refuses_requests_and_wakes_serving_the_folder_it_is_given(
    ray_session, engines, tiny_model_path, tmp_path
):
    """model.sleep on CPU: sleep() shuts the engine down and every request is refused until
    wake_up(folder, label) builds it again, serving that folder under that label: the responses of the
    same weights loaded into an awake engine. Woken with no folder it serves its model folder again."""
    ray = ray_session
    original = load_file(f"{tiny_model_path}/model.safetensors")
    gen = torch.Generator().manual_seed(2)
    folder = tmp_path / "next"
    shutil.copytree(tiny_model_path, folder)
    save_file(
        {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in original.items()},
        str(folder / "model.safetensors"),
    )
    pool = EnginePool(engines[:1], timeout_s=120)
    pool.load_weights_from_path(str(folder), "next")
    want = pool.generate(["x", "y"], TEXTS[:2], [0, 1], SPEC).generations
    pool.load_weights_from_path(tiny_model_path, "start")
    before = pool.generate(["x", "y"], TEXTS[:2], [0, 1], SPEC).generations
    assert want != before

    assert pool.sleep() >= 0 and ray.get(engines[0].ready.remote())["asleep"]
    assert "max_num_seqs" not in ray.get(engines[0].ready.remote())  # no vLLM engine left
    with pytest.raises(EngineAsleepError, match="asleep"):
        pool.generate(["x"], TEXTS[:1], [0], SPEC)
    assert pool.sleep() == 0.0  # asleep already: nothing to do

    pool.wake_up(str(folder), "policy-1")
    info = ray.get(engines[0].ready.remote())
    assert (info["asleep"], info["weights_version"], info["model_path"]) == (False, "policy-1", str(folder))
    assert pool.generate(["x", "y"], TEXTS[:2], [0, 1], SPEC).generations == want

    pool.sleep()
    pool.wake_up()  # no folder: the weights it was built from, under their label
    assert ray.get(engines[0].ready.remote())["weights_version"] == "policy-1"
    assert pool.generate(["x", "y"], TEXTS[:2], [0, 1], SPEC).generations == want
    pool.wake_up(tiny_model_path, "start")  # awake: just loads the folder
    assert pool.generate(["x", "y"], TEXTS[:2], [0, 1], SPEC).generations == before


def _wait_for_restart(ray, engine, old_pid: int, timeout_s: float = 300) -> dict:
    from ray.exceptions import ActorUnavailableError, RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            info = ray.get(engine.ready.remote(), timeout=60)
            if info["pid"] != old_pid:
                return info
        except (ActorUnavailableError, RayActorError):
            pass
        time.sleep(1)
    raise AssertionError(f"the engine did not restart within {timeout_s}s")


def test_a_restarted_replica_is_given_the_current_weights(ray_session, tiny_model_path, tmp_path):
    """Ray restarts a crashed engine (max_restarts) with its start weights: the pool notices (the
    engine refuses a call that expects other weights), pushes the current ones and asks again."""
    ray = ray_session
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    engine = ray.remote(num_cpus=0.5, max_restarts=1)(GenerationEngine).remote(
        tiny_model_path, model, str(tmp_path), 0, "policy-0"
    )
    pool = EnginePool([engine], timeout_s=300, retries=2, version="policy-0")
    try:
        start = pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY)
        gen = torch.Generator().manual_seed(1)
        trained = {
            k: v + 0.5 * torch.randn(v.shape, generator=gen)
            for k, v in load_file(f"{tiny_model_path}/model.safetensors").items()
        }
        pool.update_weights(ray.put(trained), "policy-1")
        after = pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY)
        assert [g.responses for g in after.generations] != [
            g.responses for g in start.generations
        ] and after.retries == ()
        pid = ray.get(engine.ready.remote(), timeout=120)["pid"]
        ray.kill(engine, no_restart=False)  # a crash: Ray brings it back with policy-0's weights
        restarted = _wait_for_restart(ray, engine, pid)
        assert restarted["weights_version"] == "policy-0"
        again = pool.generate(["x", "y"], TEXTS[:2], [0, 0], GREEDY)
        assert again.generations == after.generations  # served policy-1, not what it restarted with
        assert again.retries and "policy-1" in again.retries[-1]
        with pytest.raises(StaleWeightsError, match="serves weights 'policy-1'.*expects 'policy-7'"):
            ray.get(engine.generate.remote(["x"], TEXTS[:1], [0], GREEDY, True, expect_weights="policy-7"), timeout=120)
    finally:
        ray.kill(engine)


def test_next_token_logprobs_are_a_distribution(ray_session, engines):
    ray = ray_session
    [top] = ray.get(engines[0].next_token_logprobs.remote(["The answer is"], 5), timeout=120)
    assert len(top) == 5
    assert all(lp <= 0 for lp in top.values())
    # the top 5 of a distribution: their probabilities sum to at most 1, and are not all equal
    mass = sum(math.exp(lp) for lp in top.values())
    assert 0 < mass <= 1 + 1e-6 and len({round(lp, 6) for lp in top.values()}) > 1


def test_prompt_longer_than_the_context_is_truncated_not_rejected(ray_session, engines):
    """A prompt longer than max_model_len (256) loses its beginning and is counted; the batch reports
    its longest sequence (prompt + response), which then fills the context exactly."""
    pool = EnginePool(engines[:1], timeout_s=120)
    out = pool.generate(["long", "short"], ["word " * 2000, "hi"], [1, 2], GREEDY)
    assert [len(g.responses) for g in out.generations] == [1, 1]
    assert out.truncated == 1
    assert out.longest == 256 - GREEDY.max_tokens + out.generations[0].num_tokens[0]
    short = pool.generate(["short"], ["hi"], [2], GREEDY)
    assert short.truncated == 0 and 0 < short.longest < 64


def test_a_batch_larger_than_one_step_budget_generates_and_reproduces(ray_session, engines):
    """More prompt tokens than one scheduler step holds (vLLM CPU: 4096). With chunked prefill this
    crashed on CPU ("CPU Generator does not use offset": a cut prompt rewinds its seeded generator)."""
    from eva.buffer import load_seed_prompts

    texts = [p.text for p in load_seed_prompts("builtin:seed")][:200]
    spec = SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=4)
    pool = EnginePool(engines[:1], timeout_s=300)
    batch = pool.generate([str(i) for i in range(len(texts))], texts, list(range(len(texts))), spec)
    assert batch.prompt_tokens > 4096 and len(batch.generations) == 200
    assert all(len(g.responses) == 2 for g in batch.generations)
    alone = pool.generate(["199"], texts[199:], [199], spec)  # the last prompt, scheduled last in the big batch
    assert alone.generations[0] == batch.generations[199]


def test_exit_on_fatal_ends_the_process_for_engine_errors_but_not_for_bad_requests():
    from actors.engine import EXIT_FATAL, exit_on_fatal

    codes: list[int] = []
    with pytest.raises(ValueError, match="too long"), exit_on_fatal("generate", exit=codes.append):
        raise ValueError("prompt too long")  # vLLM refused the request: the engine is fine
    assert codes == []
    with pytest.raises(torch.OutOfMemoryError), exit_on_fatal("generate", exit=codes.append):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError), exit_on_fatal("update_weights", exit=codes.append):
        raise RuntimeError("NCCL error: unhandled system error")
    assert codes == [EXIT_FATAL, EXIT_FATAL]


def test_an_error_inside_generate_restarts_the_replica_and_the_batch_succeeds(ray_session, tiny_model_path, tmp_path):
    """An engine whose generate raises (here: a CUDA OOM raised inside its vLLM call) ends its process;
    Ray restarts it (max_restarts), the pool waits for it, pushes it the current weights and sends
    the batch again: the call succeeds with the same responses, and says it was retried."""
    ray = ray_session

    def break_next_generate(engine_self):  # runs inside the actor: a closure, so Ray ships it by value
        real = engine_self.llm.generate

        def failing(*args, **kwargs):
            engine_self.llm.generate = real
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")

        engine_self.llm.generate = failing
        return True

    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    engine = ray.remote(num_cpus=0.5, max_restarts=1)(GenerationEngine).remote(
        tiny_model_path, model, str(tmp_path), 0, "policy-0"
    )
    pool = EnginePool([engine], timeout_s=300, retries=2, version="policy-0", restart_timeout_s=300)
    try:
        gen = torch.Generator().manual_seed(2)
        trained = {
            k: v + 0.5 * torch.randn(v.shape, generator=gen)
            for k, v in load_file(f"{tiny_model_path}/model.safetensors").items()
        }
        pool.update_weights(ray.put(trained), "policy-1")
        expected = pool.generate(["x", "y"], TEXTS[:2], [5, 6], SPEC)
        pid = ray.get(engine.ready.remote(), timeout=120)["pid"]
        assert ray.get(engine.__ray_call__.remote(break_next_generate), timeout=60)
        t0 = time.monotonic()
        got = pool.generate(["x", "y"], TEXTS[:2], [5, 6], SPEC)
        assert got.generations == expected.generations  # the current policy, not the start weights
        assert len(got.retries) >= 1 and "policy-1" in got.retries[-1]
        info = ray.get(engine.ready.remote(), timeout=120)
        assert info["pid"] != pid and info["weights_version"] == "policy-1"  # a new process, given policy-1
        assert time.monotonic() - t0 < 240
    finally:
        ray.kill(engine)


def test_unseeded_sampling_is_not_reproducible_seeded_is(ray_session, tiny_model_path, tmp_path):
    """model.seeded_sampling false (fast on GPU) gives up reproducibility: the same call twice differs;
    with it (the default) the same call gives the same responses."""
    ray = ray_session
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256, seeded_sampling=False)
    engine = ray.remote(num_cpus=0.5)(GenerationEngine).remote(tiny_model_path, model, str(tmp_path))
    try:
        pool = EnginePool([engine], timeout_s=300)
        first = pool.generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
        second = pool.generate(["a", "b", "c"], TEXTS, [11, 22, 33], SPEC)
        assert first.generations != second.generations
    finally:
        ray.kill(engine)


def test_native_bf16_is_read_from_the_cpu_flags():
    from actors.engine import native_bf16

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
    assert native_bf16(avx2) is False
    assert native_bf16(avx2.replace("avx2", "avx2 avx512f avx512_bf16")) is True
    assert native_bf16(avx2.replace("avx2", "avx2 amx_tile amx_bf16")) is True
    assert native_bf16("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n") is True  # aarch64
    assert native_bf16("processor\t: 0\nFeatures\t: fp asimd\n") is False
