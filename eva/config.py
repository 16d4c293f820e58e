"""Typed run configuration: pydantic v2 models, a YAML file, built-in presets, `a.b=c` overrides.

Layering, later wins: the preset (``cpu-default`` unless another is named, or none when a config
file is given without a preset) -> the YAML file -> ``--set`` overrides. Every error names where the
bad value came from (file or override), the field path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eva.evolve import OPERATORS, check_operators
from eva.judge import JUDGE_TEMPLATES, judge_template
from eva.losses import LOSSES, loss_spec
from eva.metrics import BATCH_ONLY, check_metric, metric_names
from eva.sampling import check_sample_method
from eva.scorers import SCORER_KINDS, component_kinds, reward_kinds, scorer_kind

DType = Literal["bfloat16", "float16", "float32"]

DEFAULT_PRESET = "cpu-default"

# Experiment trackers `run.report_to` may name (pipelines.tracking writes to them).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")

# Fields that may differ between a run directory's config and the one it is resumed/extended with:
# they change how long or how loudly a run goes, not what it computes.
MUTABLE_FIELDS: frozenset[str] = frozenset(
    {
        "run.iterations",
        "run.dir",
        "ray.address",
        "checkpoint.keep_policies",
        "run.max_iterations_without_pairs",
        "run.report_to",
        "ray.timeout_s",
        "ray.restart_timeout_s",
        "ray.train_step_timeout_s",
        "solver.checkpoint_steps",
        "model.sleep",
        "ray.weight_sync",
    }
)
# MUTABLE_FIELDS before ray.timeout_s joined it: the fingerprint the run.yaml of an older run
# directory was written with (eva.checkpoint accepts either). The other additions are new fields,
# absent from older files, so they leave those fingerprints unchanged.
MUTABLE_FIELDS_V1: frozenset[str] = MUTABLE_FIELDS - {"ray.timeout_s"}


class ConfigError(ValueError):
    """A bad configuration value; the message names the source, the field path and the expectation."""


class _Section(BaseModel):
    # No float field of a run has a use for nan or inf (a timeout of inf never fires, a weight of nan
    # poisons every reward): refused everywhere.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


class RunSection(_Section):
    name: str = Field(
        "eva",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Run name; the run directory defaults to runs/<name>.",
    )
    seed: int = Field(
        0, ge=0, description="Master seed: sampling, evolve requests and per-request generation seeds derive from it."
    )
    iterations: int = Field(
        2,
        ge=1,
        description="Number of self-play iterations to run (iteration 0 is the seed buffer and initial policy).",
    )
    dir: str | None = Field(
        None, description="Run directory (local path or shared-storage path). Default: runs/<name>."
    )
    max_iterations_without_pairs: int = Field(
        3,
        ge=1,
        description="Stop the run (exit 2, resumable) after this many consecutive iterations built no preference "
        "pair (all "
        "n responses of every prompt scored alike, or margins at most solver.min_margin): it would go on "
        "training nothing. Change what starves it (solver.min_margin, solver.n_responses, solver.temperature, "
        "the reward) or raise this, then continue.",
    )
    report_to: tuple[str, ...] | None = Field(
        None,
        description="Experiment trackers that get every iteration's metrics (TRL's report_to): tensorboard "
        "(<run>/tensorboard/), wandb (Weights & Biases in <run>/wandb/: scalars, creator health, stage times, a "
        "table of sampled evolved prompts; WANDB_MODE=offline works without network, WANDB_PROJECT names the "
        "project, default eva), all, or none. None: tensorboard when the package is installed.",
    )
    baseline: bool = Field(
        False,
        description="The fixed-prompt baseline (plain iterative DPO: no estimate, sample, evolve or mix) for A/B "
        "comparisons at equal budget; `eva run --baseline` sets it. Part of the run's identity: a run never "
        "switches loops. In online mode: every minibatch is drawn uniformly from the seed prompts and the creator "
        "makes no children (online uniform sampling).",
    )
    mode: Literal["offline", "online"] = Field(
        "offline",
        description="offline: Algorithm 1, a whole iteration of rollouts, then a preference-optimization round. "
        "online: a policy-gradient solver that takes one optimizer step per minibatch drawn from a prioritized "
        "buffer, the creator evolving the prompts just seen every online.steps_per_commit steps, one committed "
        "iteration per that many steps (the `online` section). Part of the run's identity.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value  # `report_to: wandb` as TRL accepts it

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        unknown = [n for n in names if n not in (*TRACKERS, "all", "none")]
        if unknown:
            raise ValueError(f"unknown tracker(s) {unknown}; known: {', '.join(TRACKERS)}, all, none")
        if len(names) > 1 and {"all", "none"} & set(names):
            raise ValueError(f"{list(names)}: all and none stand alone")
        return names

    def trackers(self, installed: Callable[[str], bool]) -> list[str]:
        """The trackers this run reports to; `installed(name)` says whether a tracker's package is
        installed (the default reports to tensorboard only when it is; `all`: every installed one)."""
        if self.report_to is None:
            return ["tensorboard"] if installed("tensorboard") else []
        if self.report_to == ("all",):
            return [n for n in TRACKERS if installed(n)]
        return [n for n in self.report_to if n != "none"]

    @model_validator(mode="after")
    def _local_path(self) -> RunSection:
        if self.dir is not None and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", self.dir):  # s3://, gs://, hdfs:/ ...
            raise ValueError(
                f"dir {self.dir!r}: object-store URIs are not supported (actors and vLLM load policies by file path); "
                "mount the bucket (s3fs, gcsfuse, a CSI driver) on every node and give its path"
            )
        return self

    @property
    def run_dir(self) -> str:
        return self.dir if self.dir is not None else f"runs/{self.name}"


class ModelSection(_Section):
    path: str = Field(
        "builtin:smollm2-135m-instruct",
        description="Policy: a local HF model folder, or builtin:smollm2-135m-instruct / builtin:tiny (built offline).",
    )
    dtype: DType = Field("bfloat16", description="Weights dtype for generation and for saved policies.")
    max_model_len: int = Field(2048, ge=64, description="Max tokens (prompt + response) the engines handle.")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model folder. Off: it executes arbitrary code."
    )
    enforce_eager: bool | None = Field(
        None,
        description="vLLM eager mode (no torch.compile, no CUDA graphs). None: eager on CPU (starts in seconds; "
        "compiled is faster but takes 15-50 s to start there), compiled with CUDA graphs on GPU (rollouts are "
        "most of a run's cost).",
    )
    seeded_sampling: bool = Field(
        True,
        description="Give every generation request its own seed (derived from run.seed, the stage, the iteration "
        "and the prompt), so responses do not depend on batch composition, the number of replicas or restarts, "
        "and a resumed run reproduces an uninterrupted one. Exact on CPU; on GPU it also needs "
        "model.batch_invariant. Costs GPU throughput: seeded requests skip FlashInfer's sampler and are sampled "
        "row by row each step. False: one engine-wide random stream, fastest, not reproducible.",
    )
    batch_invariant: bool = Field(
        False,
        description="vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1): on GPU, a request's logits do not "
        "depend on what else is in its batch, which exact reproducibility with seeded_sampling needs there. "
        "Slower, and not every model or GPU supports it. No effect on CPU, whose results are batch-invariant.",
    )
    kv_cache_gib: float | Literal["auto"] = Field(
        "auto",
        description="KV-cache size of each engine in GiB (fractions allowed), or auto: on CPU, room for "
        "max_num_seqs sequences of max_model_len tokens (from the model's layers, KV heads and dtype), so "
        "a running sequence is never preempted; on GPU, what gpu_memory_utilization leaves.",
    )
    max_num_seqs: int | Literal["auto"] = Field(
        "auto",
        description="Most sequences one engine runs at once (vLLM max_num_seqs; the rest wait their turn): "
        "auto is 32 on CPU and vLLM's default on GPU. On CPU the KV cache is sized for this many full-length "
        "sequences: 256 generated 25% more tokens/s on a 64-sequence batch but held 7.3 GB instead of 2.1 "
        "(benchmarks/RESULTS.md); eva's CPU presets send at most 32 at once.",
    )
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of GPU memory one vLLM engine may take (GPU only)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism per engine (GPU clusters).")
    sleep: bool | Literal["auto"] = Field(
        "auto",
        description="Engines and trainer take turns with the memory: every engine (the policy's, the creator "
        "model's, the judge's) frees its weights and KV cache for the train stage, and the policy's come back "
        "serving the round's new policy, read from the iteration's policy/ folder; the trainer frees its copy of "
        "the policy between rounds and reloads it (weights and fp32 masters, as a resume does). GPU: vLLM's sleep "
        "mode (enable_sleep_mode; LLM.sleep level 2 for the policy, 1 for fixed models, then wake_up). CPU, "
        "where vLLM has no sleep mode: the engine is shut down and built again (about 3 s for SmolLM2-135M; "
        "cpu-default's peak memory: benchmarks/RESULTS.md). auto: on when the engines run on CPU, or share "
        "GPUs with the trainer (ray.colocate, or fractional ray.engine.num_gpus and ray.trainer.num_gpus).",
    )

    @field_validator("kv_cache_gib", "max_num_seqs")
    @classmethod
    def _positive(cls, value: float | str, info: Any) -> float | str:
        if value != "auto" and not value > 0:  # type: ignore[operator]
            raise ValueError(f"{info.field_name} must be auto or > 0, got {value}")
        return value


class PromptsSection(_Section):
    path: str = Field(
        "builtin:seed",
        description="Seed prompts: JSONL, Parquet, a saved `datasets` folder, a local dataset repository folder, a "
        "Hugging Face Hub dataset name (org/name, e.g. HuggingFaceH4/ultrafeedback_binarized: datasets.load_dataset "
        "with split, subset and streaming below; offline it loads from the datasets cache), or builtin:seed (200+ "
        "shipped instructions).",
    )
    column: str = Field(
        "prompt",
        min_length=1,
        description="Column (JSON key) that holds the prompt: its text, or chat messages (a list of {role, content}, "
        "e.g. `messages`; the last user turn is the prompt).",
    )
    split: str | None = Field(
        None,
        description="Split of a dataset (Hub name or dataset folder), e.g. train_prefs. None: train, or the only one.",
    )
    subset: str | None = Field(
        None, description="Subset (configuration) of a Hub dataset: datasets.load_dataset's `name=`. None: its default."
    )
    streaming: bool = Field(
        False,
        description="Stream a Hub dataset (datasets' streaming=True) and stop reading at `limit`: for large sets, "
        "instead of downloading all of it first.",
    )
    limit: int | None = Field(
        None, ge=1, description="Use only the first N seed prompts (after dropping empties and duplicates)."
    )
    baseline_sample: int | None = Field(
        None,
        ge=1,
        description="Baseline runs only: train each iteration on a fresh uniform sample of this many fixed prompts "
        "(seeded "
        "by run.seed and the iteration), e.g. as many as the eva run it is compared with trains on. None: all "
        "of them every iteration.",
    )


class TaskSection(_Section):
    family: str | None = Field(
        None,
        description="Task family with verifiable rewards (eva.tasks): arithmetic, or module:Class of your own. None: "
        "free-text prompts (prompts.path). Set: the seed prompts are problems of the family, each carrying its "
        "metadata (family, parameters, reference answer, level).",
    )
    levels: tuple[str, ...] = Field(
        ("1d+", "1d*", "2d+"),
        min_length=1,
        description="Difficulty levels of the generated seed problems (arithmetic: <digits>d<op>[w], op in + - * "
        "/, w = "
        "word problem; e.g. 1d+, 2d*, 3d-w).",
    )
    per_level: int = Field(
        16,
        ge=1,
        description="Seed problems generated per level (training side of the split: never a held-out problem).",
    )
    problems: str | None = Field(
        None,
        description="A JSONL file of seed problems ({prompt, meta} per line, eva.tasks.problem_sets) instead of "
        "generating "
        "them.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of problem generation (training seeds and the held-out set; their random streams and problem "
        "spaces are disjoint).",
    )
    eval_levels: tuple[str, ...] | None = Field(
        None, description="Levels of the held-out evaluation set of `eva eval` (None: `levels`)."
    )
    eval_per_level: int = Field(
        60, ge=1, description="Held-out problems per level for `eva eval` (greedy exact-match accuracy per level)."
    )

    @model_validator(mode="after")
    def _family_and_levels(self) -> TaskSection:
        if self.family is None:
            return self
        from eva.tasks import get_family  # the family may be user code: imported when the config is validated

        family = get_family(self.family)
        for level in {*self.levels, *(self.eval_levels or ())}:
            try:
                family.generate(__import__("numpy").random.default_rng(0), level, 1)
            except (ValueError, KeyError) as e:
                raise ValueError(f"level {level!r} is not a level of task family {self.family!r}: {e}") from None
        return self


class CreatorSection(_Section):
    kind: Literal["llm", "program", "select"] = Field(
        "llm",
        description="How children are made: llm (the creator LLM rewrites free-text prompts, EvolInstruct operators), "
        "program (a task family's mutations, harder/easier/sideways, the answer recomputed by code; needs "
        "task.family), or select (no children: the sampled prompts themselves take the evolved share of X'_t; "
        "selection without evolution, an ablation arm).",
    )
    population: int | None = Field(
        None,
        ge=1,
        description="Size of the training set X'_t of every iteration. The creator asks for as many children as it "
        "takes "
        "to fill the evolved share (evolved_ratio of it; more rounds of variants while filters drop children, "
        "up to max_evolve_rounds), and the mix fills the rest with a uniform sample of the buffer. None: the "
        "size of the seed set.",
    )
    max_evolve_rounds: int = Field(
        4,
        ge=1,
        description="Rounds of num_variants children per sampled parent the creator may spend to fill its share of the "
        "population.",
    )
    direction_rule: Literal["uniform", "frontier"] = Field(
        "uniform",
        description="kind=program: uniform (harder, easier, sideways drawn at random per child) or frontier "
        "(toward the "
        "parent's frontier: harder when most of its responses were exactly right, easier when few were, "
        "sideways in between).",
    )
    metric: str = Field(
        "gap",
        description=f"Informativeness of a prompt from its reward vector: {', '.join(metric_names())} (eva.metrics; "
        f"DESIGN.md table).",
    )
    sample_frac: float = Field(
        0.25, gt=0, le=1, description="Fraction of the current prompt set sampled for evolving each iteration."
    )
    sample_method: str = Field(
        "weighted",
        description="weighted (without replacement, prob. proportional to min-max normalized info), greedy (top-k) or "
        "uniform.",
    )
    num_variants: int = Field(4, ge=1, description="Rewrites requested per sampled prompt.")
    operators: tuple[str, ...] = Field(
        tuple(OPERATORS),
        min_length=1,
        description=f"Evolve operators drawn from: {', '.join(OPERATORS)} (eva.evolve; breadth writes a new prompt "
        f"in the "
        f"same domain, the others make the same one harder).",
    )
    model: str = Field(
        "policy",
        description="Creator LLM: policy (shares the solver's engine), initial (frozen initial policy) or a model "
        "path.",
    )
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of the creator.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of the creator.")
    max_new_tokens: int = Field(256, ge=8, description="Max tokens of one rewrite.")
    min_prompt_chars: int = Field(12, ge=1, description="Evolved prompts shorter than this are dropped.")
    max_prompt_chars: int = Field(1500, ge=16, description="Evolved prompts longer than this are dropped.")
    near_duplicate_threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Character 3-gram Jaccard at or above which an evolved prompt counts as a near duplicate.",
    )
    prompt_filter: Literal["embedding", "text", "off"] = Field(
        "embedding",
        description="kind=llm: drop children that are not prompts (eva.child_filter): text (English wording cues: talk "
        "about the prompt or the rewrite, an answer, no request), embedding (text, plus MiniLM cosines to the "
        "operator's instruction and to the parent; loads the packaged MiniLM in the driver), off.",
    )
    max_meta_similarity: float = Field(
        0.35,
        ge=-1,
        le=1,
        description="prompt_filter embedding: a child closer (MiniLM cosine) to its operator's instruction (the "
        "meta-prompt without the parent) than to its parent, and at least this close to the instruction, is "
        "dropped as meta_paraphrase.",
    )
    min_parent_similarity: float = Field(
        0.22,
        ge=-1,
        le=1,
        description="prompt_filter embedding: MiniLM cosine between a child and its parent below which the child is "
        "dropped as off_topic.",
    )
    evolved_ratio: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Share of evolved prompts in the training mix; the rest is a uniform sample of the buffer.",
    )

    @field_validator("prompt_filter", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` (or `no`, `false`) as False

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        check_metric(metric)  # ValueError listing the known metrics
        return metric

    @field_validator("sample_method")
    @classmethod
    def _known_sample_method(cls, method: str) -> str:
        check_sample_method(method)
        return method

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, operators: tuple[str, ...]) -> tuple[str, ...]:
        check_operators(operators)
        return operators

    @model_validator(mode="after")
    def _lengths(self) -> CreatorSection:
        if self.min_prompt_chars >= self.max_prompt_chars:
            raise ValueError(
                f"min_prompt_chars ({self.min_prompt_chars}) must be below max_prompt_chars ({self.max_prompt_chars})"
            )
        return self


class LoraSection(_Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), description="Module names LoRA adapts."
    )


class SolverSection(_Section):
    n_responses: int = Field(6, ge=2, description="Responses sampled per prompt (for estimate and for pairs).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the policy.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling of the policy.")
    max_new_tokens: int = Field(256, ge=1, description="Max new tokens of one response.")
    min_margin: float = Field(
        0.0, ge=0, description="Pairs whose reward margin is not above this are dropped (ties carry no signal)."
    )
    loss_type: str = Field(
        "sigmoid",
        description="Preference loss (eva.losses.LOSSES), with the TRL trainer that runs it and the solver fields it "
        "reads: "
        + ", ".join(f"{s.name} (TRL {s.family.upper()}: {', '.join(s.params)})" for s in LOSSES.values())
        + ".",
    )
    beta: float = Field(
        0.05,
        gt=0,
        description="DPO beta of sigmoid/ipo/hinge/robust (inverse temperature of the implicit reward; IPO's tau). "
        "simpo "
        "and orpo do not read it.",
    )
    simpo_beta: float = Field(
        0.05,
        gt=0,
        description="SimPO's beta (TRL CPOConfig.beta): scale of the length-normalized log-likelihood reward, on "
        "its own "
        "scale, not DPO's: the SimPO paper uses 2-2.5 (10 for gemma-2-9b-it). The default 0.05 is what simpo "
        "got before it had its own field (solver.beta).",
    )
    simpo_gamma: float = Field(
        0.5,
        ge=0,
        description="SimPO's target reward margin gamma (TRL CPOConfig.simpo_gamma; the loss subtracts "
        "gamma/simpo_beta "
        "from the log-likelihood difference). The SimPO paper tunes the ratio gamma/beta rather than gamma.",
    )
    orpo_lambda: float = Field(
        0.05,
        gt=0,
        description="ORPO's lambda (TRL ORPOConfig.beta): weight of the odds-ratio term added to the SFT loss. The "
        "ORPO "
        "authors train with 0.1 (TRL's default too). The default 0.05 is what orpo got before it had its own "
        "field (solver.beta).",
    )
    learning_rate: float = Field(1e-6, gt=0, description="Learning rate.")
    epochs: float = Field(1.0, gt=0, description="Epochs over the iteration's pairs.")
    per_device_batch_size: int = Field(2, ge=1, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated per optimizer update.")
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's input during the forward pass and recompute the rest in the backward "
        "pass: the same gradients (bit-identical rounds) for about a third more training compute, with activation "
        "memory one layer deep instead of the whole model's (the deploy configs' trainers sit near 80 GB without "
        "it). Off by default (TRL's default is on).",
    )
    max_length: int = Field(768, ge=16, description="Max tokens of prompt + response in training.")
    max_prompt_length: int = Field(
        384,
        ge=8,
        description="Max prompt tokens in training: the trainer keeps the last max_prompt_length tokens of the "
        "user text.",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Linear warmup as a share of the round's steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    finetune: Literal["full", "lora"] = Field("full", description="Full fine-tuning or LoRA adapters (peft).")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings (used when finetune=lora).")
    reference: Literal["previous", "initial"] = Field(
        "previous", description="Reference policy of iteration t: pi_{t-1} (previous) or pi_0 (initial)."
    )
    precompute_ref_log_probs: bool = Field(
        True,
        description="Compute the reference log-probs of every pair once, before the round's first step (TRL "
        "precompute_ref_log_probs), and free the reference model before training starts: its copy of the "
        "weights is not held next to the gradients and optimizer states (SmolLM2-135M on CPU, one round: the "
        "trainer's peak PSS 3.6-3.7 -> 2.9-3.3 GB). The same reference forwards, moved before the first step: "
        "one pass over the pairs instead of one per step and epoch, so it saves compute only when epochs > 1. "
        "The same losses and weights as off up to fp32 rounding (measured: identical on SmolLM2-135M, within "
        "6e-7 on the tiny model). With reference "
        "initial, pi_0 is loaded for each round instead of kept across rounds. Losses with a reference only "
        "(sigmoid/ipo/hinge/robust); simpo and orpo have none. With LoRA and reference previous there is no "
        "copy to free (TRL disables the adapter): it saves the per-step reference forward only. The pass "
        "counts toward the round's first step in ray.train_step_timeout_s.",
    )
    attn_implementation: Literal["eager", "sdpa", "flex_attention", "flash_attention_2"] | None = Field(
        None,
        description="Attention kernel of the trainer (transformers attn_implementation). None: eager for models "
        "with soft-capped attention logits (Gemma 2), whose cap sdpa silently drops (vLLM applies it: the "
        "trained policy would differ from the served one), transformers' default (sdpa) otherwise. eager "
        "materializes the attention matrix: with long pairs, turn on gradient_checkpointing, or use "
        "flex_attention / flash_attention_2 (both honour the cap) where installed.",
    )
    checkpoint_steps: int | None = Field(
        None,
        ge=1,
        description="Save a step checkpoint of the training round (weights, optimizer, scheduler, RNG, data "
        "position) every this many optimizer steps into the iteration's train_checkpoints/ (shared storage; "
        "only the last is kept, deleted once the policy is saved). A round that a crash interrupted continues "
        "from it on resume and ends where an uninterrupted round ends. None: no step checkpoints.",
    )

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        loss_spec(name)  # ValueError naming the known losses
        return name

    @model_validator(mode="after")
    def _prompt_fits(self) -> SolverSection:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})"
            )
        return self


def _judge_template(name: str | None) -> str | None:
    if name is not None:
        judge_template(name)  # ValueError listing the known templates
    return name


class ScorerSpec(_Section):
    kind: str = Field(description=f"Scorer kind (eva.scorers): {', '.join(component_kinds())}.")
    weight: float = Field(
        1.0,
        description="Weight of this scorer's score in the combination, after its fixed map onto [0, 1] (judge labels "
        "linearly, relevance cosine clipped at 0, reward_model sigmoid, wellformed as is, function clipped; "
        "eva.scorers); never standardized per batch.",
    )
    model: str | None = Field(
        None,
        description=f"Model of {'/'.join(k for k, v in SCORER_KINDS.items() if v.model)}: path, builtin name, or "
        f"initial "
        f"(the frozen initial policy).",
    )
    function: str | None = Field(None, description="module:function for kind=function. This executes user code.")
    judge_template: str | None = Field(
        None,
        description=f"Judge prompt template for kind=judge ({', '.join(JUDGE_TEMPLATES)}; eva.judge); None: "
        f"reward.judge_template.",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        scorer_kind(kind, component=True)  # ValueError listing the known kinds
        return kind

    _known_template = field_validator("judge_template")(_judge_template)


# The CPU default reward, measured in benchmarks/RESULTS.md (pairwise accuracy 0.91 on
# eva/data/reward_eval.jsonl; weights chosen on the even lines, 0.86 on the held-out odd lines):
# the few-shot SmolLM2 judge, MiniLM prompt-response relevance and the well-formedness heuristics.
DEFAULT_REWARD_COMPONENTS: tuple[ScorerSpec, ...] = (
    ScorerSpec(kind="judge", weight=0.3),
    ScorerSpec(kind="relevance", weight=0.1),
    ScorerSpec(kind="wellformed", weight=0.6),
)


class RewardSection(_Section):
    kind: str = Field(
        "combined",
        description="Scorer kind (eva.scorers): "
        + "; ".join(f"{name} ({SCORER_KINDS[name].about})" for name in reward_kinds())
        + ".",
    )
    model: str = Field(
        "initial",
        description="Judge LLM or reward model: a path, a builtin name, or initial (the frozen initial policy).",
    )
    function: str | None = Field(
        None,
        description="module:function for kind=function: called as f(prompts, responses) -> list[float]. Runs user "
        "code.",
    )
    judge_template: str = Field(
        "fewshot",
        description=f"Judge prompt template ({', '.join(JUDGE_TEMPLATES)}; eva.judge); the reward is the expected "
        f"label "
        f"value.",
    )
    judge_dtype: DType = Field(
        "float32",
        description="Judge engine dtype. float32 by default: bf16 logits are coarse (ties) and cost SmolLM2's judge ~5 "
        "points of accuracy.",
    )
    batch_size: int = Field(16, ge=1, description="Most pairs in one reward-model forward (reward_model).")
    batch_tokens: int = Field(
        16384,
        ge=16,
        description="Token budget of one reward-model forward (reward_model): pairs are sorted by length and "
        "batched while count x longest stays within it (and count within batch_size), so short pairs go in "
        "large batches and little of a batch is padding.",
    )
    max_length: int = Field(1024, ge=16, description="Max tokens a scorer reads of prompt + response.")
    components: tuple[ScorerSpec, ...] = Field(
        DEFAULT_REWARD_COMPONENTS,
        description="Scorers and weights for kind=combined; each scorer's score is mapped onto [0, 1] by a fixed rule "
        "before weighting (eva.scorers).",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        scorer_kind(kind)  # ValueError listing the known kinds
        return kind

    _known_template = field_validator("judge_template")(_judge_template)

    @model_validator(mode="after")
    def _consistent(self) -> RewardSection:
        if self.kind == "combined" and not self.components:
            raise ValueError("kind=combined needs at least one entry in `components`")
        scorers = self._scorers()
        for where, spec in scorers:
            field = f"{where}.model" if spec.model else "model"
            if spec.kind == "reward_model" and (spec.model or self.model) == "initial":
                raise ValueError(
                    f"{field}{f' (of {where})' if where and not spec.model else ''} is 'initial', the policy: "
                    f"a causal LM, not a "
                    "reward model. kind reward_model needs the path of a sequence-classification reward model (e.g. "
                    "Skywork-Reward-Llama-3.1-8B-v0.2); kind judge scores with the initial policy"
                )
            if SCORER_KINDS[spec.kind].function and not (spec.function or self.function):
                raise ValueError(f"{where + ': ' if where else ''}kind={spec.kind} needs `function: module:function`")
        if self.kind == "combined":
            total = sum(c.weight for c in self.components)
            if not total > 0:  # all zero: every reward is 0, no pair ever forms; negative: the scale flips
                weights = ", ".join(f"{c.kind} {c.weight:g}" for c in self.components)
                raise ValueError(
                    f"components: the weights ({weights}) sum to {total:g}; they must sum to a positive number"
                )
        return self

    def _scorers(self) -> list[tuple[str, ScorerSpec]]:
        """(where, spec) of every scorer the reward runs: its components, or itself as one scorer; none
        for a kind that is only ever the whole reward and has no per-scorer fields (task)."""
        if self.kind == "combined":
            return [(f"components.{i}", c) for i, c in enumerate(self.components)]
        return [("", ScorerSpec(kind=self.kind))] if SCORER_KINDS[self.kind].component else []

    def functions(self) -> list[tuple[str, str]]:
        """(field, module:function) of every user function the reward calls."""
        out = []
        for where, spec in self._scorers():
            if SCORER_KINDS[spec.kind].function:
                field = f"reward.{where}.function" if spec.function else "reward.function"
                function = spec.function or self.function
                if function is None:  # the validator refuses this; a model_construct'ed section skips it
                    raise ValueError(f"{field}: kind={spec.kind} needs `function: module:function`")
                out.append((field, function))
        return out


class ActorResources(_Section):
    num_cpus: float = Field(
        0.5, gt=0, description="CPUs Ray reserves for one actor (fractional allowed; keep the sum within the cluster)."
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for one actor.")
    replicas: int = Field(1, ge=1, description="Number of actors of this kind (engine replicas split rollouts).")
    max_restarts: int = Field(0, ge=-1, description="Ray actor restarts after a crash (-1: unlimited).")
    threads: int = Field(
        1,
        ge=1,
        description="Torch threads inside the actor (trainer). May exceed num_cpus on purpose: the loop's stages "
        "run one "
        "at a time, so the trainer can use the cores the idle engines reserve.",
    )


class RaySection(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join (auto, ray://...). None: RAY_ADDRESS or a new local cluster."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local cluster (None: all).")
    engine: ActorResources = Field(default_factory=ActorResources, description="Policy generation engines (vLLM).")
    trainer: ActorResources = Field(default_factory=ActorResources, description="The TRL training actor.")
    reward: ActorResources = Field(default_factory=ActorResources, description="Reward scorer actors.")
    creator: ActorResources = Field(
        default_factory=ActorResources,
        description="The creator model's own engine replicas (only when creator.model is not `policy`; otherwise the "
        "creator generates with the policy's engines).",
    )
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = Field(
        "PACK",
        description="Placement-group strategy for engine replicas (one bundle of {CPU: num_cpus, GPU: num_gpus} per "
        "replica); STRICT_SPREAD puts each replica on its own node.",
    )
    colocate: bool = Field(
        False,
        description="The trainer shares the GPU of the first policy engine replica: one placement bundle holds "
        "both, the engine sleeps while the trainer trains (model.sleep auto), and the trainer's GPU generates the "
        "rest of the time instead of idling. Needs fractions of one GPU for both (ray.engine.num_gpus + "
        "ray.trainer.num_gpus <= 1) and model.tensor_parallel_size 1; set model.gpu_memory_utilization to leave "
        "the trainer its share at start (both hold their weights then).",
    )
    weight_sync: Literal["auto", "object_store", "nccl", "ipc", "gloo"] = Field(
        "auto",
        description="How the trainer's weights reach the policy's engines after a round (or an online step): "
        "object_store (the state dict put once in Ray's object store, zero-copy; works everywhere), nccl (vLLM's "
        "NCCL weight-transfer engine: one GPU-to-GPU broadcast to every engine rank; the trainer and the engines "
        "need GPUs), ipc (vLLM's CUDA IPC engine: the engine maps the trainer's GPU tensors; needs ray.colocate), "
        "gloo (the same broadcast over a gloo group on CPU; tensor_parallel_size 1). auto: object_store (nccl and "
        "ipc have not run on a GPU yet: chosen by name only). CPU engines that sleep through the round "
        "(model.sleep) wake from the saved policy folder instead; GPU engines in sleep mode wake their weights "
        "alone, take the push, then the rest. The weights are the same on every path.",
    )
    placement_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait for the engines' placement group before the run stops with what did not fit.",
    )
    retries: int = Field(
        2,
        ge=0,
        description="Retries of a failed generation batch (engine actor died or its node was lost) before the "
        "stage fails.",
    )
    timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Longest wait for one actor call before the run stops (resumable). A training round is not "
        "one call: it is bounded by ray.train_step_timeout_s per step instead.",
    )
    train_step_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Training liveness: the longest a training round may go without finishing an optimizer step "
        "(its first step counted from the start of the round) before the stage fails (resumable). A round has "
        "no wall-clock limit of its own: it may take hours while it makes progress.",
    )
    restart_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest wait for a crashed actor that Ray restarts (max_restarts) to come back before its batch "
        "goes to another replica or the stage fails. An engine whose call fails in a way that leaves it unusable "
        "(CUDA OOM, a dead tensor-parallel rank) ends its process so that Ray restarts it.",
    )


class PriorityBufferSection(_Section):
    decay: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Staleness decay of a prompt's priority per optimizer step since its group was last scored "
        "(eva.online.buffer): a child not drawn for a while loses its claim until it is scored again. 1: no decay.",
    )
    alpha: float = Field(
        1.0,
        ge=0,
        description="Temperature of priority sampling: children are drawn with weight (priority + eps) ** alpha "
        "(0: uniform, 1: proportional to the decayed informativeness).",
    )
    eps: float = Field(
        0.01,
        gt=0,
        description="Floor added to every priority, so a child with informativeness 0 is drawn rarely, never starved.",
    )
    seed_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of every minibatch drawn uniformly from the seed prompts after the warm-up; the rest "
        "comes from the creator's children by priority (either pool fills in when the other runs short).",
    )
    warmup_steps: int = Field(
        0, ge=0, description="Optimizer steps at the start whose minibatches come from the seed prompts only."
    )
    admit_threshold: float | None = Field(
        None,
        description="Admission gating (as ACCEL does for environments): score every child once (n responses, "
        "counted as generated tokens) and admit it to the draws only if its informativeness (creator.metric) is "
        "strictly above this. None: every child is admitted unscored, drawn soon at the top priority.",
    )


class OnlineSection(_Section):
    algorithm: Literal["rloo", "grpo", "online_dpo"] = Field(
        "rloo",
        description="The online solver (run.mode: online; eva.online): rloo (leave-one-out baseline, REINFORCE "
        "loss; the paper's online solver), grpo (group-normalized advantages, clipped ratio), or online_dpo (a "
        "pair per group of the current policy's own samples, best vs worst, eva's sigmoid DPO loss with "
        "solver.beta and solver.reference). Losses are eva's code, not TRL's trainers: README, the online mode.",
    )
    policy_loss: Literal["reinforce", "clip"] | None = Field(
        None,
        description="rloo/grpo: reinforce (-A log pi, on-policy) or clip (PPO's clipped ratio against the "
        "sampling policy). None: reinforce for rloo, clip for grpo. online_dpo has its own loss.",
    )
    clip_eps_low: float = Field(
        0.2, gt=0, lt=1, description="clip: the ratio's lower bound is 1 - clip_eps_low (for negative advantages)."
    )
    clip_eps_high: float = Field(
        0.2,
        gt=0,
        description="clip: the ratio's upper bound is 1 + clip_eps_high (for positive advantages); above "
        "clip_eps_low is DAPO's clip-higher.",
    )
    kl_beta: float = Field(
        0.0,
        ge=0,
        description="rloo/grpo: weight of the per-token k3 KL penalty to the reference policy (solver.reference: "
        "the last committed policy, or the initial one); 0 holds no reference copy. online_dpo's beta is "
        "solver.beta.",
    )
    scale_by_std: bool = Field(
        True,
        description="grpo: divide a group's centred rewards by their std (GRPO); false: Dr. GRPO, centred only.",
    )
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] | None = Field(
        None,
        description="Token aggregation of the policy loss (eva.online.algos, verl's names): token-mean (DAPO), "
        "seq-mean-token-mean (GRPO), seq-mean-token-sum (RLOO), seq-mean-token-sum-norm (Dr. GRPO, divisor "
        "solver.max_new_tokens). None: seq-mean-token-sum for reinforce, seq-mean-token-mean for clip.",
    )
    minibatch_prompts: int = Field(
        8,
        ge=1,
        description="Prompts per optimizer step; each gets solver.n_responses responses (the group its advantages "
        "and its informativeness come from).",
    )
    micro_batch: int = Field(
        16,
        ge=1,
        description="Sequences per forward/backward pass of the trainer (gradients accumulate over them into the "
        "step's one optimizer update, with the aggregation's normalizers of the whole minibatch: the same update "
        "as one pass). Lower it when the trainer runs out of memory.",
    )
    steps_per_commit: int = Field(
        8,
        ge=1,
        description="Optimizer steps per committed iteration (K): every K steps the creator evolves the prompts "
        "just seen and the run commits an iteration (buffer, policy, optimizer state, metrics). A killed run "
        "redoes at most the K steps since the last commit.",
    )
    sync_every: int = Field(
        1,
        ge=1,
        description="Push the trainer's weights to the engines every this many optimizer steps (S); must divide "
        "steps_per_commit. S > 1 samples up to S - 1 steps stale: the clip loss corrects for it (the sampling "
        "policy's log-probs from a copy of the pushed weights).",
    )
    children_per_commit: int = Field(
        8,
        ge=0,
        description="Children the creator adds every steps_per_commit steps: parents are creator.sample_frac of the "
        "prompts drawn since the last commit, picked by creator.sample_method on their last group's "
        "informativeness (creator.metric), with creator.num_variants children each (more rounds up to "
        "creator.max_evolve_rounds while filters drop children). 0: no creator.",
    )
    lr_warmup_steps: int = Field(
        0,
        ge=0,
        description="The learning rate (solver.learning_rate) rises linearly over this many optimizer steps, then "
        "stays constant: the run's length may be extended (run.iterations), so no schedule depends on it.",
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient's global norm to this before each optimizer step (None: no clip)."
    )
    buffer: PriorityBufferSection = Field(
        default_factory=PriorityBufferSection,
        description="The prioritized generative buffer the minibatches are drawn from (eva.online.buffer).",
    )

    def resolved_loss(self) -> str | None:
        """The policy loss rloo/grpo train with (None for online_dpo)."""
        if self.algorithm == "online_dpo":
            return None
        return self.policy_loss or ("reinforce" if self.algorithm == "rloo" else "clip")

    def resolved_agg(self) -> str:
        """The token aggregation of the policy loss."""
        return self.agg or ("seq-mean-token-sum" if self.resolved_loss() == "reinforce" else "seq-mean-token-mean")


class CheckpointSection(_Section):
    keep_policies: int | None = Field(
        None,
        ge=1,
        description="Keep the policies of only the last K committed iterations (plus iteration 0); None keeps all. "
        "Prompt "
        "buffers are never pruned.",
    )


class RunConfig(_Section):
    run: RunSection = Field(default_factory=RunSection, description="Run identity and length.")
    model: ModelSection = Field(default_factory=ModelSection, description="The policy model and engine settings.")
    prompts: PromptsSection = Field(default_factory=PromptsSection, description="The seed prompt set.")
    task: TaskSection = Field(
        default_factory=TaskSection,
        description="A task family with verifiable rewards (seed problems, grading, mutation, held-out evaluation).",
    )
    creator: CreatorSection = Field(
        default_factory=CreatorSection, description="Prompt evolution (estimate, sample, evolve, mix)."
    )
    solver: SolverSection = Field(default_factory=SolverSection, description="Rollouts and preference optimization.")
    reward: RewardSection = Field(default_factory=RewardSection, description="Reward scorer.")
    ray: RaySection = Field(default_factory=RaySection, description="Ray cluster and per-actor resources.")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description="Checkpoint retention.")
    online: OnlineSection = Field(
        default_factory=OnlineSection,
        description="The online solver, its step cadence and the prioritized buffer (read when run.mode is online).",
    )

    @model_validator(mode="after")
    def _task_family(self) -> RunConfig:
        has_task = self.task.family is not None
        if self.reward.kind == "task" and not has_task:
            raise ValueError("reward.kind is task but task.family is not set: the task grader needs a family")
        if self.creator.kind == "program" and not has_task:
            raise ValueError(
                "creator.kind is program but task.family is not set: program mutations come from a task family"
            )
        if has_task and self.creator.kind == "llm" and not self.run.baseline:  # select and program keep the answers
            raise ValueError(
                "creator.kind is llm with task.family set: an LLM rewrite changes the problem but not its "
                "reference answer, "
                "so its reward would grade against a wrong answer. Use creator.kind: program (the family's "
                "mutations, the "
                "answer recomputed by code)"
            )
        if has_task and self.prompts.path != PromptsSection().path:
            raise ValueError(
                "prompts.path is for free-text prompts; with task.family set the seeds are generated, or read "
                "from task.problems"
            )
        return self

    @model_validator(mode="after")
    def _responses_fit(self) -> RunConfig:
        # the engines left-truncate a prompt to make room for the new tokens; with none left there is nothing to keep
        for field, tokens in (
            ("solver.max_new_tokens", self.solver.max_new_tokens),
            ("creator.max_new_tokens", self.creator.max_new_tokens),
        ):
            if tokens >= self.model.max_model_len:
                raise ValueError(
                    f"{field} ({tokens}) must be below model.max_model_len ({self.model.max_model_len}): prompt and "
                    "response share the engine's context, and no prompt token would fit"
                )
        return self

    @model_validator(mode="after")
    def _engine_gpus(self) -> RunConfig:
        tp = self.model.tensor_parallel_size
        engines = [("ray.engine", self.ray.engine)] + (
            [("ray.creator", self.ray.creator)] if self.creator.model != "policy" else []
        )
        for name, res in engines:
            if tp > 1 and res.num_gpus != tp:
                raise ValueError(
                    f"{name}.num_gpus is {res.num_gpus:g} but model.tensor_parallel_size is {tp}: a "
                    f"tensor-parallel engine "
                    f"replica takes one whole GPU per rank, set {name}.num_gpus: {tp}"
                )
        return self

    @model_validator(mode="after")
    def _online(self) -> RunConfig:
        if self.run.mode != "online":
            return self
        o, s = self.online, self.solver
        problems = [
            (
                self.model.sleep is True,
                "model.sleep is true: online, the engines generate between every optimizer step, and a sleeping "
                "engine would be rebuilt (CPU) or woken every step; set model.sleep: auto (off in online mode)",
            ),
            (s.finetune == "lora", "solver.finetune is lora: the online solver trains full weights only"),
            (
                s.temperature == 0,
                "solver.temperature is 0: the n responses of a group would be equal (no advantage, no pair)",
            ),
            (
                o.steps_per_commit % o.sync_every != 0,
                f"online.sync_every ({o.sync_every}) must divide online.steps_per_commit ({o.steps_per_commit}): "
                "at every commit the engines must serve the committed policy, which a resume starts them from",
            ),
            (
                o.sync_every > 1 and o.resolved_loss() == "reinforce",
                f"online.sync_every is {o.sync_every} with the reinforce loss: rollouts up to {o.sync_every - 1} "
                "steps stale need the clipped ratio's correction; set online.policy_loss: clip",
            ),
            (
                o.algorithm == "online_dpo" and o.policy_loss is not None,
                "online.policy_loss is for rloo/grpo: online_dpo trains eva's sigmoid DPO loss",
            ),
            (
                o.algorithm == "online_dpo" and o.kl_beta > 0,
                "online.kl_beta is for rloo/grpo: online_dpo's strength is solver.beta",
            ),
            (
                o.algorithm == "online_dpo" and s.loss_type != "sigmoid",
                f"solver.loss_type is {s.loss_type}: online_dpo trains the sigmoid DPO loss only",
            ),
            (
                self.creator.kind == "select",
                "creator.kind is select: online, the buffer already re-draws the informative prompts; use "
                "creator.kind program or llm, or run.baseline for no creator",
            ),
            (
                self.creator.metric in BATCH_ONLY,
                f"creator.metric {self.creator.metric} is normalized per batch, so priorities of different steps "
                "would not compare; use a per-prompt metric (maxmean, learnability, gap, ...)",
            ),
        ]
        bad = [message for failed, message in problems if failed]
        if bad:
            raise ValueError("run.mode is online, but " + "; ".join(bad))
        return self

    @model_validator(mode="after")
    def _weight_sync(self) -> RunConfig:
        path, engine, trainer = self.ray.weight_sync, self.ray.engine.num_gpus, self.ray.trainer.num_gpus
        if path in ("nccl", "ipc") and not (engine > 0 and trainer > 0):
            raise ValueError(
                f"ray.weight_sync {path} sends from the trainer's GPU to the engines' GPUs, but ray.engine.num_gpus "
                f"is {engine:g} and ray.trainer.num_gpus is {trainer:g}: give both GPUs, or use object_store (or "
                "gloo on CPU)"
            )
        if path == "ipc" and not self.ray.colocate:
            raise ValueError(
                "ray.weight_sync ipc maps the trainer's GPU memory into the engine, which needs both on one GPU: "
                "set ray.colocate true, or use nccl between GPUs of their own"
            )
        if path == "gloo" and self.model.tensor_parallel_size > 1:
            raise ValueError(
                f"ray.weight_sync gloo with model.tensor_parallel_size {self.model.tensor_parallel_size}: eva's gloo "
                "backend is registered in the engine's own process, not in vLLM's tensor-parallel workers; use "
                "nccl (GPU) or object_store"
            )
        return self

    @model_validator(mode="after")
    def _colocated(self) -> RunConfig:
        if not self.ray.colocate:
            return self
        if self.model.tensor_parallel_size > 1:
            raise ValueError(
                f"ray.colocate with model.tensor_parallel_size {self.model.tensor_parallel_size}: a tensor-parallel "
                "engine's ranks take whole GPUs, so the trainer cannot share one; use tensor_parallel_size 1"
            )
        engine, trainer = self.ray.engine.num_gpus, self.ray.trainer.num_gpus
        if not (0 < engine < 1 and 0 < trainer < 1 and engine + trainer <= 1 + 1e-9):
            raise ValueError(
                f"ray.colocate shares one GPU between the first engine replica and the trainer, but "
                f"ray.engine.num_gpus is {engine:g} and ray.trainer.num_gpus is {trainer:g}: give both a fraction of "
                "one GPU, summing to at most 1 (e.g. 0.5 and 0.5)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, ignore: frozenset[str] = MUTABLE_FIELDS) -> str:
        """sha256 of the config without the fields in `ignore`: equal fingerprints compute the same run."""
        return fingerprint(self.to_dict(), ignore)

    def changed_fields(self, other: RunConfig) -> list[str]:
        """Dotted paths whose values differ between two configs."""
        a, b = flatten(self.to_dict()), flatten(other.to_dict())
        return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def fingerprint(data: dict[str, Any], ignore: frozenset[str] = MUTABLE_FIELDS) -> str:
    """sha256 of a config mapping (as written in a file) without the fields in `ignore`."""
    flat = {k: v for k, v in flatten(data).items() if k not in ignore}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("eva.presets").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (run:, model:, ...), got {type(data).__name__}")
    return data


def _preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return _read_yaml((resources.files("eva.presets") / f"{name}.yaml").read_text(), f"preset {name}")


def _merge(
    base: dict[str, Any], update: dict[str, Any], source: str, sources: dict[str, str], prefix: str = ""
) -> None:
    """Deep-merge `update` into `base`, recording which source set each leaf (for error messages)."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, source, sources, path + ".")
        else:
            base[key] = value
            sources.pop(path, None)  # re-insert: the dict's order is the order values were last set
            sources[path] = source


