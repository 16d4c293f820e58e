"""The online form of eva (issue 15): the pure core of a solver that learns from every minibatch.

Every step the engines sample a group of n responses per prompt of a minibatch, the scorer rates
them, and that group is both the training signal and the prompt's informativeness estimate:

- `eva.online.algos`: advantage estimators (`rloo`, `grpo`) and policy losses (`reinforce`, `clip`,
  with the k3 KL penalty) by name, in the manner of verl's `core_algos`: tensors in, tensors out.
- `eva.online.buffer`: the prioritized generative buffer the minibatches are drawn from (priority =
  informativeness of the prompt's last group, decayed by staleness, mixed with seed prompts, a
  warm-up on seeds, optional admission gating of children), serializable to a plain table.
- Online DPO needs no new code here: its pairs are `eva.pairs.build_pairs` over the step's groups
  (best vs worst response of each group, ties and too-small margins dropped, `PreferencePair`s),
  trained by the same TRL `DPOTrainer` as the offline solver. Informativeness is `eva.metrics`
  (`maxmean`, `learnability`, ...) applied to each group's reward vector.

Nothing here imports ray, vllm or trl; `algos` imports torch (pure functions, no process state).

Why these losses are eva's own code and not TRL's online trainers (TRL 1.16.0, paths relative to
site-packages/trl/). eva generates in its own vLLM engine actors, scores in its own scorer actors,
picks the prompts of each minibatch itself (this buffer, which the creator changes between
minibatches) and pushes weights to the engines itself. TRL's online trainers own all of that:

- `GRPOTrainer` (trainer/grpo_trainer.py) does not fit. `_prepare_inputs` (l.1522-1551) generates
  and scores inside the training step, on prompts its own dataloader yields through `RepeatSampler`
  (`_get_train_sampler`, l.1280): the trainer, not eva's buffer, chooses every minibatch, and
  `train()` owns the step loop (eva commits every K steps and evolves in between). Its one hook for
  outside generation, the experimental `rollout_func` (type l.130, documented l.258-265, called
  l.2200-2216), runs inside the trainer process: the trainer actor would call the engine actors
  (the pipeline no longer drives the actors), rewards would still come from the trainer's own
  `reward_funcs` (`_calculate_rewards` l.1579, called l.2753) unless smuggled through `extra_fields`
  (l.2742-2748), and with `use_vllm` it syncs weights to its own engine (l.2202-2205, l.1105-1135).
  The maths is one 270-line method (`_compute_loss`, l.3020-3294) over a dict that only
  `_generate_and_score_completions` builds. What we reproduce from it: group advantages l.2765-2787
  (mean, Bessel-corrected `nanstd` trainer/utils.py:1021, `scale_rewards="none"` = Dr. GRPO), the
  clipped ratio l.3113-3120, the k3 KL l.3098-3102 added per token l.3149-3150, the aggregations
  l.3153-3170 (`grpo` = seq-mean-token-mean, `bnpo` = token-mean, `dr_grpo` = seq-mean-token-sum-norm).
- `RLOOTrainer` (trainer/rloo_trainer.py) does not fit: no rollout hook at all, `_generate`
  tokenizes and generates itself (l.1404-1412) inside the same `_prepare_inputs` loop
  (l.1091-1114). Its leave-one-out baseline (l.1682-1690) is our `rloo`; it applies KL as a reward
  penalty with the first-order estimator (l.1664-1673) and clips a sequence-level ratio of summed
  log-probs (l.1822-1833); our `reinforce` is the on-policy form (ratio 1 at the sampled weights).
- `OnlineDPOTrainer` (experimental/online_dpo/online_dpo_trainer.py) does not fit: `training_step`
  generates exactly two completions per prompt itself (l.1169-1174), scores them with its reward
  functions (l.1213) and takes the better of the two as chosen (l.1223): no group, no outside
  rollouts. `DPOTrainer` (trainer/dpo_trainer.py) does fit: it trains on whatever pairs it is given,
  which is how eva's offline solver already uses it (actors/trainer.py); a per-step online DPO keeps
  one optimizer across steps by passing it in (`optimizers=`, dpo_trainer.py l.529), since every
  `train()` call otherwise builds a fresh one.
"""
