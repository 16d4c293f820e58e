"""Reward scorers: one interface, `score(prompts, responses) -> list[float]`, one float per pair.

One class per kind of `eva.scorers.SCORER_KINDS` (its `name` is the kind): `judge` (LLM-as-a-judge
through vLLM: the expected score over the score tokens' next-token probabilities, so it is
continuous; templates in `eva.judge`), `reward_model` (HF sequence classifier), `function` (user
code), `relevance` (MiniLM prompt-response cosine), `wellformed` (`eva.wellformed`) and `combined`.
The `task` kind has no class here: a task family's grade is pure code that the rollouts run
themselves (`eva.tasks.prompts.grade`), so no actor holds it.

Rewards are pointwise on purpose: the same (prompt, response) always gets the same reward, whatever
else is in the batch. Nothing here standardizes per batch. Combination uses the fixed map of each
kind's raw score onto [0, 1] that `eva.scorers` gives (`Scorer.unit`), so a weight means "share of
a [0, 1] reward".

A score that comes out non-finite is returned as nan, never replaced; `score_with_report` counts them
and the pipeline excludes them (DESIGN.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors import heap
from actors.busy import BusyLog, Span
from actors.models import MINILM_MODEL, ModelError, assigned_device, model_config_file, resolve_model_path
from eva.config import ModelSection, RewardSection, ScorerSpec
from eva.judge import expected_label, judge_template
from eva.scorers import load_function, scorer_kind, to_unit
from eva.wellformed import wellformed


@dataclass(frozen=True, slots=True)
class ScoreReport:
    """Scores of one call (nan where a scorer failed) with the count of such failures."""

    scores: tuple[float, ...]
    nonfinite: int
    seconds: float


class Scorer:
    """Base: subclasses implement `score` and set `name` (their kind); `lo`/`hi` bound the raw score for `unit`."""

    name = "scorer"
    lo, hi = 0.0, 1.0

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError

    def unit(self, raw: float) -> float:
        """The raw score mapped onto [0, 1] by its kind's fixed rule (never by the batch); nan stays nan."""
        return to_unit(self.name, raw, self.lo, self.hi)

    def score_with_report(self, prompts: list[str], responses: list[str]) -> ScoreReport:
        t0 = time.perf_counter()
        scores = tuple(self.score(prompts, responses))
        return ScoreReport(scores, sum(1 for s in scores if not math.isfinite(s)), time.perf_counter() - t0)

    def describe(self) -> str:
        return self.name


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)} vs {len(responses)}")


def _finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else math.nan


# ----------------------------------------------------------------------------------------- judge


def label_token_ids(tokenizer: Any, labels: Sequence[tuple[str, float]]) -> list[int]:
    """Token id of each label; every label must be exactly one token of the judge's vocabulary."""
    ids = []
    for text, _ in labels:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(
                f"judge label {text!r} is {len(tokens)} tokens for this tokenizer; labels must be single tokens"
            )
        ids.append(tokens[0])
    return ids


