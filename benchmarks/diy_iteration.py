"""One eva iteration done the DIY way: a single Python process, `transformers.generate`, the reward
computed with transformers, and TRL's DPOTrainer. The yardstick `benchmarks.vs_diy` times eva against.

    python -m benchmarks.diy_iteration --eva-run RUN_DIR --out DIR

Written the way a user would write it, top to bottom, one model object that generates and trains.
It does the work of eva's iteration 1 in RUN_DIR with the same settings (the run's config: n,
temperature, top_p, new-token limits, variants per prompt, sample fraction, DPO beta, learning rate,
batch size, max_length) on the same prompts:

  1. estimate: n responses for each seed prompt (iteration 0's prompts), rewarded;
  2. sample the k = ceil(sample_frac * |X|) prompts with the largest reward gap (max - min);
  3. evolve: `num_variants` rewrites of each, with eva's meta-prompts (same lengths of work);
  4. solve: n responses for each of the prompts eva trained on in that iteration, rewarded;
  5. pairs (best vs worst response) and one DPO round with as many pairs as eva's round had;
  6. save the policy.

The reward is the CPU default computed without vLLM: 0.3 x the few-shot SmolLM2 judge's expected
score (from the next-token logits of 1-9, mapped to [0, 1]) + 0.1 x MiniLM relevance + 0.6 x
well-formedness. Prints one JSON line with the timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.models import MINILM_MODEL, resolve_model_path
from actors.reward import RelevanceScorer
from eva.checkpoint import RunDir
from eva.evolve import render_meta_prompt
from eva.judge import JUDGE_TEMPLATES
from eva.wellformed import wellformed


def generate(
    model, tok, texts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int = 8
) -> list[list[str]]:
    """n sampled responses per user message, through the chat template."""
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    out = []
    for i in range(0, len(chats), batch_size):
        enc = tok(chats[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id,
            )
        texts_out = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out += [texts_out[j : j + n] for j in range(0, len(texts_out), n)]
    return out


class Reward:
    """The CPU default reward with plain transformers."""

    def __init__(self, judge_path: str) -> None:
        self.tok = AutoTokenizer.from_pretrained(judge_path)
        self.judge = AutoModelForCausalLM.from_pretrained(judge_path, dtype=torch.float32).eval()
        self.template = JUDGE_TEMPLATES["fewshot"]
        self.digits = [self.tok.encode(str(d), add_special_tokens=False)[0] for d in range(1, 10)]
        # RelevanceScorer sets torch's thread count (eva's actors take one thread each): keep the machine's
        # default here, or this whole process would run on one thread.
        self.relevance = RelevanceScorer(resolve_model_path(MINILM_MODEL), threads=torch.get_num_threads())

    def judge_scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = []
        for p, r in zip(prompts, responses, strict=True):  # one at a time: no padding effects, like eva's judge
            text = self.template.user.format(prompt=p, response=r) + self.template.suffix
            enc = self.tok(text, return_tensors="pt", truncation=True, max_length=1536)
            with torch.inference_mode():
                logits = self.judge(**enc).logits[0, -1, self.digits].float()
            expected = float((torch.softmax(logits, dim=0) * torch.arange(1, 10)).sum())
            scores.append((expected - 1) / 8)
        return scores

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        judge = self.judge_scores(prompts, responses)
        rel = self.relevance.score(prompts, responses)
        return [
            0.3 * j + 0.1 * max(c, 0.0) + 0.6 * wellformed(p, r)
            for j, c, p, r in zip(judge, rel, prompts, responses, strict=True)
        ]


def rollout(model, tok, reward: Reward, prompts: list[str], s) -> tuple[list[list[str]], list[list[float]]]:
    responses = generate(model, tok, prompts, s.n_responses, s.temperature, s.top_p, s.max_new_tokens)
    flat_p = [p for p, rs in zip(prompts, responses, strict=True) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    flat = reward(flat_p, flat_r)
    rewards, pos = [], 0
    for rs in responses:
        rewards.append(flat[pos : pos + len(rs)])
        pos += len(rs)
    return responses, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eva-run", type=Path, required=True, help="An eva run with iteration 1 committed.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    t_start = time.perf_counter()

    run = RunDir(args.eva_run)
    cfg = run.config()
    s, c = cfg.solver, cfg.creator
    buffer = run.iteration(1).buffer()
    seeds = [p.text for p in buffer.prompts(run.iteration(0).train_ids())]
    train_prompts = [p.text for p in buffer.prompts(run.iteration(1).train_ids())]
    eva_pairs = run.iteration(1).metrics().num_pairs

    policy_path = str(run.iteration(0).policy)
    tok = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    reward = Reward(policy_path)
    t_loaded = time.perf_counter()
    timings = {}

    # 1. estimate
    t0 = time.perf_counter()
    _, rewards = rollout(model, tok, reward, seeds, s)
    timings["estimate"] = time.perf_counter() - t0

    # 2. sample: largest reward gap first
    t0 = time.perf_counter()
    k = math.ceil(c.sample_frac * len(seeds))
    gaps = [max(r) - min(r) for r in rewards]
    parents = [seeds[i] for i in sorted(range(len(seeds)), key=lambda i: -gaps[i])[:k]]
    timings["sample"] = time.perf_counter() - t0

    # 3. evolve
    t0 = time.perf_counter()
    meta = [render_meta_prompt(c.operators[v % len(c.operators)], p) for p in parents for v in range(c.num_variants)]
    evolved = [rs[0].strip() for rs in generate(model, tok, meta, 1, c.temperature, c.top_p, c.max_new_tokens)]
    timings["evolve"] = time.perf_counter() - t0

    # 4. solve (on the prompts eva trained on, so both train on the same prompts)
    t0 = time.perf_counter()
    responses, rewards = rollout(model, tok, reward, train_prompts, s)
    timings["solve"] = time.perf_counter() - t0

    # 5. pairs + DPO
    t0 = time.perf_counter()
    rows = []
    for p, rs, rw in zip(train_prompts, responses, rewards, strict=True):
        best, worst = max(range(len(rs)), key=lambda i: rw[i]), min(range(len(rs)), key=lambda i: rw[i])
        if rw[best] - rw[worst] > s.min_margin:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": p}],
                    "chosen": [{"role": "assistant", "content": rs[best]}],
                    "rejected": [{"role": "assistant", "content": rs[worst]}],
                }
            )
    rows = (rows * (eva_pairs // max(len(rows), 1) + 1))[:eva_pairs]  # as many pairs (so steps) as eva's round
    from trl import DPOConfig, DPOTrainer

    dpo_args = DPOConfig(
        output_dir=str(args.out / "trl"),
        learning_rate=s.learning_rate,
        num_train_epochs=s.epochs,
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_length=s.max_length,
        beta=s.beta,
        loss_type=[s.loss_type],
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model).eval(),
        args=dpo_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.train()
    steps = trainer.state.global_step
    timings["train"] = time.perf_counter() - t0

    # 6. save
    t0 = time.perf_counter()
    model.to(torch.bfloat16).save_pretrained(args.out / "policy")
    tok.save_pretrained(args.out / "policy")
    timings["save"] = time.perf_counter() - t0

    end = time.perf_counter()
    print(
        "RESULT"
        + json.dumps(
            {
                "load_s": t_loaded - t_start,
                "iteration_s": end - t_loaded,
                "stages": timings,
                "steps": steps,
                "pairs": len(rows),
                "estimate_prompts": len(seeds),
                "evolved": len(evolved),
                "train_prompts": len(train_prompts),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