def parse_override(item: str) -> dict[str, Any]:
    """'creator.sample_frac=0.5' -> {'creator': {'sample_frac': 0.5}}; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. creator.sample_frac=0.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    tree: dict[str, Any] = {}
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None
) -> RunConfig:
    """Resolve a RunConfig from a preset, a YAML file and `a.b=c` overrides (later wins).

    With neither `path` nor `preset`, the `cpu-default` preset is the base.
    Raises ConfigError naming the source (file, preset or --set), the field path and the expectation.
    """
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    base = preset or (DEFAULT_PRESET if path is None else None)
    if base:
        _merge(data, _preset(base), f"preset {base}", sources)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        _merge(data, _read_yaml(p.read_text(), str(p)), str(p), sources)
    for item in overrides:
        _merge(data, parse_override(item), f"--set {item}", sources)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, sources)) from None


def config_from_dict(data: dict[str, Any], source: str) -> RunConfig:
    """Validate an already-resolved config (e.g. a run directory's run.yaml)."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, {}, default_source=source)) from None


def _describe(error: ValidationError, sources: dict[str, str], default_source: str = "config") -> str:
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        src = _source_of(loc, sources, default_source)
        # a check across sections: not the whole config
        got = "" if err["type"] == "missing" or not loc else f" (got {err.get('input')!r})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            section = loc.rsplit(".", 1)[0] if "." in loc else ""
            known = _known_fields(section)
            if known:
                msg += f"; known fields here: {', '.join(known)}"
            got = ""
        lines.append(f"{src}: {loc or '<root>'}: {msg}{got}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _source_of(loc: str, sources: dict[str, str], default: str) -> str:
    """Where the value at `loc` came from. A section-level error (a cross-field check) blames the
    source that last set anything inside the section; a field error the most specific source
    recorded for the field or one of its parents."""
    # loc "": a check across sections
    inside = [src for key, src in sources.items() if not loc or key.startswith(f"{loc}.")]
    if inside:
        return inside[-1]
    return next((sources[k] for k in _prefixes(loc) if k in sources), default)


def _prefixes(loc: str) -> list[str]:
    parts = loc.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _known_fields(section: str) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in filter(None, section.split(".")):
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)