def _clip_pair(tokenizer: Any, prompt: str, response: str, max_tokens: int) -> tuple[str, str]:
    """Keep the head of prompt and response so together they are at most `max_tokens` tokens; the
    prompt gets at most half when both are long. The judge's own instructions are never cut."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    r = tokenizer.encode(response, add_special_tokens=False)
    if len(p) + len(r) <= max_tokens:
        return prompt, response
    keep_p = min(len(p), max(max_tokens // 2, max_tokens - len(r)))
    return tokenizer.decode(p[:keep_p]), tokenizer.decode(r[: max_tokens - keep_p])


class JudgeScorer(Scorer):
    """LLM-as-a-judge on a frozen model through vLLM; reward = expected label value (continuous).

    vLLM's `logprob_token_ids` returns the exact logprob of every label token, even when a label is
    far outside the top-k (a random tiny model never puts digits in its top 20).
    """

    name = "judge"

    def __init__(self, engine: Any, template: str = "rubric", max_length: int = 1024) -> None:
        self.template = judge_template(template)
        self.engine, self.template_name, self.max_length = engine, template, max_length
        self.token_ids = label_token_ids(engine.tokenizer, self.template.labels)
        self.values = [v for _, v in self.template.labels]
        self.lo, self.hi = min(self.values), max(self.values)

    def render(self, prompt: str, response: str) -> str:
        prompt, response = _clip_pair(self.engine.tokenizer, prompt, response, self.max_length)
        t = self.template
        text = t.user.format(prompt=prompt, response=response)
        if t.chat:
            text = self.engine.apply_chat_template(text, t.system)
        return text + t.suffix

    def label_logprobs(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """For each pair, the next-token logprob of every label token (in template label order)."""
        from vllm import SamplingParams

        from actors.engine import exit_on_fatal

        _check_pairs(prompts, responses)
        if not prompts:
            return []
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, logprob_token_ids=self.token_ids)
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        with exit_on_fatal("judge"):  # a CUDA OOM leaves the engine unusable: Ray restarts the reward actor
            outputs = self.engine.llm.generate(texts, params, use_tqdm=False)
        rows = []
        for out in outputs:
            step = out.outputs[0].logprobs[0] if out.outputs and out.outputs[0].logprobs else {}
            rows.append([step[i].logprob if i in step else -math.inf for i in self.token_ids])
        return rows

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [expected_label(row, self.values) for row in self.label_logprobs(prompts, responses)]

    def describe(self) -> str:
        return f"judge[{self.template_name}]({self.engine.model_path})"


# ---------------------------------------------------------------------------- HF encoder scorers


def _load_hf(
    model_path: str, kind: str, threads: int, *, trust_remote_code: bool = False, device: str = "cpu"
) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)  # one thread per actor: two cores are easily oversubscribed
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    cls = AutoModelForSequenceClassification if kind == "reward_model" else AutoModel
    model = cls.from_pretrained(model_path, dtype="auto", trust_remote_code=trust_remote_code).to(device).eval()
    return tokenizer, model


def check_reward_model(model_path: str, trust_remote_code: bool, field: str = "reward.model") -> None:
    """Refuse what is not a sequence-classification reward model, before any weights load.

    AutoModelForSequenceClassification loads a causal LM too, with a randomly initialized score head:
    scores would be noise. Accepted: config.json `architectures` naming a `*ForSequenceClassification`
    class, or custom code registered for AutoModelForSequenceClassification in `auto_map` (ArmoRM),
    which also needs `model.trust_remote_code: true`."""
    config = json.loads(model_config_file(model_path).read_text())
    architectures = config.get("architectures") or []
    custom = (config.get("auto_map") or {}).get("AutoModelForSequenceClassification")
    if custom and not trust_remote_code:
        raise ModelError(
            f"{field}: {model_path} is a reward model with custom code ({custom}); it runs only with "
            "model.trust_remote_code: true, which executes Python code from that folder"
        )
    if not custom and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(
            f"{field}: {model_path} is not a sequence-classification reward model (config.json architectures: "
            f"{architectures}); kind reward_model needs one, e.g. Skywork-Reward-Llama-3.1-8B-v0.2 "
            "(a causal LM would get a randomly initialized score head)"
        )


def reward_values(output: Any, n: int) -> Any:
    """One reward per sequence (float tensor of shape [n]) from a sequence classifier's output.

    `output.score` when the model returns one: ArmoRM-style custom heads put their gated preference
    score there (its `logits` is the same tensor, its `rewards` the per-objective ones). Otherwise the
    logits: one label is the reward, two labels give logit[1] - logit[0]."""
    score = getattr(output, "score", None)
    values = (output.logits if score is None else score).float().reshape(n, -1)
    if values.shape[1] == 1:
        return values[:, 0]
    if values.shape[1] == 2 and score is None:
        return values[:, 1] - values[:, 0]
    what = "score" if score is not None else "logits"
    raise ModelError(f"reward model gives {values.shape[1]} values per pair in `{what}`; expected 1 (or 2 logits)")


def token_budget_batches(lengths: Sequence[int], budget: int, max_count: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, longest first: each batch holds items of similar
    length, at most `max_count` of them, and (count x its longest) padded tokens within `budget`
    (a single item longer than the budget gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        # sorted longest first: the batch's first item is its longest
        if current and len(current) < max_count and (len(current) + 1) * lengths[current[0]] <= budget:
            current.append(i)
        else:
            batches.append([i])
    return batches


class RewardModelScorer(Scorer):
    """Any HF sequence-classification reward model (Skywork-Reward, ArmoRM-style custom heads).

    The pair is rendered with the tokenizer's chat template when it has one (user turn + assistant
    turn, as reward models are trained), else encoded as a (prompt, response) text pair. Inputs fit
    `max_length` tokens: the heads of prompt and response are kept (the prompt gets at most half when
    both are long), the template is never cut. The reward is `reward_values` of the forward's output.

    The model runs on `device` (default: the GPU Ray assigned to this actor, else CPU) in its
    checkpoint's dtype. Custom model code (`trust_remote_code`) locates its own last token and prompt
    end, often by searching for the pad id, so it is fed one unpadded pair at a time, as its model card
    does; built-in classes are batched with right padding.
    """

    name = "reward_model"

    def __init__(
        self,
        model_path: str,
        batch_size: int = 16,
        max_length: int = 1024,
        threads: int = 1,
        *,
        trust_remote_code: bool = False,
        device: str | None = None,
        field: str = "reward.model",
        batch_tokens: int = 16384,
    ) -> None:
        check_reward_model(model_path, trust_remote_code, field)
        self.model_path, self.max_length = model_path, max_length
        self.batch_tokens = batch_tokens
        self._overhead: int | None = None  # tokens of the chat template around an empty pair
        self.device = device or assigned_device()
        self.tokenizer, self.model = _load_hf(
            model_path, "reward_model", threads, trust_remote_code=trust_remote_code, device=self.device
        )
        self.custom = not type(self.model).__module__.startswith("transformers.")
        self.batch_size = 1 if self.custom else batch_size
        if self.tokenizer.pad_token is None:  # decoder reward models often ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.custom:  # built-in classes read the last non-pad token: pad ids must agree
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.score(["Say hi."], ["Hi."])  # fail now, not after the first rollout, if the output is no reward

    def _chat(self, prompt: str, response: str) -> str:
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(turns, tokenize=False)

    def _encode(self, prompt: str, response: str) -> dict[str, list[int]]:
        """The model inputs of one pair (input_ids, and token_type_ids where the tokenizer makes them),
        at most `max_length` tokens; tokenized once when the pair fits (a pair too long is clipped and
        tokenized again)."""
        tok = self.tokenizer
        if not tok.chat_template:  # a (prompt, response) text pair, e.g. a BERT classifier
            encoded = tok(prompt, response, truncation=True, max_length=self.max_length)
            return {k: list(encoded[k]) for k in ("input_ids", "token_type_ids") if k in encoded}
        ids = tok.encode(self._chat(prompt, response), add_special_tokens=False)
        if len(ids) > self.max_length:
            # Clip the contents, not the rendered text: cutting the end would drop the assistant turn.
            if self._overhead is None:
                self._overhead = len(tok.encode(self._chat("", ""), add_special_tokens=False))
            budget = max(8, self.max_length - self._overhead)
            clipped = self._chat(*_clip_pair(tok, prompt, response, budget))
            ids = tok.encode(clipped, add_special_tokens=False)[: self.max_length]
        return {"input_ids": ids}

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Pairs sorted by length and batched up to `batch_tokens` padded tokens (and `batch_size`
        pairs), so a batch holds pairs of similar length and little padding; scores in input order."""
        import torch

        _check_pairs(prompts, responses)
        pairs = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        lengths = [len(x["input_ids"]) for x in pairs]
        out = [math.nan] * len(pairs)
        pads = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0}
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, self.batch_tokens, self.batch_size):
                width = lengths[batch[0]]  # longest first
                inputs = {k: torch.full((len(batch), width), pads[k], dtype=torch.long) for k in pairs[batch[0]]}
                inputs["attention_mask"] = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # right padding: built-in classes read the last non-pad token
                    for key, values in pairs[i].items():
                        inputs[key][row, : lengths[i]] = torch.tensor(values)
                    inputs["attention_mask"][row, : lengths[i]] = 1
                output = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
                for i, x in zip(batch, reward_values(output, len(batch)).cpu(), strict=True):
                    out[i] = _finite_or_nan(float(x))
        return out

    def describe(self) -> str:
        return f"reward_model({self.model_path})"


