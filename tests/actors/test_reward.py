"""Reward scorers on real engines: the tiny random model as judge (vLLM), MiniLM, a tiny HF reward
model, user functions; the slow test checks the CPU default's accuracy on the labelled set."""

from __future__ import annotations

import json
import math
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from actors.models import DEFAULT_MODEL, MINILM_MODEL, TINY_MODEL, resolve_model_path
from actors.reward import (
    CombinedScorer,
    FunctionScorer,
    JudgeScorer,
    RelevanceScorer,
    RewardActor,
    RewardModelScorer,
    Scorer,
    WellformedScorer,
    build_scorer,
    judge_engine,
    label_token_ids,
)
from eva.config import RewardSection, ScorerSpec, load_config
from eva.scorers import SCORER_KINDS

PROMPTS = ["What is 2 + 2?", "Name a color.", "Why is the sky blue?", "How do I boil an egg?"]
RESPONSES = ["2 + 2 is 4.", "Blue.", "Sunlight scatters off air molecules, blue the most.", "Bananas are yellow and"]


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return resolve_model_path(TINY_MODEL)


@pytest.fixture(scope="module")
def tiny_engine(tiny_path: str, tmp_path_factory: pytest.TempPathFactory):
    """One vLLM engine on the tiny random model for the whole module (starting one takes seconds)."""
    return judge_engine(tiny_path, 256, str(tmp_path_factory.mktemp("judge")))


@pytest.fixture(scope="module")
def minilm() -> RelevanceScorer:
    return RelevanceScorer(resolve_model_path(MINILM_MODEL))


# ------------------------------------------------------------------------------------ judge


def test_judge_on_tiny_model_is_finite_continuous(tiny_engine) -> None:
    judge = JudgeScorer(tiny_engine, "fewshot", 256)
    scores = judge.score(PROMPTS * 2, RESPONSES + RESPONSES[::-1])
    assert len(scores) == 8 and all(math.isfinite(s) and 1.0 <= s <= 9.0 for s in scores)
    assert len(set(scores)) >= 6  # continuous: an expectation, not a parsed digit
    assert any(s != round(s) for s in scores)
    yes = JudgeScorer(tiny_engine, "yesno", 256).score(PROMPTS, RESPONSES)
    assert all(0.0 < s < 1.0 for s in yes) and len(set(yes)) == 4


