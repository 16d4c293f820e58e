"""The online solver's step in the trainer actor, on the tiny model: one step moves the weights, the
loss is the hand-computed one on a 2-prompt batch (and the same in one pass or in micro-batches),
the DPO reference is the iteration's start policy, a lagging engine's copy gives the clip ratio,
and a trainer restored from a saved policy (optimizer and schedule included) takes the same next
step as one that never stopped. Last, through a real engine: the token ids the engine returns are
the ones the trainer scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from actors.online_step import completion_logprobs, pad_sequences
from actors.trainer import PolicyTrainer
from eva.config import OnlineSection, SolverSection
from eva.iteration import POLICY_OPTIMIZER
from eva.online.batch import StepBatch, step_batch
from eva.types import Prompt, SampledTokens, ScoredPrompt

T = 0.7  # sampling temperature: the policy-gradient log-probs are taken at it
REWARDS = ((1.0, 0.0), (0.25, 0.75))  # rloo advantages: (1, -1) and (-0.5, 0.5)


def make(path: str, tmp_path: Path, dtype: str = "float32", solver: dict | None = None, **online) -> PolicyTrainer:
    s = SolverSection(**{"learning_rate": 1e-3, "temperature": T, "max_new_tokens": 8, **(solver or {})})
    return PolicyTrainer(path, path, s, dtype, str(tmp_path / "work"), seed=0, online=OnlineSection(**online))


def groups(trainer: PolicyTrainer, step: int, rewards=REWARDS) -> list[ScoredPrompt]:
    """Two prompts (one changes with the step), two responses each, as the engine would return them."""
    tok = trainer.tokenizer

    def prompt(text: str) -> tuple[int, ...]:
        return tuple(
            tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
        )

    def answer(text: str) -> tuple[int, ...]:
        return (*tok.encode(text, add_special_tokens=False), tok.eos_token_id)

    out = []
    for question, answers, r in zip(
        (f"What is {step} plus 2?", "What is 3 plus 3?"),
        (("4", "5 is it"), ("6", "six, I think")),
        rewards,
        strict=True,
    ):
        tokens = SampledTokens(prompt(question), tuple(answer(a) for a in answers))
        out.append(ScoredPrompt(Prompt.seed(question), answers, r, tokens=tokens))
    return out


def batch(trainer: PolicyTrainer, step: int, iteration: int = 1, rewards=REWARDS) -> StepBatch:
    return step_batch(step, iteration, groups(trainer, step, rewards), min_margin=0.0)


def weights(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


def by_hand(trainer: PolicyTrainer, b: StepBatch, temperature: float) -> list[float]:
    """Summed log-prob of each sequence's completion, one unpadded forward per sequence."""
    sums = []
    with torch.no_grad():
        for prompt, completions in zip(b.prompt_ids, b.completion_ids, strict=True):
            for completion in completions:
                ids = torch.tensor([[*prompt, *completion]])
                logits = trainer.policy(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
                logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])
                sums.append(float(logp.sum()))
    return sums


def test_one_step_moves_every_weight_and_steps_are_counted(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path)
    assert trainer.start_online() == 0
    before = weights(trainer)
    stats = trainer.train_step(batch(trainer, 0))
    after = weights(trainer)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert stats["step"] == 0 and stats["lr"] == 1e-3 and stats["signal_sequences"] == 4
    with pytest.raises(RuntimeError, match="at step 1, the batch is for step 0"):
        trainer.train_step(batch(trainer, 0))


def test_rloo_loss_equals_the_hand_computation_in_one_pass_and_in_micro_batches(tiny_model_path, tmp_path):
    """-mean_b(A_b * log pi_T(y_b | x_b)) with A = (1, -1, -0.5, 0.5): the RLOO estimator."""
    one = make(tiny_model_path, tmp_path / "one", algorithm="rloo", micro_batch=16)
    one.start_online()
    b = batch(one, 0)
    s = by_hand(one, b, T)
    expected = -(1.0 * s[0] - 1.0 * s[1] - 0.5 * s[2] + 0.5 * s[3]) / 4
    assert one.train_step(b)["loss"] == pytest.approx(expected, rel=1e-5)
    micro = make(tiny_model_path, tmp_path / "micro", algorithm="rloo", micro_batch=1)
    micro.start_online()
    assert micro.train_step(b)["loss"] == pytest.approx(expected, rel=1e-5)
    # the accumulated gradient is the one-pass gradient (Adam's first step would amplify rounding)
    grads = [(p.grad, q.grad) for p, q in zip(one.policy.parameters(), micro.policy.parameters(), strict=True)]
    assert all(g is not None and h is not None and torch.allclose(g, h, rtol=1e-3, atol=1e-6) for g, h in grads)
    assert any(float(g.abs().max()) > 1e-3 for g, _ in grads if g is not None)


def test_a_tied_group_trains_nothing_and_the_token_mean_counts_every_token(tiny_model_path, tmp_path):
    """Group 2 ties (no advantage, no KL): it is left out of the passes, yet its tokens still count in
    token-mean's divisor: the loss is group 1's token sum over all four completions' tokens."""
    trainer = make(tiny_model_path, tmp_path, algorithm="rloo", agg="token-mean")
    trainer.start_online()
    b = batch(trainer, 0, rewards=((1.0, 0.0), (0.5, 0.5)))
    s = by_hand(trainer, b, T)
    tokens = sum(len(c) for group in b.completion_ids for c in group)
    stats = trainer.train_step(b)
    assert stats["trained_sequences"] == 2 and stats["signal_sequences"] == 2
    assert stats["loss"] == pytest.approx(-(s[0] - s[1]) / tokens, rel=1e-5)


