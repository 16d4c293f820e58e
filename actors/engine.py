"""The generation engine: a thin wrapper over `vllm.LLM`, run in-process inside its own Ray actor.

Why in-process: on CPU the in-process engine starts in ~4 s and keeps vLLM's thread binding inside
this actor's process (DESIGN.md). Training never happens here: vLLM replaces torch.set_num_threads
in its process. Every request carries its own seed (model.seeded_sampling, the default), so outputs do
not depend on batch composition, replica split or restarts: exactly on CPU; on GPU batch composition
still changes the numbers unless model.batch_invariant is on, and seeded rows cost throughput there.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.busy import BusyLog, Span
from actors.models import cache_dir
from eva.config import ModelSection
from eva.types import Generation, SampledTokens


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    """How to sample: n responses per prompt, each at most `max_tokens` new tokens; `token_ids`: return
    the token ids of prompt and responses too (the online solver trains on them)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    token_ids: bool = False


@dataclass(frozen=True, slots=True)
class GenerationBatch:
    """The engine's answer to one generate call; `seconds` is engine wall time."""

    generations: tuple[Generation, ...]
    seconds: float
    prompt_tokens: int
    new_tokens: int
    retries: tuple[str, ...] = ()  # what actors.pool had to resend, one line each (for events.jsonl)
    longest: int = 0  # tokens of the longest prompt + response: what model.max_model_len must hold
    truncated: int = 0  # prompts left-truncated to fit model.max_model_len (`_fit`)


class EngineAsleepError(RuntimeError):
    """A request reached an engine that sleeps while the trainer trains (model.sleep)."""


class StaleWeightsError(RuntimeError):
    """The engine does not hold the weights the caller expects: Ray restarted it (`max_restarts`)
    with the weights it was started with, or a weight push never reached it."""


# Exit status of an engine that ended itself after a fatal error (`exit_on_fatal`), for its Ray log.
EXIT_FATAL = 70


@contextmanager
def exit_on_fatal(call: str, exit: Callable[[int], Any] = os._exit):
    """Run an engine call; if it fails in a way that leaves the engine unusable, end the process.

    A CUDA OOM inside vLLM, a dead tensor-parallel rank or a half-finished weight reload leave the
    process alive with an engine that fails (or answers wrongly) from then on; Ray sees an
    application error and neither retries nor restarts. Ending the process turns it into an actor
    crash: Ray restarts the actor (`ray.<engine>.max_restarts`) with its start weights and label, and
    actors.pool sends the batch again (the current weights first). A bad request (ValueError,
    TypeError: vLLM refuses it before running it) leaves the engine fine and is raised as is.
    `exit` is os._exit: an intended exit (ray.actor.exit_actor) is never restarted.
    """
    try:
        yield
    except (ValueError, TypeError):
        raise
    except Exception as e:
        print(
            f"eva engine (pid {os.getpid()}): {call} failed with {type(e).__name__}: {e}; the engine is unusable, "
            f"exiting ({EXIT_FATAL}) so that Ray restarts it",
            file=sys.stderr,
            flush=True,
        )
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        exit(EXIT_FATAL)
        raise  # only when `exit` returns (tests)


def configure_engine_env(workdir: str | Path, batch_invariant: bool = False) -> None:
    """Environment vLLM reads at import/start. Must run before `import vllm` in this process.

    vLLM's cache (VLLM_CACHE_ROOT) is eva's user cache, shared by every run: what it holds depends on
    vLLM's version and the model's code only, never on a run. Its model-class inspection above all:
    without a cached one, vLLM runs it in a subprocess that imports vLLM and torch again, 10-20 s of
    the first engine start in each process on a 2-core CPU. Inductor's scratch stays in `workdir`."""
    workdir = Path(workdir)
    if batch_invariant:
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine (see module docstring)
    # vLLM's legacy whole-GiB setting overrides kv_cache_memory_bytes on CPU: the config sizes the cache
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "inductor"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")


RAY_EXECUTOR: dict[str, Any] = {"distributed_executor_backend": "ray"}
CPU_MAX_NUM_SEQS = 32  # model.max_num_seqs: auto on CPU
CPU_BLOCK_TOKENS = 128  # vLLM's KV-cache block on CPU (vllm/platforms/cpu.py)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def max_num_seqs(model: ModelSection, cpu: bool) -> int | None:
    """model.max_num_seqs, with auto resolved (None: vLLM's own default, on GPU)."""
    if model.max_num_seqs != "auto":
        return int(model.max_num_seqs)
    return CPU_MAX_NUM_SEQS if cpu else None