def test_judge_is_batch_independent(tiny_engine) -> None:
    judge = JudgeScorer(tiny_engine, "fewshot", 256)
    batch = judge.score(PROMPTS, RESPONSES)
    alone = [judge.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert alone == batch  # exact: per-request computation, fp32 judge


def test_judge_cache_holds_one_step_and_scores_as_a_cache_of_full_sequences(
    tiny_engine, tiny_path, tmp_path, ray_session
) -> None:
    """A judge request ends in the step that prefills it, so its CPU cache holds one step's 4096-token
    budget (32 blocks, a partial block for each of its 8 sequences, the block vLLM keeps empty: 41), and
    it scores what an engine with room for 8 full-length sequences scores (in its own process: two
    in-process vLLM engines cannot share one)."""

    def full_cache_scores(path: str, prompts: list[str], responses: list[str], work: str) -> tuple[int, list]:
        from actors.engine import GenerationEngine
        from actors.reward import JudgeScorer
        from eva.config import ModelSection

        full = GenerationEngine(path, ModelSection(dtype="float32", max_model_len=768, max_num_seqs=8), work)
        return full.ready()["kv_cache_tokens"], JudgeScorer(full, "fewshot", 256).score(prompts, responses)

    assert tiny_engine.ready()["kv_cache_tokens"] == 41 * 128
    prompts, responses = PROMPTS * 6, [r * (1 + i % 5) for i, r in enumerate(RESPONSES * 6)]
    got = JudgeScorer(tiny_engine, "fewshot", 256).score(prompts, responses)
    remote = ray_session.remote(num_cpus=0.5)(full_cache_scores)
    tokens, want = ray_session.get(remote.remote(tiny_path, prompts, responses, str(tmp_path)), timeout=600)
    assert tokens == (8 * 6 + 1) * 128 and got == want


def test_judge_clips_long_pairs_and_keeps_its_instructions(tiny_engine) -> None:
    judge = JudgeScorer(tiny_engine, "fewshot", 64)
    text = judge.render("why " * 500, "because " * 500)
    assert text.endswith("Score: ") and len(tiny_engine.tokenizer.encode(text)) < 64 + 250
    assert math.isfinite(judge.score(["why " * 500], ["because " * 500])[0])


def test_judge_rejects_unknown_template_and_multi_token_labels(tiny_engine) -> None:
    with pytest.raises(ValueError, match="unknown judge template 'nope'.*fewshot"):
        JudgeScorer(tiny_engine, "nope")
    with pytest.raises(ValueError, match="'10' is 2 tokens"):
        label_token_ids(tiny_engine.tokenizer, [("10", 10.0)])


def test_tiny_preset_reward_builds_and_scores(tiny_engine, tiny_path: str, tmp_path: Path) -> None:
    reward = load_config(preset="tiny").reward
    scorer = build_scorer(reward, TINY_MODEL, str(tmp_path), engines={tiny_path: tiny_engine})
    assert isinstance(scorer, CombinedScorer)
    assert [s.name for _, s in scorer.components] == ["judge", "relevance", "wellformed"]
    report = scorer.score_with_report(PROMPTS, RESPONSES)
    assert report.nonfinite == 0 and all(0.0 <= s <= 1.0 for s in report.scores)
    assert len(set(report.scores)) == 4


# ----------------------------------------------------------------------------- wellformed


def test_wellformed_scorer_maps_pairs() -> None:
    assert WellformedScorer().score(["Name a city.", "Name a city."], ["Paris.", ""]) == [0.25, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        WellformedScorer().score(["a"], [])


# ------------------------------------------------------------------------------- relevance


def test_relevance_prefers_on_topic_and_is_batch_independent(minilm: RelevanceScorer) -> None:
    prompts = ["How do I boil an egg?"] * 2
    on, off = minilm.score(
        prompts, ["Put the egg in boiling water for about eight minutes.", "The stock market fell today."]
    )
    assert -1.0 <= off < on <= 1.0 and on - off > 0.2
    assert minilm.score(prompts[:1], ["The stock market fell today."]) == [off]
    assert minilm.unit(-0.3) == 0.0 and minilm.unit(0.4) == 0.4
    assert minilm.score(["Hi?"], ["  "]) == [0.0]


# ----------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init Llama sequence classifier with the SmolLM2 tokenizer (it has a chat template)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("rm")
    config = AutoConfig.from_pretrained(tiny_path)
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(out)
    return str(out)


def test_reward_model_scores_batched_with_chat_template(tiny_reward_model: str) -> None:
    scorer = RewardModelScorer(tiny_reward_model, batch_size=3, max_length=64)
    ids = scorer._encode("why " * 100, "because " * 100)["input_ids"]
    text = scorer.tokenizer.decode(ids)
    assert len(ids) <= 64 and "<|im_start|>assistant\nbecause because" in text
    scores = scorer.score(PROMPTS + ["why " * 100], RESPONSES + ["because " * 100])  # last one truncated
    assert len(scores) == 5 and all(math.isfinite(s) for s in scores) and len(set(scores)) == 5
    alone = RewardModelScorer(tiny_reward_model, batch_size=1, max_length=64).score(PROMPTS, RESPONSES)
    assert alone == pytest.approx(scores[:4], abs=1e-4)  # padding changes only the last float bits
    assert scorer.unit(0.0) == 0.5


# ---------------------------------------------------------------------------- user function


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "eva_test_user_rewards.py").write_text(
        textwrap.dedent("""
        def length(prompts, responses):
            return [len(r) / 100 for r in responses]
        def short(prompts, responses):
            return [1.0]
        def words(prompts, responses):
            return ["many" for r in responses]
        def blowup(prompts, responses):
            return [float("inf"), float("nan")] + [0.5] * (len(responses) - 2)
        not_callable = 3
    """)
    )
    (tmp_path / "eva_test_broken_rewards.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "eva_test_user_rewards"


def test_function_scorer_calls_user_code(user_module: str) -> None:
    assert FunctionScorer(f"{user_module}:length").score(["p", "q"], ["abc", ""]) == [0.03, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'module:function'"),
        ("eva_no_such_module_xyz:f", "cannot import module 'eva_no_such_module_xyz'"),
        ("eva_test_broken_rewards:f", "cannot import module 'eva_test_broken_rewards'.*boom at import"),
        ("eva_test_user_rewards:missing", "has no callable 'missing'"),
        ("eva_test_user_rewards:not_callable", "has no callable 'not_callable'"),
    ],
)
def test_function_scorer_load_errors_name_the_spec(user_module: str, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"reward function '{spec}'.*{message}"):
        FunctionScorer(spec)


def test_function_scorer_call_errors_and_nonfinite(user_module: str) -> None:
    with pytest.raises(ValueError, match=r"'eva_test_user_rewards:short' returned 1 scores for 2 pairs"):
        FunctionScorer(f"{user_module}:short").score(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match=r"'eva_test_user_rewards:words' returned a non-number"):
        FunctionScorer(f"{user_module}:words").score(["p"], ["a"])
    report = FunctionScorer(f"{user_module}:blowup").score_with_report(["p"] * 3, ["a", "b", "c"])
    assert [math.isnan(s) for s in report.scores] == [True, True, False] and report.nonfinite == 2


# --------------------------------------------------------------------------------- combined


class Fixed(Scorer):
    """A scorer with a known raw scale returning fixed values (to check the arithmetic by hand)."""

    def __init__(self, values: list[float], lo: float, hi: float) -> None:
        self.values, self.lo, self.hi = values, lo, hi

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.values[: len(prompts)]


def test_combined_weighting_by_hand() -> None:
    judge_like = Fixed([5.0, 9.0, 1.0, 3.0], lo=1.0, hi=9.0)  # unit: (x - 1) / 8 -> .5, 1, 0, .25
    cosine_like = Fixed([0.5, -0.2, 0.8, math.nan], lo=0.0, hi=1.0)  # unit: clip at 0 -> .5, 0, .8, nan
    scorer = CombinedScorer([(0.3, judge_like), (0.1, cosine_like), (0.6, WellformedScorer())])
    prompts = ["Name a city."] * 4
    responses = ["Paris is a city.", "Paris.", "go go go go go go.", "Paris is a city."]  # wellformed 1, .25, .25, 1
    report = scorer.score_with_report(prompts, responses)
    expected = [0.3 * 0.5 + 0.1 * 0.5 + 0.6 * 1.0, 0.3 * 1.0 + 0.0 + 0.6 * 0.25, 0.0 + 0.1 * 0.8 + 0.6 * 0.25]
    assert report.scores[:3] == pytest.approx(expected)
    assert math.isnan(report.scores[3]) and report.nonfinite == 1  # reported, not replaced
    assert "0.3*scorer + 0.1*scorer + 0.6*wellformed" in scorer.describe()


def test_every_scorer_kind_of_the_reward_actor_has_one_scorer_class() -> None:
    classes = [cls for cls in Scorer.__subclasses__() if cls.__module__ == "actors.reward"]
    in_actor = [name for name, kind in SCORER_KINDS.items() if kind.actor]  # task is graded in the rollouts
    # the class's name is its kind
    assert sorted(cls.name for cls in classes) == sorted(in_actor) and "task" not in in_actor


def test_reward_actor_counts_pairs_and_nonfinite(user_module: str, tmp_path: Path) -> None:
    reward = RewardSection(kind="function", function=f"{user_module}:blowup")
    actor = RewardActor(reward, TINY_MODEL, str(tmp_path))
    scores = actor.score(["p"] * 3, ["a", "b", "c"])
    assert scores[2] == 0.5 and math.isnan(scores[0])
    info = actor.info()
    assert info["kind"] == "function" and info["pairs_scored"] == 3 and info["nonfinite"] == 2
    assert info["scorer"] == f"function({user_module}:blowup)"


def test_combined_function_component_falls_back_to_section_function(user_module: str, tmp_path: Path) -> None:
    reward = RewardSection(
        kind="combined", function=f"{user_module}:length", components=(ScorerSpec(kind="function", weight=2.0),)
    )
    assert build_scorer(reward, TINY_MODEL, str(tmp_path)).score(["p"], ["abcd"]) == pytest.approx([0.08])


# ------------------------------------------------------------------------ default accuracy


@pytest.mark.slow
def test_default_scorer_accuracy(tmp_path: Path) -> None:
    """The CPU default (RewardSection()) on SmolLM2-135M ranks good above bad on >= 85% of the set."""
    triples = [
        json.loads(line)
        for line in (resources.files("eva.data") / "reward_eval.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert len(triples) >= 48
    scorer = build_scorer(RewardSection(), resolve_model_path(DEFAULT_MODEL), str(tmp_path))
    prompts = [t["prompt"] for t in triples]
    good = scorer.score(prompts, [t["good"] for t in triples])
    bad = scorer.score(prompts, [t["bad"] for t in triples])
    assert all(math.isfinite(x) for x in good + bad)
    accuracy = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g, b in zip(good, bad, strict=True)) / len(triples)
    assert accuracy >= 0.85, f"pairwise accuracy {accuracy:.3f}"
