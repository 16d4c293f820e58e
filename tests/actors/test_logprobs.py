"""The policy trained is the policy served (issue 18, item 5): per-token log-probs of the same token
sequences from the trainer (transformers, as it loads the model for training) and from a vLLM engine
agree, on the tiny Llama and on a tiny Gemma 2 whose attention and final logits are soft-capped
(with caps small enough that dropping them changes the numbers a lot)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.engine import GenerationEngine
from actors.trainer import PolicyTrainer, attention_implementation
from eva.config import ModelSection, SolverSection

pytestmark = pytest.mark.ray

TEXTS = ["What is the capital of France? Paris is the capital.", "Write a haiku about rain falling softly on leaves."]


def tiny_gemma2(tiny_model_path: str, out: Path) -> str:
    """A random-init Gemma 2 (hidden 64, 2 layers, head_dim 32) with caps of 1.0 (attention) and 2.0
    (final logits), the tiny model's tokenizer; float32."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=1024,
        max_position_embeddings=2048,
        attn_logit_softcapping=1.0,
        final_logit_softcapping=2.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():  # large attention logits, so that the cap bites
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20.0)
            layer.self_attn.k_proj.weight.mul_(20.0)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def compare(ray, path: str, tmp_path: Path) -> tuple[float, list[list[int]], PolicyTrainer]:
    """Largest |trainer - engine| log-prob over the tokens of TEXTS, the token ids, and the trainer."""
    model = ModelSection(path=path, dtype="float32", max_model_len=256)
    engine = ray.remote(num_cpus=0.5)(GenerationEngine).remote(path, model, str(tmp_path / "engine"))
    try:
        trainer = PolicyTrainer(path, path, SolverSection(), "float32", str(tmp_path / "trainer"), seed=0)
        ids = [trainer.tokenizer.encode(t) for t in TEXTS]
        served = ray.get(engine.sequence_logprobs.remote(ids), timeout=300)
    finally:
        ray.kill(engine)
    trained = trainer.sequence_logprobs(ids)
    assert [len(x) for x in served] == [len(x) for x in trained] == [len(x) - 1 for x in ids]
    gap = max(abs(a - b) for s, t in zip(served, trained, strict=True) for a, b in zip(s, t, strict=True))
    return gap, ids, trainer


def test_trainer_and_engine_logprobs_agree_on_the_tiny_llama(ray_session, tiny_model_path, tmp_path):
    assert attention_implementation(tiny_model_path, None) is None  # no cap: transformers' default kernel
    gap, _, _ = compare(ray_session, tiny_model_path, tmp_path)
    assert gap < 1e-3


def test_trainer_honours_gemma2_softcaps_as_the_engine_does(ray_session, tiny_model_path, tmp_path):
    path = tiny_gemma2(tiny_model_path, tmp_path / "gemma2")
    assert attention_implementation(path, None) == "eager"
    assert attention_implementation(path, "flex_attention") == "flex_attention"
    gap, ids, trainer = compare(ray_session, path, tmp_path)
    assert trainer.policy.config._attn_implementation == "eager"
    assert gap < 1e-3
    # what the trainer computed before: sdpa drops the attention cap, and the numbers move far apart
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    trainer.policy = sdpa
    dropped = trainer.sequence_logprobs(ids)
    eager = PolicyTrainer(path, path, SolverSection(), "float32", str(tmp_path / "t2"), seed=0).sequence_logprobs(ids)
    drift = max(abs(a - b) for s, t in zip(dropped, eager, strict=True) for a, b in zip(s, t, strict=True))
    assert drift > 50 * max(gap, 1e-4)