def kv_cache_bytes(model_path: str, model: ModelSection, cpu: bool) -> int | None:
    """The engine's KV cache in bytes: model.kv_cache_gib, or for auto on CPU room for max_num_seqs
    sequences of max_model_len tokens (whole blocks, plus the block vLLM keeps empty), so that no
    running sequence is ever preempted: a preempted seeded request would resample differently.
    None: vLLM sizes it (auto on GPU: what gpu_memory_utilization leaves)."""
    if model.kv_cache_gib != "auto":
        return int(float(model.kv_cache_gib) * 2**30)
    seqs = max_num_seqs(model, cpu)
    if seqs is None:
        return None
    blocks = seqs * math.ceil(model.max_model_len / CPU_BLOCK_TOKENS) + 1
    return blocks * CPU_BLOCK_TOKENS * kv_bytes_per_token(model_path, model.dtype, model.trust_remote_code)


def one_step_kv_cache_bytes(model_path: str, model: ModelSection, seqs: int) -> int:
    """The KV cache of a CPU engine whose every request ends in the step that prefills it (the judge:
    one token each): one scheduler step's token budget (`_cpu_scheduler`) in whole blocks, a partial
    block per sequence, and the block vLLM keeps empty. Nothing outlives a step, so room for `seqs`
    full-length sequences (kv_cache_bytes) would never be used."""
    tokens = _cpu_scheduler(model.max_model_len, seqs)["max_num_batched_tokens"]
    blocks = math.ceil(tokens / CPU_BLOCK_TOKENS) + seqs + 1
    return blocks * CPU_BLOCK_TOKENS * kv_bytes_per_token(model_path, model.dtype, model.trust_remote_code)


