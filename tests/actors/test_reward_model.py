"""The `reward_model` scorer on real tiny models built from a config (no hub): a built-in Llama sequence
classifier through build_scorer and the reward actor, an ArmoRM-style custom head loaded with
trust_remote_code, a BERT text-pair classifier, and the refusals (causal LMs, `initial`, custom code
without trust_remote_code), each naming the config field and the path."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from actors.models import MINILM_MODEL, ModelError, resolve_model_path
from actors.reward import RewardActor, RewardModelScorer, assigned_device, build_scorer, reward_values
from eva.config import ConfigError, RewardSection, ScorerSpec, load_config

PROMPTS = ["What is 2 + 2?", "Name a color.", "Why is the sky blue?"]
RESPONSES = ["2 + 2 is 4.", "Blue.", "Sunlight scatters off air molecules, blue the most."]

# An ArmoRM-style head: per-objective rewards, a gate, the preference score in `score` (and `logits`),
# and ArmoRM's rule for the last token: the position before the first pad id.
GATED_CODE = """
from dataclasses import dataclass

import torch
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class GatedOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    score: torch.FloatTensor = None
    logits: torch.FloatTensor = None


class TinyGatedRewardModel(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = torch.nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.gate = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        h = hidden[torch.arange(input_ids.shape[0]), last]
        rewards = self.regression_layer(h)
        score = (torch.softmax(self.gate(h), dim=-1) * rewards).sum(-1)
        return GatedOutput(rewards=rewards, score=score, logits=score)
"""


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return resolve_model_path("builtin:tiny")


def _tiny_config(tiny_path: str, num_labels: int):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_path)
    config.num_labels = num_labels
    return config


@pytest.fixture(scope="module")
def llama_rm(tiny_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init LlamaForSequenceClassification (1 label) with the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("llama-rm")
    torch.manual_seed(0)
    LlamaForSequenceClassification(_tiny_config(tiny_path, 1)).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def gated_rm(tiny_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A custom-code reward model saved like ArmoRM: auto_map -> modeling file, 19 objectives, a pad id
    the tokenizer never produces (so never in an unpadded input)."""
    from transformers import AutoTokenizer

    src = tmp_path_factory.mktemp("gated-src")
    (src / "modeling_tiny_gated.py").write_text(GATED_CODE)
    sys.path.insert(0, str(src))
    try:
        from modeling_tiny_gated import TinyGatedRewardModel
    finally:
        sys.path.remove(str(src))
    config = _tiny_config(tiny_path, 19)
    config.pad_token_id, config.vocab_size = config.vocab_size, config.vocab_size + 1  # a [PAD] row of its own
    torch.manual_seed(0)
    model = TinyGatedRewardModel(config)
    model.register_for_auto_class("AutoModelForSequenceClassification")
    out = tmp_path_factory.mktemp("gated-rm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(out)
    return str(out)


# --------------------------------------------------------------------- scoring with real models


def test_sequence_classifier_scores_through_build_scorer_and_the_reward_actor(
    llama_rm: str, tiny_path: str, tmp_path: Path
) -> None:
    section = RewardSection(kind="reward_model", model=llama_rm, max_length=64)
    scorer = build_scorer(section, tiny_path, str(tmp_path))
    assert isinstance(scorer, RewardModelScorer) and scorer.device == "cpu" and not scorer.custom
    scores = scorer.score(PROMPTS, RESPONSES)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores) and len(set(scores)) == 3

    actor = RewardActor(section, tiny_path, str(tmp_path))
    report = actor.score_with_report(PROMPTS, RESPONSES)
    assert report.scores == pytest.approx(scores, abs=1e-6) and report.nonfinite == 0
    assert actor.info()["pairs_scored"] == 3 and actor.info()["scorer"] == f"reward_model({llama_rm})"


def test_reward_is_the_models_own_logit(llama_rm: str) -> None:
    """The score is the classifier's logit at the last real token, whatever the padding in the batch."""
    from transformers import AutoModelForSequenceClassification

    scorer = RewardModelScorer(llama_rm, batch_size=3, max_length=64)
    model = AutoModelForSequenceClassification.from_pretrained(llama_rm).eval()
    batch = {k: torch.tensor([v]) for k, v in scorer._encode(PROMPTS[0], RESPONSES[0]).items()}  # alone, unpadded
    with torch.inference_mode():
        expected = float(model(**batch).logits[0, 0])
    assert scorer.score(PROMPTS, RESPONSES)[0] == pytest.approx(expected, abs=1e-4)


def test_armorm_style_custom_head_uses_score_one_unpadded_pair_at_a_time(gated_rm: str) -> None:
    scorer = RewardModelScorer(gated_rm, batch_size=8, max_length=64, trust_remote_code=True)
    assert scorer.custom and scorer.batch_size == 1  # its own code finds the last token: never pad
    assert type(scorer.model).__module__.startswith("transformers_modules")
    assert scorer.model.config.pad_token_id == scorer.model.config.vocab_size - 1  # the model's own, untouched
    scores = scorer.score(PROMPTS, RESPONSES)
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) == 3
    with torch.inference_mode():
        out = scorer.model(**{k: torch.tensor([v]) for k, v in scorer._encode(PROMPTS[1], RESPONSES[1]).items()})
    assert out.rewards.shape == (1, 19)
    assert scores[1] == pytest.approx(float(out.score[0]), abs=1e-6)  # the gated score, not a logit column
    assert scorer.score(PROMPTS[1:2], RESPONSES[1:2]) == [scores[1]]  # same reward alone or in a batch