class RelevanceScorer(Scorer):
    """Cosine similarity of prompt and response embeddings (MiniLM, mean pooling), in [-1, 1].

    Texts are embedded one at a time: padding in a batch changes the matrix shapes and with them the
    last bits of the result, and a reward must not depend on its batch. MiniLM is small (a few ms
    per text on one thread), so this costs little.
    """

    name = "relevance"
    lo, hi = 0.0, 1.0

    def __init__(self, model_path: str, max_length: int = 256, threads: int = 1) -> None:
        self.model_path, self.max_length = model_path, max_length
        self.tokenizer, self.model = _load_hf(model_path, "relevance", threads)

    def embed(self, text: str) -> Any:
        import torch

        batch = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state[0].float()
        return torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        _check_pairs(prompts, responses)
        cache: dict[str, Any] = {}  # prompts repeat n times per call (n responses per prompt)
        out = []
        for p, r in zip(prompts, responses, strict=True):
            if p not in cache:
                cache[p] = self.embed(p)
            out.append(_finite_or_nan(float(cache[p] @ self.embed(r))) if r.strip() else 0.0)
        return out

    def describe(self) -> str:
        return f"relevance({self.model_path})"


# ------------------------------------------------------------------------------ wellformedness


class WellformedScorer(Scorer):
    """`eva.wellformed` as a scorer: repetition, truncation, very short answers, echoing the prompt."""

    name = "wellformed"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        _check_pairs(prompts, responses)
        return [wellformed(p, r) for p, r in zip(prompts, responses, strict=True)]