def test_grpo_clip_at_the_sampling_weights_has_ratio_one_and_no_kl(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, algorithm="grpo", kl_beta=0.1)
    trainer.start_online()
    first = trainer.train_step(batch(trainer, 0))
    assert first["ratio_mean"] == 1.0 and first["kl"] == 0.0 and first["clip_low"] == first["clip_high"] == 0.0
    assert abs(first["loss"]) < 1e-6  # group-normalized advantages sum to 0 per group; ratio 1
    second = trainer.train_step(batch(trainer, 1))  # same iteration: the reference is the start policy
    assert second["kl"] > 0


def test_online_dpo_reference_is_the_start_policy_of_each_iteration(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, algorithm="online_dpo", solver={"beta": 0.1})
    trainer.start_online()
    first = trainer.train_step(batch(trainer, 0, iteration=1))
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["pairs"] == 2
    second = trainer.train_step(batch(trainer, 1, iteration=1))
    assert second["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the policy moved, the reference did not
    third = trainer.train_step(batch(trainer, 2, iteration=2))  # a new iteration: pi_{t-1} is the reference
    assert third["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_lagging_engines_give_the_clip_ratio_from_the_pushed_copy(tiny_model_path, tmp_path):
    trainer = make(tiny_model_path, tmp_path, algorithm="grpo", sync_every=2, steps_per_commit=4)
    trainer.start_online()
    ratios = [trainer.train_step(batch(trainer, s))["ratio_mean"] for s in range(3)]
    assert ratios[0] == 1.0 and ratios[2] == 1.0  # the engines serve the trainer's weights at steps 0, 2
    assert ratios[1] != pytest.approx(1.0, abs=1e-7)  # step 1 was sampled by the weights before step 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_trainer_restored_from_a_saved_policy_takes_the_same_next_step(tiny_model_path, tmp_path, dtype):
    """Saved after two steps (weights, fp32 masters, AdamW moments, the warm-up schedule's position),
    restored into a fresh trainer: its third step equals the uninterrupted trainer's bit for bit. The
    same folder without the optimizer state gives another step, so the comparison can fail."""
    online = dict(algorithm="rloo", lr_warmup_steps=4)
    uninterrupted = make(tiny_model_path, tmp_path / "a", dtype, **online)
    uninterrupted.start_online()
    for s in range(2):
        uninterrupted.train_step(batch(uninterrupted, s))
    saved = tmp_path / "policy"
    uninterrupted.save(str(saved))
    assert (saved / POLICY_OPTIMIZER).is_file()
    third = uninterrupted.train_step(batch(uninterrupted, 2))
    want = weights(uninterrupted)

    restored = make(str(saved), tmp_path / "b", dtype, **online)
    assert restored.start_online(str(saved)) == 2
    again = restored.train_step(batch(restored, 2))
    got = weights(restored)
    assert again["lr"] == third["lr"] == pytest.approx(1e-3 * 3 / 5) and again["loss"] == third["loss"]
    assert all(torch.equal(want[k], got[k]) for k in want)

    (saved / POLICY_OPTIMIZER).unlink()
    fresh = make(str(saved), tmp_path / "c", dtype, **online)
    assert fresh.start_online(str(saved)) == 0
    fresh._online.step = 2  # type: ignore[union-attr]  # same step number, but new moments and schedule
    fresh.train_step(batch(fresh, 2))
    other = weights(fresh)
    assert any(not torch.equal(want[k], other[k]) for k in want)


@pytest.mark.ray
def test_the_engine_returns_the_tokens_it_sampled_and_the_trainer_scores_those(ray_session, tiny_model_path, tmp_path):
    """SamplingSpec(token_ids=True): the prompt ids are the chat template's, each response's ids decode
    to its text, and the trainer's completion log-probs at temperature 1 equal the engine's own
    log-probs of the same tokens (vLLM prompt_logprobs)."""
    from actors.engine import GenerationEngine, SamplingSpec
    from eva.config import ModelSection

    ray = ray_session
    model = ModelSection(path=tiny_model_path, dtype="float32", max_model_len=256)
    engine = ray.remote(num_cpus=0.5)(GenerationEngine).remote(tiny_model_path, model, str(tmp_path / "engine"))
    try:
        spec = SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_tokens=10, token_ids=True)
        out = ray.get(engine.generate.remote(["a"], ["Name a color."], [7], spec), timeout=300).generations[0]
        tokens = out.tokens
        assert tokens is not None and len(tokens.responses) == 3
        full = [[*tokens.prompt, *r] for r in tokens.responses]
        served = ray.get(engine.sequence_logprobs.remote(full), timeout=300)
    finally:
        ray.kill(engine)
    trainer = make(tiny_model_path, tmp_path)
    tok = trainer.tokenizer
    template = tok.apply_chat_template([{"role": "user", "content": "Name a color."}], add_generation_prompt=True)
    assert list(tokens.prompt) == template["input_ids"]
    assert [tok.decode(r, skip_special_tokens=True) for r in tokens.responses] == list(out.responses)
    padded = pad_sequences([tokens.prompt] * 3, list(tokens.responses))
    with torch.no_grad():
        mine = completion_logprobs(trainer.policy, padded)
    for i, r in enumerate(tokens.responses):
        engine_side = served[i][len(tokens.prompt) - 1 :]  # log-probs of the completion tokens
        assert mine[i, : len(r)].tolist() == pytest.approx(engine_side, abs=1e-4)
