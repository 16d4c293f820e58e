"""The torch side of the online solver's step (actors.trainer.PolicyTrainer.train_step): sequences
padded into tensors, log-probs of the sampled completion tokens, and the optimizer that persists
across steps and commits.

Log-probs. A sequence is the engine's prompt ids followed by the ids it sampled (`StepBatch`);
the policy reads it whole (right padding, attention mask) and the log-prob of completion token k
is read from the logits at the position before it, log_softmax(logits / temperature)[token]. The
policy-gradient losses use the sampling temperature (the distribution the engine sampled from, as
TRL's GRPOTrainer and verl do); online DPO uses temperature 1 (DPO's implicit reward is about the
model itself, as TRL's DPOTrainer computes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from eva.config import OnlineSection, SolverSection


@dataclass(frozen=True)
class Padded:
    """B sequences as tensors: `input_ids`/`attention_mask` [B, L] (right-padded), `positions` [B, T]
    (where each completion token's logits sit: the position before it), `mask` [B, T] (1 on
    completion tokens), `targets` [B, T] (the completion token ids); T = the longest completion."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def pad_sequences(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], device: torch.device | str = "cpu"
) -> Padded:
    """Prompt + completion of each sequence, right-padded (pad id 0, masked out) into `Padded`."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(not p for p in prompts):
        raise ValueError("a sequence has an empty prompt: its first completion token has no logits before it")
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    width = max((len(c) for c in completions), default=0)
    b = len(prompts)
    input_ids = torch.zeros(b, length, dtype=torch.long)
    attention = torch.zeros(b, length, dtype=torch.long)
    positions = torch.zeros(b, width, dtype=torch.long)
    targets = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids = [*p, *c]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        if c:
            positions[i, : len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c))
            targets[i, : len(c)] = torch.tensor(list(c))
            mask[i, : len(c)] = 1
    return Padded(*(t.to(device) for t in (input_ids, attention, positions, targets, mask)))


def completion_logprobs(model: torch.nn.Module, batch: Padded, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token | tokens before it) of every completion token [B, T] (0 at padding); carries the
    gradient when called with grad enabled. The LM head runs only over the span of positions that hold
    some completion's logits (transformers' `logits_to_keep`), not over the prompts: with a vocabulary
    of 49k, logits are most of the activation memory."""
    real = batch.positions[batch.mask.bool()]
    lo = int(real.min()) if real.numel() else 0
    hi = int(real.max()) + 1 if real.numel() else 1
    keep = torch.arange(lo, hi, device=batch.input_ids.device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep).logits
    vocab = logits.shape[-1]
    index = (batch.positions - lo).clamp(0, hi - lo - 1)  # padding points anywhere in the span: masked below
    picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, vocab)).float()
    if temperature != 1.0:
        picked = picked / temperature
    logp = torch.log_softmax(picked, dim=-1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return logp * batch.mask


@dataclass
class OnlineState:
    """What the online solver keeps across steps and commits (in the trainer actor).

    `reference`: the frozen KL / DPO reference of the current iteration; `served`: a frozen copy of
    the weights the engines serve while they lag behind the trainer (sync_every > 1, clip loss)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    iteration: int | None = None
    reference: torch.nn.Module | None = None
    served: torch.nn.Module | None = None

    def state(self) -> dict[str, Any]:
        """What `save` writes (and `restore` reads): the step, the optimizer's and the scheduler's state."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])


def make_online_state(model: torch.nn.Module, solver: SolverSection, online: OnlineSection) -> OnlineState:
    """AdamW over the trainable parameters (solver.learning_rate, solver.weight_decay; TRL's betas
    and eps) and a constant rate after online.lr_warmup_steps of linear warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=solver.learning_rate, weight_decay=solver.weight_decay)
    warmup = online.lr_warmup_steps

    def factor(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else 1.0

    return OnlineState(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor))


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    """`items` in consecutive chunks of at most `size`."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