def kv_bytes_per_token(model_path: str, dtype: str, trust_remote_code: bool = False) -> int:
    """Keys and values of one token over all layers, from the model's config (cache dtype = `dtype`)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * DTYPE_BYTES[dtype]


def native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX; ARM: the bf16 feature), read
    from /proc/cpuinfo; None where that file is absent. Without it torch's bf16 matrix product takes a
    slow path, and a bf16 CPU engine computes its layers in float32 instead (actors.cpu_gemm)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = {f for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features")) for f in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def eager_mode(model: ModelSection, on_cpu: bool) -> bool:
    """model.enforce_eager, or by device when unset: eager on CPU, CUDA graphs on GPU."""
    return on_cpu if model.enforce_eager is None else model.enforce_eager


# vLLM on CPU cannot rewind a seeded request's torch.Generator ("CPU Generator does not use offset"),
# which chunked prefill does whenever a step's token budget cuts a prompt: a generate call whose
# prompts exceed the budget (a few hundred prompts) then crashes. Without chunked prefill every
# prompt is prefilled whole in one step; the budget (vLLM's CPU default, 4096) must hold the longest.
def _cpu_scheduler(max_model_len: int, seqs: int) -> dict[str, Any]:
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096, seqs)}


class GenerationEngine:
    """One vLLM engine. Ray wraps it as an actor (`ray.remote(GenerationEngine)`); usable directly too.

    `weights_version` labels the weights it serves: the start weights get the label given here (a
    restarted actor gets it again, with the start weights), every push sets the pushed label, and a
    generate call that names another label fails with StaleWeightsError instead of answering with
    the wrong policy (actors.pool then pushes the current weights and asks again).
    """

    def __init__(
        self,
        model_path: str,
        model: ModelSection,
        workdir: str,
        seed: int = 0,
        weights_version: str = "start",
        sleep_mode: bool = False,
        weight_transfer: str | None = None,
    ) -> None:
        configure_engine_env(workdir, model.batch_invariant)
        from vllm.platforms import current_platform

        self.cpu = current_platform.is_cpu()
        self.model, self.seed = model, seed
        # vLLM's sleep mode (GPU): allocations go through its pool so that sleep() can free them; on CPU
        # vLLM has none (its CPU worker ignores sleep), so sleep() shuts the engine down instead.
        self.sleep_mode = sleep_mode and not self.cpu
        self.asleep = False
        self._kept_weights = True
        self._weights_only = False  # GPU sleep: the weights woke alone for a push (wake_weights)
        self.max_model_len = model.max_model_len
        self.seeded = model.seeded_sampling
        # ray.weight_sync nccl/ipc/gloo: the vLLM weight-transfer backend this engine is built with, and the
        # trainer's group it has joined (actors.weight_transfer; None until the first push, and again after
        # a CPU sleep: the rebuilt engine has left it)
        self.weight_transfer = weight_transfer
        self.transfer_group_id: str | None = None
        self.busy = BusyLog()
        t0 = time.perf_counter()
        self._build(model_path)
        self.start_seconds = time.perf_counter() - t0
        self.weights_version = weights_version
        self._path_version = weights_version  # the label of the weights in model_path (a CPU wake reloads them)

    def _build(self, model_path: str) -> None:
        from vllm import LLM

        model, cpu = self.model, self.cpu
        seqs, kv_bytes = max_num_seqs(model, cpu), kv_cache_bytes(model_path, model, cpu)
        sizes: dict[str, Any] = {"max_num_seqs": seqs, "kv_cache_memory_bytes": kv_bytes}
        if self.sleep_mode:
            sizes["enable_sleep_mode"] = True
        if cpu:
            from actors import cpu_gemm, nucleus

            nucleus.install()  # top-p without sorting the vocabulary at every step (vLLM's CPU sampler does)
            if model.dtype == "bfloat16" and native_bf16() is False:
                cpu_gemm.install()  # bf16 layers in float32: 4.5x the tokens/s on a CPU without bf16 dot products
        if self.weight_transfer is not None:
            from actors.weight_transfer import register

            register()  # eva's gloo backend, in the factory this process's worker builds from
            sizes["weight_transfer_config"] = {"backend": self.weight_transfer}
        self.model_path = model_path
        self.llm: Any = LLM(
            model=model_path,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            enforce_eager=eager_mode(model, cpu),
            trust_remote_code=model.trust_remote_code,
            gpu_memory_utilization=model.gpu_memory_utilization,
            tensor_parallel_size=model.tensor_parallel_size,
            # TP > 1: vLLM's own Ray executor, one worker per rank in this actor's placement group
            # (actors.cluster.engine_bundles); the in-process engine core stays in this actor.
            **(RAY_EXECUTOR if model.tensor_parallel_size > 1 else {}),
            seed=self.seed,
            **{k: v for k, v in sizes.items() if v is not None},
            **(_cpu_scheduler(model.max_model_len, seqs or 0) if cpu else {}),
        )
        self.tokenizer: Any = self.llm.get_tokenizer()
        from actors import heap

        heap.release()  # what loading left free (a judge's bf16 -> fp32 cast: ~0.2 GB of the reward actor's heap)

    def ready(self) -> dict[str, Any]:
        """Cheap call to wait on after starting the actor; also what the engine holds."""
        info: dict[str, Any] = {
            "model_path": self.model_path,
            "start_seconds": self.start_seconds,
            "pid": os.getpid(),
            "weights_version": self.weights_version,
            "asleep": self.asleep,
        }
        if self.llm is not None:
            vllm = self.llm.llm_engine.vllm_config
            info["max_num_seqs"] = vllm.scheduler_config.max_num_seqs
            info["kv_cache_tokens"] = (vllm.cache_config.num_gpu_blocks or 0) * vllm.cache_config.block_size
        return info

    # --- sleeping while the trainer trains (model.sleep) ------------------------------------

    def sleep(self, keep_weights: bool = False) -> float:
        """Give the engine's memory to the trainer until `wake_up`; returns seconds.

        GPU (sleep mode): vLLM's LLM.sleep, level 2 (weights and KV cache freed: the policy's engines,
        whose weights the round replaces anyway) or level 1 with `keep_weights` (weights moved to host
        memory: an engine of a fixed model, the judge's or the creator's). CPU: vLLM has no sleep mode
        there, so the engine is shut down and its heap returned to the OS (SmolLM2-135M: 1.74 -> 0.56
        GB PSS); `wake_up` builds it again from its model folder (3 s). Asleep, it refuses requests."""
        if self.asleep:
            return 0.0
        t0 = time.perf_counter()
        if self.sleep_mode:
            with exit_on_fatal("sleep"):
                self.llm.sleep(level=1 if keep_weights else 2)
            self._kept_weights = keep_weights
        else:
            from actors import heap

            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self.transfer_group_id = None  # the worker that joined the trainer's group is gone
            self.tokenizer = None
            # vLLM froze the heap after the build and its shutdown unfroze it: the collection frees the
            # engine. What is left is ~700k long-lived objects (modules: vLLM's and transformers' imports);
            # frozen, they are skipped by the collections vLLM runs while building the engine again, which
            # took 1.4 s of a 3.2 s cpu-default rebuild scanning them (wake in the loop: 7.8-9.0 -> 2.1-2.6 s).
            gc.collect()
            gc.freeze()
            heap.release()
        self.asleep = True
        return time.perf_counter() - t0

    def wake_up(self, path: str | None = None, version: str | None = None) -> float:
        """Come back from `sleep` serving the weights of `path` (a saved policy folder) labelled
        `version`, or with no path the weights it slept with (those of its model folder on CPU, where it
        is built again; on GPU, level 1 keeps them, level 2 leaves weights that must be pushed:
        labelled "discarded" until then). Awake already (e.g. Ray restarted it meanwhile): just loads
        `path`. Returns seconds."""
        t0 = time.perf_counter()
        if not self.asleep:
            if path is not None:
                self.load_weights_from_path(path, version)
            return time.perf_counter() - t0
        if self.sleep_mode:
            with exit_on_fatal("wake_up"):
                if not self._weights_only:  # else wake_weights did, and a push filled them
                    self.llm.wake_up(tags=["weights"])
                if path is not None:  # fill the weights before the KV cache takes its memory back
                    self._reload_from(path)
                self.llm.wake_up(tags=["kv_cache"])
            pushed, self._weights_only = self._weights_only, False
            if path is not None:
                self.model_path = path
                self._path_version = self.weights_version = version or path
            elif not self._kept_weights and not pushed:
                self.weights_version = "discarded"  # level 2 freed them: a push must come before any request
        else:
            self._build(path or self.model_path)
            if path is not None:
                self._path_version = version or path
            self.weights_version = self._path_version
        self.asleep = False
        return time.perf_counter() - t0

    def wake_weights(self) -> float:
        """GPU sleep mode, level 2: give the weights their memory back, and only them, so that a push over
        a collective (ray.weight_sync nccl/ipc) fills them in GPU memory before the KV cache takes its
        share back (`wake_up()` then wakes the rest). Seconds."""
        if not (self.asleep and self.sleep_mode):
            raise RuntimeError(
                f"engine (pid {os.getpid()}): wake_weights is for a GPU engine asleep in vLLM's sleep mode"
            )
        t0 = time.perf_counter()
        with exit_on_fatal("wake_weights"):
            self.llm.wake_up(tags=["weights"])
        self._weights_only = True
        return time.perf_counter() - t0

    def _awake(self, call: str) -> None:
        if call.startswith("transfer_") and self._weights_only:
            return  # the weights are awake for a push (wake_weights)
        if self.asleep:
            raise EngineAsleepError(
                f"engine (pid {os.getpid()}): {call} while asleep (model.sleep: the trainer holds the memory); "
                "wake_up() first"
            )

    def apply_chat_template(self, text: str, system: str | None = None) -> str:
        messages: list[Any] = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def generate(
        self,
        keys: list[str],
        texts: list[str],
        seeds: list[int],
        spec: SamplingSpec,
        chat: bool = True,
        expect_weights: str | None = None,
    ) -> GenerationBatch:
        """Sample `spec.n` responses for each text. `keys[i]` labels the answer for `texts[i]`.

        With `chat` the text is the user turn and the model's chat template is applied; otherwise it is
        sent as is. `seeds[i]` makes request i reproducible, whatever else is in the batch.
        `expect_weights`: refuse (StaleWeightsError) unless the engine serves weights of that label.
        """
        from vllm import SamplingParams

        self._awake("generate")
        if expect_weights is not None and expect_weights != self.weights_version:
            raise StaleWeightsError(
                f"engine (pid {os.getpid()}) serves weights {self.weights_version!r}, the caller expects "
                f"{expect_weights!r}"
            )
        if not (len(keys) == len(texts) == len(seeds)):
            raise ValueError(f"keys/texts/seeds differ in length: {len(keys)}/{len(texts)}/{len(seeds)}")
        if not texts:
            return GenerationBatch((), 0.0, 0, 0)
        fitted = [self._fit(self.apply_chat_template(t) if chat else t, spec.max_tokens) for t in texts]
        prompts = [p for p, _ in fitted]
        params = [
            SamplingParams(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                max_tokens=spec.max_tokens,
                seed=s if self.seeded else None,
            )
            for s in seeds
        ]
        t0 = time.perf_counter()
        with self.busy.span("generate"), exit_on_fatal("generate"):
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        generations = tuple(
            Generation(
                prompt_id=key,
                responses=tuple(c.text for c in out.outputs),
                num_tokens=tuple(len(c.token_ids) for c in out.outputs),
                finish_reasons=tuple(str(c.finish_reason) for c in out.outputs),
                tokens=_sampled_tokens(out) if spec.token_ids else None,
            )
            for key, out in zip(keys, outputs, strict=True)
        )
        return GenerationBatch(
            generations=generations,
            seconds=seconds,
            prompt_tokens=sum(len(out.prompt_token_ids or ()) for out in outputs),
            new_tokens=sum(sum(g.num_tokens) for g in generations),
            longest=max(
                len(out.prompt_token_ids or ()) + max(g.num_tokens, default=0)
                for out, g in zip(outputs, generations, strict=True)
            ),
            truncated=sum(cut for _, cut in fitted),
        )

    def drain_busy(self) -> list[Span]:
        """The generate spans since the last call (actors.busy)."""
        return self.busy.drain()

    def next_token_logprobs(self, prompts: list[str], top_k: int = 20) -> list[dict[str, float]]:
        """Log-probabilities of the top-k next tokens after each raw prompt (decoded token -> logprob).

        The judge reads its score from these (an expectation over score tokens), not from a string.
        """
        from vllm import SamplingParams

        self._awake("next_token_logprobs")
        if not prompts:
            return []
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=top_k)
        with exit_on_fatal("next_token_logprobs"):
            outputs = self.llm.generate([self._fit(p, 1)[0] for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            top = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            result.append({lp.decoded_token: lp.logprob for lp in top.values() if lp.decoded_token is not None})
        return result

    def sequence_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """log p(token_i | tokens before it) for i >= 1 of each token sequence, as the engine computes
        it (vLLM prompt_logprobs): what the trainer's log-probs must match (actors.trainer)."""
        from vllm import SamplingParams, TokensPrompt

        self._awake("sequence_logprobs")
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]
        with exit_on_fatal("sequence_logprobs"):
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out, ids in zip(outputs, token_ids, strict=True):
            steps: Any = out.prompt_logprobs  # position 0 has none: nothing comes before it
            result.append([steps[i][token].logprob for i, token in enumerate(ids) if i > 0])
        return result

    def update_weights(
        self, weights: Mapping[str, object] | Iterable[tuple[str, object]], version: str | None = None
    ) -> float:
        """Push new weights (HF names -> CPU tensors) into the running engine, labelled `version`
        (None: keep the label); returns seconds.

        `reload_weights` through collective_rpc is the path that works on CPU (oneDNN repacks weights,
        so a direct `model.load_weights` fails); the prefix cache is dropped because cached KV blocks
        belong to the old weights.
        """
        self._awake("update_weights")
        t0 = time.perf_counter()
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        with exit_on_fatal("update_weights"):  # a reload that failed midway leaves a mix of two policies
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
            self._after_reload()
        if version is not None:
            self.weights_version = version
        return time.perf_counter() - t0

    # --- collective weight transfer (ray.weight_sync nccl/ipc/gloo; actors.weight_transfer) -------
    # vLLM's four control calls, per group: the trainer's sender forms a group, pushes through it, and
    # forms a new one when an engine answers `transfer_group` with another (Ray restarted it).

    def transfer_group(self) -> str | None:
        """The trainer group this engine has joined (None: none, e.g. restarted or rebuilt since)."""
        return self.transfer_group_id

    def transfer_init(self, group: str, init_info: dict[str, Any]) -> None:
        """Join the trainer's group `group` (leaving the one it was in): blocks until the trainer joins."""
        self._awake("transfer_init")
        self.transfer_leave()
        self.llm.collective_rpc("init_weight_transfer_engine", args=(init_info,))
        self.transfer_group_id = group

    def transfer_leave(self) -> None:
        if self.transfer_group_id is not None and self.llm is not None:
            self.llm.collective_rpc("shutdown_weight_transfer_engine")
        self.transfer_group_id = None

    def _in_group(self, group: str, call: str) -> None:
        self._awake(call)
        if group != self.transfer_group_id:
            raise RuntimeError(
                f"engine (pid {os.getpid()}): {call} for weight-transfer group {group}, "
                f"but it is in {self.transfer_group_id}"
            )

    def transfer_start(self, group: str) -> None:
        self._in_group(group, "transfer_start")
        self.llm.collective_rpc("start_weight_update")

    def transfer_receive(self, group: str, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._in_group(group, "transfer_receive")
        with exit_on_fatal("transfer_receive"):  # a push that failed midway leaves a mix of two policies
            self.llm.collective_rpc("update_weights", args=(update_info,))

    def transfer_finish(self, group: str, version: str | None) -> None:
        """The push is in: vLLM's reload post-processing, then eva's tail (`_after_reload`) and the label."""
        self._in_group(group, "transfer_finish")
        with exit_on_fatal("transfer_finish"):
            self.llm.collective_rpc("finish_weight_update")
            self._after_reload()
        if version is not None:
            self.weights_version = version

    def load_weights_from_path(self, path: str, version: str | None = None) -> float:
        """Fallback weight sync: reload from a saved safetensors folder (e.g. the committed policy)."""
        if self.asleep:
            return self.wake_up(path, version)
        t0 = time.perf_counter()
        with exit_on_fatal("load_weights_from_path"):
            self._reload_from(path)
        self.model_path = path
        if version is not None:
            self.weights_version = version
        self._path_version = self.weights_version
        return time.perf_counter() - t0

    def _reload_from(self, path: str) -> None:
        """The weights of a saved safetensors folder, reloaded in place (`_after_reload` included)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
        self._after_reload()

    def _after_reload(self) -> None:
        """What vLLM's reload leaves undone: the output head of a tied-embedding model, and the prefix cache.

        vLLM 0.32's layerwise reload gives a tied LM head (SmolLM2, Llama-3.2, Gemma) no weights of
        its own, so it puts the head's start-time kernel tensors back instead of re-processing it: on
        CPU the head keeps computing logits from a packed copy of the *start* weights. An engine
        that received pushed weights then served a different policy than one started from the same
        weights (logprobs 2e-3 apart in fp32; the cause of resumed runs diverging from iteration 2).
        Re-running the head's weight post-processing on every rank makes it use the current weights.
        The prefix cache is dropped because its KV blocks belong to the old weights.
        """
        self.llm.apply_model(refresh_output_heads)
        self.llm.reset_prefix_cache()

    def _fit(self, prompt: str, max_new: int) -> tuple[str, bool]:
        """Left-truncate a prompt so prompt + max_new tokens fit the engine (vLLM rejects longer ones);
        with whether it was cut."""
        budget = self.max_model_len - max_new
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        if len(ids) <= budget:
            return prompt, False
        return self.tokenizer.decode(ids[len(ids) - budget :]), True


def _sampled_tokens(out) -> SampledTokens:
    """The ids of one request's prompt (as the engine ran it) and of each of its sampled responses."""
    return SampledTokens(
        prompt=tuple(out.prompt_token_ids or ()), responses=tuple(tuple(c.token_ids) for c in out.outputs)
    )


def refresh_output_heads(model) -> int:
    """Re-run the weight post-processing of every LM head (in a vLLM worker, via `apply_model`), so
    a head tied to the input embeddings computes from the weights just reloaded; returns how many.
    Idempotent: unquantized heads keep their weight (`remove_weight=False`) and only re-pack it."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    heads = [
        m for m in model.modules() if isinstance(m, ParallelLMHead) and getattr(m, "quant_method", None) is not None
    ]
    for head in heads:
        head.quant_method.process_weights_after_loading(head)
    return len(heads)