def test_bert_classifier_scores_text_pairs(tmp_path: Path) -> None:
    """A tokenizer without a chat template: (prompt, response) as a text pair."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    minilm = resolve_model_path(MINILM_MODEL)
    config = AutoConfig.from_pretrained(minilm, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(tmp_path)
    scorer = RewardModelScorer(str(tmp_path), max_length=64)
    assert scorer.tokenizer.chat_template is None
    encoded = scorer._encode("a question", "an answer")
    ids = encoded["input_ids"]
    assert ids.count(scorer.tokenizer.sep_token_id) == 2  # [CLS] prompt [SEP] response [SEP]
    assert encoded["token_type_ids"] == [0] * (ids.index(scorer.tokenizer.sep_token_id) + 1) + [1] * (
        len(ids) - ids.index(scorer.tokenizer.sep_token_id) - 1
    )  # the segments reach the model
    assert all(math.isfinite(s) for s in scorer.score(PROMPTS, RESPONSES))


def test_reward_values_by_output_kind() -> None:
    assert reward_values(SimpleNamespace(logits=torch.tensor([[0.5], [-1.0]])), 2).tolist() == [0.5, -1.0]
    assert reward_values(SimpleNamespace(logits=torch.tensor([[1.0, 3.0]])), 1).tolist() == [2.0]  # logit[1] - logit[0]
    gated = SimpleNamespace(
        score=torch.tensor([0.25, 0.75]), logits=torch.tensor([0.25, 0.75]), rewards=torch.zeros(2, 19)
    )
    assert reward_values(gated, 2).tolist() == [0.25, 0.75]
    with pytest.raises(ModelError, match="3 values per pair in `logits`"):
        reward_values(SimpleNamespace(logits=torch.zeros(2, 3)), 2)


# ------------------------------------------------------------------------------------ refusals


def test_causal_lm_is_refused_naming_field_and_path(tiny_path: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        build_scorer(RewardSection(kind="reward_model", model=tiny_path), tiny_path, str(tmp_path))
    assert "reward.model" in str(e.value) and tiny_path in str(e.value) and "LlamaForCausalLM" in str(e.value)


def test_bare_encoder_is_refused() -> None:
    minilm = resolve_model_path(MINILM_MODEL)  # BertModel: no classification head at all
    with pytest.raises(ModelError, match=r"reward\.model: .*not a sequence-classification reward model.*BertModel"):
        RewardModelScorer(minilm)


@pytest.mark.parametrize(
    "sets",
    [["reward.kind=reward_model"], ["reward.kind=reward_model", "reward.model=initial"]],
    ids=["default", "explicit"],
)
def test_initial_is_refused_for_reward_model_when_the_config_loads(sets: list[str]) -> None:
    with pytest.raises(
        ConfigError,
        match=r"--set reward\.\w+=\w+: reward: .*model is 'initial', the policy: a causal LM, not a reward model",
    ):
        load_config(None, sets, preset="tiny")


def test_combined_component_refusal_names_the_component(tiny_path: str, llama_rm: str, tmp_path: Path) -> None:
    components = (
        ScorerSpec(kind="wellformed", weight=0.5),
        ScorerSpec(kind="reward_model", model=tiny_path, weight=0.5),
    )
    with pytest.raises(ModelError, match=r"^reward\.components\.1\.model: "):
        build_scorer(RewardSection(kind="combined", model=llama_rm, components=components), tiny_path, str(tmp_path))
    inherit = [
        {"kind": "wellformed", "weight": 0.5},
        {"kind": "reward_model", "weight": 0.5},
    ]  # no model: reward.model, 'initial'
    with pytest.raises(ConfigError, match=r"reward: .*model \(of components\.1\) is 'initial'"):
        load_config(None, ["reward.kind=combined", f"reward.components={json.dumps(inherit)}"], preset="tiny")


def test_custom_code_needs_trust_remote_code(gated_rm: str) -> None:
    assert "AutoModelForSequenceClassification" in json.loads((Path(gated_rm) / "config.json").read_text())["auto_map"]
    with pytest.raises(ModelError, match=r"reward\.model: .* custom code .*model\.trust_remote_code: true"):
        RewardModelScorer(gated_rm)


# -------------------------------------------------------------------------------------- device


def test_device_outside_ray_is_cpu() -> None:
    assert assigned_device() == "cpu"


@pytest.mark.ray
def test_device_in_a_ray_actor_without_gpus_is_cpu(ray_session) -> None:
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task that asked for no GPU: the device comes
    from what Ray assigned, not from what torch can see."""
    task = ray_session.remote(assigned_device).options(num_cpus=0.1, num_gpus=0)
    assert ray_session.get(task.remote(), timeout=120) == "cpu"