# -------------------------------------------------------------------------------- user function


class FunctionScorer(Scorer):
    """A user `module:function` called as f(prompts, responses) -> one number per pair.

    SECURITY: this imports and runs arbitrary user code in the reward actor's process. Verifiable
    rewards (exact match, unit tests) belong here. Combined with others, return values in [0, 1].
    """

    name = "function"

    def __init__(self, spec: str) -> None:
        self.spec, self.fn = spec, load_function(spec)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        _check_pairs(prompts, responses)
        result = list(self.fn(list(prompts), list(responses)))
        if len(result) != len(prompts):
            raise ValueError(f"reward function {self.spec!r} returned {len(result)} scores for {len(prompts)} pairs")
        try:
            return [_finite_or_nan(float(x)) for x in result]
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward function {self.spec!r} returned a non-number: {e}") from e

    def describe(self) -> str:
        return f"function({self.spec})"


# ------------------------------------------------------------------------------------ combined


class CombinedScorer(Scorer):
    """sum_i w_i * unit_i(raw_i): each component on its fixed [0, 1] scale (module docstring), so
    with weights summing to 1 the reward is in [0, 1]. A nan in any component makes the pair nan."""

    name = "combined"

    def __init__(self, components: Sequence[tuple[float, Scorer]]) -> None:
        if not components:
            raise ValueError("combined scorer needs at least one component")
        self.components = list(components)
        self.lo = sum(min(w, 0.0) for w, _ in self.components)
        self.hi = sum(max(w, 0.0) for w, _ in self.components)

    def component_scores(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Raw scores per component (rows follow `components`)."""
        return [scorer.score(prompts, responses) for _, scorer in self.components]

    def combine(self, raw: list[list[float]]) -> list[float]:
        return [
            math.fsum(w * s.unit(r[i]) for (w, s), r in zip(self.components, raw, strict=True))
            for i in range(len(raw[0]) if raw else 0)
        ]

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        _check_pairs(prompts, responses)
        return [_finite_or_nan(x) for x in self.combine(self.component_scores(prompts, responses))]

    def describe(self) -> str:
        return "combined(" + " + ".join(f"{w:g}*{s.describe()}" for w, s in self.components) + ")"


# ------------------------------------------------------------------------------------- factory


JUDGE_CPU_MAX_NUM_SEQS = 8


def judge_engine(
    model_path: str, max_length: int, workdir: str, dtype: str = "float32", sleep_mode: bool = False
) -> Any:
    """A vLLM engine for a frozen judge: room for the instructions + `max_length` tokens of pair.

    float32 by default: SmolLM2's bf16 logits come in steps of 1/8, which makes many expected scores
    tie and cost the CPU default ~5 points of pairwise accuracy (measured; RESULTS.md).
    """
    from actors.engine import GenerationEngine, one_step_kv_cache_bytes

    # One token per request (its logprobs): prefill work, bounded by the engine's per-step token budget
    # whatever the number of sequences, so a few at once use the CPU as well as many; a preempted
    # request is simply scored again (greedy).
    cpu = assigned_device("judge") == "cpu"
    section = ModelSection(
        dtype=dtype, max_model_len=max_length + 512, max_num_seqs=JUDGE_CPU_MAX_NUM_SEQS if cpu else "auto"
    )
    if cpu:  # every request ends in its prefill step: one step's tokens of KV cache, not 8 full sequences
        kv = one_step_kv_cache_bytes(model_path, section, JUDGE_CPU_MAX_NUM_SEQS)
        section = section.model_copy(update={"kv_cache_gib": kv / 2**30})
    return GenerationEngine(model_path, section, os.path.join(workdir, "judge"), sleep_mode=sleep_mode)


def _model(name: str | None, default: str, initial_model_path: str) -> str:
    name = name or default
    return resolve_model_path(initial_model_path if name == "initial" else name)


def build_scorer(
    reward: RewardSection,
    initial_model_path: str,
    workdir: str,
    engines: dict[str, Any] | None = None,
    *,
    trust_remote_code: bool = False,
    sleep_mode: bool = False,
) -> Scorer:
    """The scorer a RewardSection describes. `model: initial` is the frozen initial policy
    (`initial_model_path`); builtin names resolve offline. Judges on one model share one engine;
    pass `engines` (resolved model path -> GenerationEngine) to reuse engines that already run.
    `trust_remote_code` (the config's `model.trust_remote_code`) lets a reward model run its own code.
    `sleep_mode`: judges' engines start in vLLM's sleep mode (model.sleep on GPU)."""
    engines = {} if engines is None else engines

    def make(spec: ScorerSpec, field: str) -> Scorer:
        kind = scorer_kind(spec.kind, component=True)  # eva.config checked the name when it loaded
        if kind.function:
            function = spec.function or reward.function
            if function is None:  # eva.config refuses this when it loads
                raise ValueError(f"{field}: kind={spec.kind} needs `function: module:function`")
            return FunctionScorer(function)
        path = (
            _model(spec.model, MINILM_MODEL if spec.kind == RelevanceScorer.name else reward.model, initial_model_path)
            if kind.model
            else ""
        )
        if spec.kind == JudgeScorer.name:
            if path not in engines:
                engines[path] = judge_engine(path, reward.max_length, workdir, reward.judge_dtype, sleep_mode)
            return JudgeScorer(engines[path], spec.judge_template or reward.judge_template, reward.max_length)
        if spec.kind == RewardModelScorer.name:  # eva.config refuses `initial` here: a causal LM is no reward model
            return RewardModelScorer(
                path,
                reward.batch_size,
                reward.max_length,
                trust_remote_code=trust_remote_code,
                field=field,
                batch_tokens=reward.batch_tokens,
            )
        if spec.kind == RelevanceScorer.name:
            return RelevanceScorer(path)
        if spec.kind == WellformedScorer.name:
            return WellformedScorer()
        raise ValueError(f"scorer kind {spec.kind!r} of eva.scorers has no scorer class in actors.reward")

    if reward.kind == CombinedScorer.name:
        return CombinedScorer(
            [
                (c.weight, make(c, f"reward.components.{i}.model" if c.model else "reward.model"))
                for i, c in enumerate(reward.components)
            ]
        )
    return make(ScorerSpec(kind=reward.kind, model=reward.model, function=reward.function), "reward.model")


class RewardActor:
    """The reward scorer behind a Ray actor (`ray.remote(RewardActor)`); plain class, no Ray import."""

    def __init__(
        self,
        reward: RewardSection,
        initial_model_path: str,
        workdir: str,
        *,
        trust_remote_code: bool = False,
        sleep_mode: bool = False,
    ) -> None:
        t0 = time.perf_counter()
        self.engines: dict[str, Any] = {}  # the judges' engines (model path -> GenerationEngine)
        self.scorer = build_scorer(
            reward,
            initial_model_path,
            workdir,
            self.engines,
            trust_remote_code=trust_remote_code,
            sleep_mode=sleep_mode,
        )
        self.kind = reward.kind
        heap.release()  # what building the scorers left free (their engines released their own)
        self.start_seconds = time.perf_counter() - t0
        self.pairs = self.nonfinite = 0
        self.seconds = 0.0
        self.busy = BusyLog()

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return list(self.score_with_report(prompts, responses).scores)

    def score_with_report(self, prompts: list[str], responses: list[str]) -> ScoreReport:
        with self.busy.span("score"):
            report = self.scorer.score_with_report(prompts, responses)
        self.pairs += len(report.scores)
        self.nonfinite += report.nonfinite
        self.seconds += report.seconds
        return report

    def sleep(self) -> float:
        """The judges' engines give their memory to the trainer (GenerationEngine.sleep, weights kept
        where vLLM can keep them: the judge is a fixed model); seconds. Other scorers keep theirs (MiniLM:
        90 MB)."""
        return sum(engine.sleep(keep_weights=True) for engine in self.engines.values())

    def wake_up(self) -> float:
        return sum(engine.wake_up() for engine in self.engines.values())

    def drain_busy(self) -> list[Span]:
        """The scoring spans since the last call (actors.busy)."""
        return self.busy.drain()

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scorer": self.scorer.describe(),
            "pid": os.getpid(),
            "start_seconds": self.start_seconds,
            "pairs_scored": self.pairs,
            "nonfinite": self.nonfinite,
            "score_seconds": self.seconds,
        }