def test_device_with_a_ray_gpu_needs_cuda_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU assigned by Ray -> cuda; with a CPU-only torch that is an error that says so."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_accelerator_ids=lambda: {"GPU": ["0"]}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="Ray assigned this reward actor a GPU but torch sees no CUDA device"):
        assigned_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert assigned_device() == "cuda"


def test_token_budget_batches_group_similar_lengths_within_the_budget() -> None:
    from actors.reward import token_budget_batches

    lengths = [5, 300, 40, 41, 290, 7, 6, 1000]
    batches = token_budget_batches(lengths, budget=700, max_count=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every pair once
    assert batches == [[7], [1, 4], [3, 2, 5], [6, 0]]  # longest first; 1000 alone (over the budget)
    for b in batches[1:]:
        assert len(b) * lengths[b[0]] <= 700 and len(b) <= 3 and lengths[b[0]] == max(lengths[i] for i in b)
    assert token_budget_batches([], 100, 4) == []
    assert token_budget_batches([10] * 5, 100, 1) == [[0], [1], [2], [3], [4]]


def test_sorted_batches_score_as_the_model_does_alone(llama_rm: str) -> None:
    """Length-sorted token-budget batches: each score is the model's logit for the pair alone, in input order."""
    prompts = [p * k for k in (1, 5, 2) for p in PROMPTS]
    responses = [r * k for k in (3, 1, 6) for r in RESPONSES]
    scorer = RewardModelScorer(llama_rm, batch_size=4, max_length=256, batch_tokens=400)
    alone = [scorer.score([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert scorer.score(prompts, responses) == pytest.approx(alone, abs=1e-4)
