"""The solver's training actor: one round of TRL preference optimization per iteration, pi_{t-1} -> pi_t.

It runs in its own process (the lead wraps it with `ray.remote`), never next to a vLLM engine: vLLM
rebinds torch threads in its process. Training is fp32 on CPU (bf16 training on CPU is slow or
unsupported in places). On a GPU it is mixed precision in `dtype` (bf16/fp16 autocast): weights the
optimizer updates stay fp32 masters (pure-bf16 AdamW would drop updates of lr ~1e-6, far below bf16's
resolution), weights it never updates (a LoRA base, a frozen reference) are held in `dtype`, which are
the same values at half the memory. Weights leave in `dtype` (`state_dict()` for weight sync, `save()`
for the iteration's policy/). One process uses one GPU: more would be DataParallel replicas, not sharding.

Reference model (DESIGN.md gotcha: TRL's `ref_model=None` reloads the reference from
`model.config._name_or_path` on disk, not from memory). We never let TRL pick it:
- full fine-tuning, `previous`: a frozen deep copy of the policy taken at the start of the round (=pi_{t-1});
- `initial`: pi_0 loaded from `initial_path`, frozen (full and LoRA): once and kept across rounds, or
  once per round when its log-probs are precomputed (below);
- LoRA, `previous`: TRL disables the adapter, i.e. uses the base weights. We merge the adapter after
  every round and start a fresh zero-initialized one, so the base *is* pi_{t-1} and no copy is needed;
- SimPO (TRL CPO) and ORPO are reference-free.
An explicit module in every case, so tests can read back exactly what TRL held (`reference_state`).

Precomputed reference log-probs (`solver.precompute_ref_log_probs`, the default; DPO family only):
TRL's constructor runs the reference over every pair once and the dataset carries the results
(`ref_chosen_logps`/`ref_rejected_logps`); we then drop the module (`_drop_reference`: TRL's attribute
and its accelerator's list of prepared modules) before the first step allocates gradients and Adam
states, so the round's peak does not hold the copy, and no step runs a reference forward. SmolLM2-135M
on CPU, one DPO round (20 pairs, batch 2, gradient checkpointing, `dtype` bf16; 4 pairs of runs):
peak PSS 3.61-3.70 -> 2.91-3.28 GB, 0.42-0.72 GB less (the copy is 0.54 GB). The reference forwards
are the same ones, moved: one pass before the first step instead of one per step of every epoch, so
one epoch costs the same (one thread: 113 s of CPU off, 118 s on, of which the pass 25 s and the
steps 92 s instead of 112 s) and E epochs save E-1 passes. With `initial`, pi_0 is then loaded from
disk for each round instead of cached across rounds: cached, it would sit through every round's
peak, the very copy precomputing frees; a load costs seconds. Without precomputing pi_0 is used at
every step, so it stays loaded. Numerics: the precompute batches the pairs in dataset order,
training batches them shuffled, and a batch's padded length can move a sequence's summed log-prob
by its last bit (the tiny model, second round: 2 of 16 precomputed values one ulp, 7.6e-6 at -113,
off the reference forward on the training batch; the rest equal). fp32 on CPU, precompute on vs
off: SmolLM2-135M (one round of 10 steps) identical losses and weights; the tiny model (2 rounds of
8 steps at lr 1e-3) within 4e-7 (losses) and 6e-7 (weights).

Master weights: the trainer keeps the policy's weights in fp32 across rounds and never rounds them;
the engines and policy/model.safetensors get them rounded to `dtype`. Rounding after every round (as
eva did before) drops every update below half a unit in the last place of `dtype` (bf16 at lr 5e-6:
most of a LoRA delta). Full fine-tuning: the fp32 parameters are the masters. LoRA: the base layers
hold the masters rounded to `dtype` (the base is pi_{t-1} as served, the reference of `previous`),
and the fp32 masters of the adapted weights live in host memory (`_merge_lora`). `save` writes the
masters to policy/master/ when `dtype` rounds them, so a resumed run continues from exactly the
weights an uninterrupted one holds.
"""

from __future__ import annotations

import copy
import gc
import importlib
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import ray
import torch

from actors import heap
from actors.busy import BusyLog, Span
from actors.models import assigned_device
from actors.online_step import OnlineState, Padded, chunks, completion_logprobs, make_online_state, pad_sequences
from eva.atomic import atomic_folder
from eva.checkpoint import is_committed
from eva.config import OnlineSection, SolverSection
from eva.iteration import POLICY_MASTERS, POLICY_OPTIMIZER
from eva.losses import loss_spec, trl_arguments
from eva.online.batch import StepBatch
from eva.results import TrainingDivergedError
from eva.seeding import derive_seed
from eva.types import PreferencePair

if TYPE_CHECKING:  # transformers is imported where it is used: importing this module stays light
    from transformers import PreTrainedModel

# The TRL classes of each loss family (eva.losses.Family): module, config, trainer, and the config
# arguments the family needs (CPO and ORPO want the raw prompt/chosen/rejected columns kept).
TRL_TRAINERS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "dpo": ("trl", "DPOConfig", "DPOTrainer", {}),
    "cpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer", {"remove_unused_columns": False}),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer", {"remove_unused_columns": False}),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
MASTERS = POLICY_MASTERS  # the fp32 masters inside a saved policy folder (eva.iteration owns the name)


class PolicyTrainer:
    """The policy under training. Plain class; Ray wraps it as an actor (`ray.remote(PolicyTrainer)`).

    `capture_reference=True` keeps a copy of the reference weights TRL used in the last round, for
    `reference_state()` (tests, audits); off by default because it costs one more copy of the model.
    """

    def __init__(
        self,
        policy_path: str,
        initial_path: str,
        solver: SolverSection,
        dtype: str,
        workdir: str,
        seed: int,
        *,
        capture_reference: bool = False,
        threads: int = 1,
        iteration: int | None = None,
        trust_remote_code: bool = False,
        online: OnlineSection | None = None,
    ) -> None:
        # One thread by default: two cores shared by every actor (DESIGN.md). The loop's stages run
        # one after another, so while this trains the engines are idle and it may take more.
        torch.set_num_threads(threads)
        heap.map_large_blocks()  # a round's freed activations and gradients go back at once (actors.heap)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from datasets.utils.logging import disable_progress_bar
        from transformers import AutoTokenizer

        disable_progress_bar()  # per-round dataset.map bars; the trainer prints one line per step instead
        self.solver = solver
        self.dtype = DTYPES[dtype]
        # On a GPU when Ray assigned one (not merely when the node has one); outside Ray, when torch sees one.
        self.gpu = assigned_device("trainer") == "cuda" if ray.is_initialized() else torch.cuda.is_available()
        self.workdir = Path(workdir)
        self.seed = seed
        self.initial_path = initial_path
        self.capture_reference = capture_reference
        self.trust_remote_code = trust_remote_code  # model.trust_remote_code: the model folder's own code
        self.tokenizer = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.policy: Any = self._load_model(policy_path)  # None while asleep (sleep, load)
        self._masters: dict[str, torch.Tensor] = {}  # LoRA: fp32 masters of the adapted weights (_merge_lora)
        self._load_masters(policy_path)
        # The iteration whose policy this actor holds (policy_path's). If Ray restarts the actor
        # (max_restarts) it comes back holding policy_path again, and calls that name a later
        # iteration fail instead of training on, saving or syncing the wrong policy.
        self.iteration = iteration
        self._progress: list[int] = [0, 0]  # [steps done, steps] of the round in progress (see progress())
        self._initial: torch.nn.Module | None = None  # pi_0, loaded on first use (reference: initial)
        self._reference: dict[str, torch.Tensor] | None = None
        self._diverged: str | None = None  # why the last round failed, when it left non-finite weights behind
        self.busy = BusyLog()
        self.online = online  # run.mode online: the online solver's settings (start_online, train_step)
        self._online: OnlineState | None = None
        self._sender: Any = None  # ray.weight_sync nccl/ipc/gloo: the trainer's end (send_weights)

    # --- public API -------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """Cheap call to wait on after starting the actor."""
        return {
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in self.policy.parameters()),
        }

    def train(self, pairs: list[PreferencePair], iteration: int, checkpoint_dir: str | None = None) -> dict[str, Any]:
        """One round of preference optimization on `pairs`; returns metrics (losses, steps, seconds).

        An empty pair list trains nothing (steps 0). Each round gets a fresh optimizer and the seed
        `seed + iteration`, so a resumed run repeats the round exactly.

        `checkpoint_dir` (with `solver.checkpoint_steps`): every that many optimizer steps the round
        saves a step checkpoint there (weights, optimizer, scheduler, RNG states, data position;
        the last one only), and a round started on a folder that holds one continues from it: the
        same round, ending where an uninterrupted one ends. The folder belongs to this iteration.
        """
        self._expect(iteration - 1, "train")
        if not pairs:
            metrics = {"iteration": iteration, "loss_type": self.solver.loss_type, "num_pairs": 0, "steps": 0}
        else:
            with self.busy.span("train"):  # the whole round: dataset, TRL trainer, steps, rounding
                metrics = self._train(pairs, iteration, checkpoint_dir)
        if self.iteration is not None:  # tracking is on when the actor was told what it starts from
            self.iteration = iteration
        return metrics

    def _expect(self, iteration: int | None, call: str) -> None:
        if self.policy is None:
            raise RuntimeError(f"trainer.{call}: the trainer sleeps (model.sleep): load() the policy first")
        if self._diverged is not None:
            raise RuntimeError(
                f"trainer.{call}: {self._diverged}; the policy in memory is unusable: resume redoes the stage"
            )
        if iteration is not None and self.iteration is not None and iteration != self.iteration:
            raise RuntimeError(
                f"trainer.{call}: the trainer holds the policy of iteration {self.iteration}, not {iteration} "
                "(it was restarted and lost its state): the stage fails, resume redoes it"
            )

    def progress(self) -> tuple[int, int]:
        """(steps done, steps) of the round in progress: the actor runs with max_concurrency 2 so the
        driver can ask while train() runs."""
        return self._progress[0], self._progress[1]

    def drain_busy(self) -> list[Span]:
        """The training spans since the last call (actors.busy)."""
        return self.busy.drain()

    def _train(self, pairs: list[PreferencePair], iteration: int, checkpoint_dir: str | None) -> dict[str, Any]:
        checkpoints = checkpoint_dir if self.solver.checkpoint_steps else None
        scratch = self.workdir / f"pairs-{iteration:04d}"  # the round's datasets files (see _dataset)
        shutil.rmtree(scratch, ignore_errors=True)  # left behind by a round that crashed
        try:
            return self._run_round(pairs, iteration, checkpoints, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_round(
        self, pairs: list[PreferencePair], iteration: int, checkpoints: str | None, scratch: Path
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        trainer = self._round_trainer(pairs, iteration, checkpoints, scratch)
        prepare_seconds = time.perf_counter() - t0
        what = "tokenized, reference log-probs computed" if self._precomputes_reference() else "tokenized"
        print(f"[train it={iteration}] {len(pairs)} pairs {what} in {prepare_seconds:.1f} s", flush=True)
        round_key = self.round_key(pairs, iteration)
        resume_from = last_step_checkpoint(checkpoints, round_key) if checkpoints else None
        if resume_from is not None:
            print(f"[train it={iteration}] continuing from the step checkpoint {resume_from}", flush=True)
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_from)
        seconds = time.perf_counter() - t0
        metrics = _round_metrics(trainer.state.log_history, seconds)
        problem = _divergence(metrics["losses"], trainer.model)
        if problem:
            # full fine-tuning trained self.policy in place: it holds the bad weights now
            self._diverged = f"iteration {iteration}: {problem}"
            raise TrainingDivergedError(
                f"iteration {iteration}: training diverged: {problem}. Nothing of the iteration was saved or "
                f"committed. "
                "Lower solver.learning_rate (or check the pairs and the reward), then continue with "
                "`eva run --run-dir RUN_DIR --allow-change solver.learning_rate --set solver.learning_rate=...`"
            )
        metrics.update(iteration=iteration, loss_type=self.solver.loss_type, num_pairs=len(trainer.train_dataset))
        metrics["resumed_at_step"] = _step_of(resume_from) if resume_from else 0
        metrics["prepare_seconds"] = prepare_seconds  # before the first step: dataset, TRL trainer, reference pass
        # what TRL actually ran, for the record (and the tests): the trainer class and the loss's
        # arguments read back from its config, under TRL's names (SimPO's beta is CPOConfig.beta)
        trl_args = {name: getattr(trainer.args, name) for name in trl_arguments(self.solver)}
        metrics.update(trl_trainer=type(trainer).__name__, trl_args=trl_args)
        self.policy = self._finish(trainer)
        del trainer
        gc.collect()
        heap.release()  # the round's optimizer state, gradients and activations: ~3.7 GB on SmolLM2 (actors.heap)
        return metrics

    def _round_trainer(self, pairs: list[PreferencePair], iteration: int, checkpoints: str | None, scratch: Path):
        """The round's TRL trainer. With precomputed reference log-probs its constructor ran the
        reference over every pair; the reference module is then dropped (after `capture_reference`
        copied it) and its memory returned before the optimizer states are allocated."""
        from transformers.trainer_callback import PrinterCallback

        dataset = self._dataset(pairs, scratch)
        trainer = self._make_trainer(dataset, self._reference_model(), iteration, checkpoints, pairs)
        trainer.remove_callback(PrinterCallback)
        if self.capture_reference:
            self._reference = _reference_weights(trainer)
        if self._precomputes_reference():
            _drop_reference(trainer)
            gc.collect()
            heap.release()
        return trainer

    def state_dict(self, iteration: int | None = None) -> dict[str, torch.Tensor]:
        """The policy's weights under HF checkpoint names (what vLLM's reload_weights expects), as
        contiguous CPU tensors in `dtype`; tied weights appear once (vLLM re-ties lm_head itself).
        `iteration`: fail unless the trainer holds that iteration's policy."""
        self._expect(iteration, "state_dict")
        return _revert_names(self.policy, _weights(self.policy, self.dtype))

    def send_weights(
        self,
        engines: list,
        ranks_per_engine: int,
        backend: str,
        version: str,
        iteration: int | None = None,
        timeout_s: float = 3600.0,
    ) -> float:
        """Push the policy to every engine of `engines` over a collective (ray.weight_sync nccl, ipc or
        gloo; actors.weight_transfer), labelled `version`; returns seconds. The group is formed on the
        first push, and again when the engines change or one of them left it (Ray restarted it).
        The weights are `state_dict`'s, left on the trainer's device. `iteration`: as in state_dict."""
        from actors.weight_transfer import WeightSender

        self._expect(iteration, "send_weights")
        t0 = time.perf_counter()
        key = (backend, tuple(h._actor_id.hex() for h in engines))
        if self._sender is None or self._sender.key != key:
            if self._sender is not None:
                self._sender.close()
            self._sender = WeightSender(backend, engines, ranks_per_engine, timeout_s, self._wire_weights, key)
        with self.busy.span("weight_sync"):
            self._sender.send(version)
        return time.perf_counter() - t0

    def _wire_weights(self) -> dict[str, torch.Tensor]:
        """The policy's weights as the engines load them (state_dict's names and dtype), on its device."""
        return _revert_names(self.policy, _weights(self.policy, self.dtype, device=None))

    def reference_state(self) -> dict[str, torch.Tensor]:
        """fp32 weights of the reference model TRL used in the last round, HF names, read from the TRL
        trainer itself. Empty for the reference-free SimPO/ORPO. Needs `capture_reference=True`."""
        if self._reference is None:
            raise RuntimeError("no reference captured: construct with capture_reference=True and call train()")
        return self._reference

    def save(self, path: str, iteration: int | None = None) -> None:
        """Write the policy (safetensors in `dtype`) and tokenizer to `path`, atomically: built in a
        temp sibling folder, every file and folder fsynced, renamed over `path`, the parent fsynced
        (eva.atomic.atomic_folder). The policy/ of a committed iteration is never replaced: refused
        with RuntimeError. `iteration`: as in state_dict."""
        self._expect(iteration, "save")
        target = Path(path)
        if is_committed(target.parent):
            raise RuntimeError(
                f"trainer.save: {target.parent} is a committed iteration: its {target.name}/ is never replaced"
            )
        config_dtype = self.policy.config.dtype
        try:
            # an uncommitted iteration's policy/ is replaced: resume redoes the stage if we crash midway
            with atomic_folder(target, replace=True) as tmp:
                # save_pretrained drops tied keys and maps names back to the checkpoint layout itself
                self.policy.save_pretrained(tmp, state_dict=_weights(self.policy, self.dtype), safe_serialization=True)
                # save_pretrained wrote the fp32 model's dtype: say what the file holds
                self.policy.config.dtype = self.dtype
                self.policy.config.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                if self.dtype != torch.float32:  # what resume continues from: the unrounded masters
                    from safetensors.torch import save_file

                    (tmp / MASTERS).parent.mkdir(exist_ok=True)
                    save_file(self._masters_state(), str(tmp / MASTERS))
                if self._online is not None:  # the online solver's optimizer spans commits: resume continues it
                    (tmp / POLICY_OPTIMIZER).parent.mkdir(exist_ok=True)
                    torch.save(self._online.state(), tmp / POLICY_OPTIMIZER)
        finally:
            self.policy.config.dtype = config_dtype
            heap.release()  # the dtype copy of the weights written out

    def sleep(self) -> None:
        """Free the policy between rounds (model.sleep: the engines generate meanwhile); `load` brings it
        back from the iteration's saved policy folder and fp32 masters, as a resume does (exactly)."""
        self.policy = None
        self._masters = {}
        gc.collect()
        heap.release()

    def load(self, path: str, iteration: int | None = None) -> None:
        """Restore the policy of `iteration` from its policy/ folder (resume). With `reference: previous`
        the next round's reference is taken from this policy at round start, so nothing else to restore."""
        self.policy = self._load_model(path)
        self._load_masters(path)
        self.iteration = iteration
        self._diverged = None
        self._online = None  # its optimizer held the replaced model's parameters: start_online again
        gc.collect()
        heap.release()  # the policy it replaced

    # --- the online solver (run.mode: online) ----------------------------------------------------

    def start_online(self, path: str | None = None) -> int:
        """Begin or continue the online solver: one AdamW and LR schedule over the policy, kept across
        steps and commits, restored from the optimizer state `save` wrote into the policy folder `path`
        (a resume; fresh at step 0 without one). Returns the global step the next `train_step` carries."""
        if self.online is None:
            raise RuntimeError("trainer.start_online: the trainer was built without an online section")
        self._expect(None, "start_online")
        if self.solver.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy.train()
        self._online = make_online_state(self.policy, self.solver, self.online)
        file = Path(path) / POLICY_OPTIMIZER if path else None
        if file is not None and file.is_file():
            self._online.restore(torch.load(file, map_location="cpu", weights_only=True))
        return self._online.step

    def train_step(self, batch: StepBatch) -> dict[str, Any]:
        """One optimizer step on one minibatch's groups (rloo/grpo: advantages and the policy loss;
        online_dpo: the groups' best-vs-worst pairs). Returns the step's loss and stats.

        Old log-probs (the clip loss's ratio) are the policy's own, detached, when the engines sampled
        with the weights the trainer holds (every step with sync_every 1; the first step after each
        push otherwise): the ratio is 1 there, as in TRL's GRPO with one update per generation. When
        the engines lag (sync_every > 1) they come from a frozen copy of the weights last pushed,
        rounded as the engines hold them. vLLM's own sampling log-probs are not used: they come from
        other kernels (and bf16 weights), so the ratio would differ from 1 on fresh samples.
        A non-finite loss or gradient raises TrainingDivergedError before the update: the weights stay."""
        st = self._online
        if self.online is None or st is None:
            raise RuntimeError("trainer.train_step: call start_online first")
        self._expect(None, "train_step")
        if batch.step != st.step:
            raise RuntimeError(
                f"trainer.train_step: the trainer is at step {st.step}, the batch is for step {batch.step} "
                "(restarted, or a step was skipped): resume redoes the iteration from its last commit"
            )
        t0 = time.perf_counter()
        with self.busy.span("train"):
            self._online_references(batch)
            st.optimizer.zero_grad(set_to_none=True)
            stats = self._dpo_backward(batch) if self.online.algorithm == "online_dpo" else self._pg_backward(batch)
            params = [p for p in self.policy.parameters() if p.requires_grad]
            limit = self.online.max_grad_norm
            norm = torch.nn.utils.clip_grad_norm_(params, limit if limit is not None else math.inf)
            if not (math.isfinite(stats["loss"]) and math.isfinite(float(norm))):
                raise TrainingDivergedError(
                    f"step {batch.step}: loss {stats['loss']}, gradient norm {float(norm)}: training diverged; "
                    "nothing was updated. Lower solver.learning_rate, then resume with --allow-change"
                )
            stats.update(step=batch.step, lr=st.scheduler.get_last_lr()[0], grad_norm=float(norm))
            st.optimizer.step()
            st.scheduler.step()
            st.step += 1
        stats["seconds"] = time.perf_counter() - t0
        return stats

    def _online_references(self, batch: StepBatch) -> None:
        """Take the iteration's KL / DPO reference at its first step, and a copy of the pushed weights
        at every push while the engines lag (sync_every > 1 with the clip loss)."""
        o, st = self.online, self._online
        assert o is not None and st is not None
        if batch.iteration != st.iteration:
            st.reference = None
            if o.kl_beta > 0 or o.algorithm == "online_dpo":  # pi_{t-1} (as served), or pi_0
                st.reference = self._frozen_reference()
            st.iteration = batch.iteration
        if o.sync_every > 1 and o.resolved_loss() == "clip" and batch.step % o.sync_every == 0:
            st.served = self._served_copy()  # what the engines hold until the next push

    def _logprobs(self, model: torch.nn.Module | None, padded: Padded, temperature: float) -> torch.Tensor:
        """Completion-token log-probs [B, T] of `model` (mixed precision in `dtype` on a GPU)."""
        assert model is not None
        if not (self.gpu and self.dtype != torch.float32):
            return completion_logprobs(model, padded, temperature)
        with torch.autocast("cuda", dtype=self.dtype):
            return completion_logprobs(model, padded, temperature)

    def _pg_backward(self, batch: StepBatch) -> dict[str, Any]:
        """rloo/grpo: advantages of the groups, then the policy loss over micro-batches (gradients
        accumulate, weighted to the whole minibatch's loss: `chunk_weight`). Sequences with advantage
        0 carry no gradient without a KL term: they are left out of the passes (they still count in
        the normalizers). Stats are weighted like the loss."""
        from eva.online.algos import PolicyBatch, advantage_estimator, chunk_weight, policy_loss

        o, st = self.online, self._online
        assert o is not None and st is not None
        extra = {"scale_by_std": o.scale_by_std} if o.algorithm == "grpo" else {}
        adv = advantage_estimator(o.algorithm)(torch.tensor(batch.rewards, dtype=torch.float32), **extra).reshape(-1)
        prompts = [p for p, group in zip(batch.prompt_ids, batch.completion_ids, strict=True) for _ in group]
        completions = [c for group in batch.completion_ids for c in group]
        active = [i for i in range(len(completions)) if adv[i] != 0 or o.kl_beta > 0]
        loss_name, agg = o.resolved_loss() or "reinforce", o.resolved_agg()
        kwargs: dict[str, Any] = dict(agg=agg, beta=o.kl_beta, max_len=self.solver.max_new_tokens)
        if loss_name == "clip":
            kwargs.update(eps_low=o.clip_eps_low, eps_high=o.clip_eps_high)
        lagging = o.sync_every > 1 and batch.step % o.sync_every != 0  # the engines serve st.served
        temperature = self.solver.temperature
        total: dict[str, float] = {"loss": 0.0}
        for chunk in chunks(active, o.micro_batch):
            padded = pad_sequences([prompts[i] for i in chunk], [completions[i] for i in chunk], self.policy.device)
            logp = self._logprobs(self.policy, padded, temperature)
            with torch.no_grad():
                old = None
                if loss_name == "clip":
                    old = self._logprobs(st.served, padded, temperature) if lagging else logp.detach()
                ref = self._logprobs(st.reference, padded, temperature) if o.kl_beta > 0 else None
            policy_batch = PolicyBatch(logp, adv[chunk].to(logp.device), padded.mask, old, ref)
            loss, stats = policy_loss(loss_name)(policy_batch, **kwargs)
            weight = chunk_weight(agg, padded.mask, sum(len(c) for c in completions), len(completions))
            (loss * weight).backward()
            for key, value in {"loss": float(loss.detach()), **stats}.items():
                total[key] = total.get(key, 0.0) + value * weight
        signal = int((adv != 0).sum())
        return {**total, "sequences": len(completions), "trained_sequences": len(active), "signal_sequences": signal}

    def _dpo_backward(self, batch: StepBatch) -> dict[str, Any]:
        """online_dpo: eva's sigmoid DPO loss on the groups' (best, worst) pairs, in micro-batches of
        micro_batch // 2 pairs, each weighted by its share of the pairs; no pairs: no update."""
        from eva.online.algos import dpo_loss

        o, st = self.online, self._online
        assert o is not None and st is not None
        pairs = batch.pairs
        total: dict[str, float] = {"loss": 0.0}
        for chunk in chunks(range(len(pairs)), max(1, o.micro_batch // 2)):
            picked = [pairs[i] for i in chunk]
            chosen = [batch.completion_ids[p][c] for p, c, _ in picked]
            rejected = [batch.completion_ids[p][r] for p, _, r in picked]
            prompts = [batch.prompt_ids[p] for p, _, _ in picked] * 2
            padded = pad_sequences(prompts, chosen + rejected, self.policy.device)
            seq = self._logprobs(self.policy, padded, 1.0).sum(-1)
            with torch.no_grad():
                ref = self._logprobs(st.reference, padded, 1.0).sum(-1)
            m = len(picked)
            loss, stats = dpo_loss(seq[:m], seq[m:], ref[:m], ref[m:], self.solver.beta)
            weight = m / len(pairs)
            (loss * weight).backward()
            for key, value in {"loss": float(loss.detach()), **stats}.items():
                total[key] = total.get(key, 0.0) + value * weight
        return {**total, "pairs": len(pairs)}

    # --- internals --------------------------------------------------------------------------

    def sequence_logprobs(self, token_ids: list[list[int]]) -> list[list[float]]:
        """log p(token_i | tokens before it) under the policy, for i >= 1 of each sequence (what vLLM's
        prompt_logprobs gives; the trained policy must be the served one: tests compare the two)."""
        out = []
        self.policy.eval()
        with torch.no_grad():
            for ids in token_ids:
                x = torch.tensor([ids], device=self.policy.device)
                logits = self.policy(input_ids=x).logits.float()[0, :-1]
                out.append(torch.log_softmax(logits, -1).gather(1, x[0, 1:, None])[:, 0].tolist())
        return out

    def _load_model(self, path: str, frozen: bool = False) -> PreTrainedModel:
        from transformers import AutoModelForCausalLM

        remote: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        attention = attention_implementation(path, self.solver.attn_implementation, self.trust_remote_code)
        if attention is not None:
            remote["attn_implementation"] = attention
        if self.gpu and (frozen or self.solver.finetune == "lora"):  # never updated: `dtype` holds them exactly
            return AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, **remote)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **remote)
        _round_to(model, self.dtype)  # same weights as the engines serve (see module docstring)
        return model

    def _precomputes_reference(self) -> bool:
        """Whether TRL computes the reference log-probs up front (solver.precompute_ref_log_probs; a
        reference-free loss has none to compute)."""
        s = self.solver
        return s.precompute_ref_log_probs and not loss_spec(s.loss_type).reference_free

    def _reference_model(self) -> torch.nn.Module | None:
        """The module handed to TRL as `ref_model`; None only where TRL needs none (see module docstring)."""
        s = self.solver
        if loss_spec(s.loss_type).reference_free:
            return None
        if (
            s.reference == "initial" and self._precomputes_reference()
        ):  # used once per round: loaded for it, freed after
            return _frozen(self._load_model(self.initial_path, frozen=True))
        if s.finetune == "lora" and s.reference != "initial":
            return None  # adapter disabled = merged base = pi_{t-1}
        return self._frozen_reference()

    def _frozen_reference(self) -> torch.nn.Module:
        """pi_0 (solver.reference initial: used at every step, loaded once and kept) or a frozen copy of
        the policy held now (previous)."""
        if self.solver.reference == "initial":
            if self._initial is None:
                self._initial = _frozen(self._load_model(self.initial_path, frozen=True))
            return self._initial
        return self._served_copy()

    def _served_copy(self) -> torch.nn.Module:
        """A frozen copy of the policy as the engines serve it: rounded to `dtype`, not its fp32 masters."""
        copied = _frozen(copy.deepcopy(self.policy))
        if self.gpu:
            return copied.to(self.dtype)
        _round_to(copied, self.dtype)
        return copied

    def _dataset(self, pairs: list[PreferencePair], folder: Path):
        """Conversational pairs, so TRL applies the chat template the engines use. TRL 1.16 has no
        max_prompt_length: we keep the last `max_prompt_length` tokens of the user turn ourselves.

        Written to `folder` (the round's scratch in the workdir, removed after the round) and read back
        memory-mapped: datasets writes the cache files of TRL's maps (tokenization, the precomputed
        reference log-probs) next to a dataset's file, where an in-memory dataset's would go to a
        per-process temporary folder that a killed actor never cleans up."""
        from datasets import Dataset, load_from_disk

        Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": self._fit_prompt(p.prompt)}] for p in pairs],
                "chosen": [[{"role": "assistant", "content": p.chosen}] for p in pairs],
                "rejected": [[{"role": "assistant", "content": p.rejected}] for p in pairs],
            }
        ).save_to_disk(str(folder))
        return load_from_disk(str(folder))

    def _fit_prompt(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        limit = self.solver.max_prompt_length
        # transformers types decode as `str | list[str]` (no overloads); one list of ids decodes to a str
        return text if len(ids) <= limit else cast(str, self.tokenizer.decode(ids[-limit:]))

    def round_key(self, pairs: list[PreferencePair], iteration: int) -> str:
        """What a step checkpoint belongs to: the iteration, the pairs and the solver settings (all but
        checkpoint_steps). A checkpoint of another round (pairs redone, a setting changed with
        --allow-change) is never resumed from."""
        import hashlib
        import json

        solver = self.solver.model_dump(mode="json", exclude={"checkpoint_steps"})
        body = [iteration, solver, [(p.prompt, p.chosen, p.rejected) for p in pairs]]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def _make_trainer(
        self,
        dataset,
        ref_model: torch.nn.Module | None,
        iteration: int,
        checkpoints: str | None,
        pairs: list[PreferencePair] | None = None,
    ):
        s = self.solver
        saving: dict[str, Any] = (
            dict(save_strategy="steps", save_steps=s.checkpoint_steps, save_total_limit=1)
            if checkpoints
            else dict(save_strategy="no")
        )
        common: dict[str, Any] = dict(
            output_dir=checkpoints or str(self.workdir / f"trl-{iteration:04d}"),
            **saving,
            learning_rate=s.learning_rate,
            num_train_epochs=s.epochs,
            per_device_train_batch_size=s.per_device_batch_size,
            gradient_accumulation_steps=s.gradient_accumulation_steps,
            # transformers 5.19 has no `warmup_ratio` argument; `warmup_steps` below 1 is the ratio:
            # TrainingArguments.get_warmup_steps (transformers 5.19, training_args.py:2122-2129) takes
            # math.ceil(num_training_steps * warmup_steps). solver.warmup_ratio is < 1 by its schema.
            warmup_steps=s.warmup_ratio,
            weight_decay=s.weight_decay,
            max_length=s.max_length,
            seed=self.seed + iteration,
            # Mixed precision on GPU (module docstring); TRL defaults to bf16=True, which raises on CPU.
            bf16=self.gpu and self.dtype == torch.bfloat16,
            fp16=self.gpu and self.dtype == torch.float16,
            use_cpu=not self.gpu,
            report_to=[],
            gradient_checkpointing=s.gradient_checkpointing,
            # non-reentrant: the variant transformers recommends (no warning per step, works with frozen inputs)
            gradient_checkpointing_kwargs={"use_reentrant": False} if s.gradient_checkpointing else None,
            dataloader_num_workers=0,
            logging_steps=1,
            logging_nan_inf_filter=False,  # transformers hides a nan/inf step loss by default; _divergence must see it
            disable_tqdm=True,
        )
        peft_config = None
        if s.finetune == "lora":
            from peft import LoraConfig

            lora = s.lora
            peft_config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            )
        spec = loss_spec(s.loss_type)
        module, config_class, trainer_class, family_args = TRL_TRAINERS[spec.family]
        trl = importlib.import_module(module)
        # CPOConfig/ORPOConfig have no reference, nor this argument
        reference = {} if spec.reference_free else {"precompute_ref_log_probs": self._precomputes_reference()}
        args = getattr(trl, config_class)(**common, **family_args, **reference, **trl_arguments(s))
        kwargs = dict(
            model=self.policy, train_dataset=dataset, processing_class=self.tokenizer, peft_config=peft_config
        )
        if not spec.reference_free:
            kwargs["ref_model"] = ref_model
        # The PEFT model (random LoRA A matrices) is built inside TRL's trainer, before transformers'
        # Trainer seeds from args.seed. TRL 1.16 seeds with args.seed just before it; we do not rely on
        # that: the adapter must depend on the run seed and the iteration only, never on what this
        # process drew before (a resumed run's trainer has another history).
        torch.manual_seed(derive_seed(self.seed, "lora", iteration))
        callbacks = [_step_logger(iteration, self._progress)]
        if checkpoints:
            callbacks.append(_checkpoint_marker(self.round_key(pairs or [], iteration)))
        return getattr(trl, trainer_class)(args=args, callbacks=callbacks, **kwargs)

    def _finish(self, trainer) -> PreTrainedModel:
        """The trained policy as a plain model: LoRA merged, TRL's patches removed, rounded to dtype."""
        from peft import PeftModel

        model = trainer.model
        if isinstance(model, PeftModel):
            model = self._merge_lora(model)  # next round starts a fresh adapter on these weights
        # DPOTrainer replaces `forward` on the instance (fused LM head) on the policy and on ref_model:
        # drop it, so deep copies and later rounds start from the class's forward.
        for m in (model, self._initial):
            if m is not None:
                m.__dict__.pop("forward", None)
        model.requires_grad_(True)
        return model  # full fine-tuning: the fp32 masters, unrounded (see module docstring)

    def _merge_lora(self, model) -> PreTrainedModel:
        """Fold the round's adapter into the fp32 masters of the weights it adapts, and give the base
        layers those masters rounded to `dtype`: merging into a `dtype` base would round each round's
        delta away wherever it is below half a unit in the last place of the weight (bf16 at lr 5e-6:
        most of it). In float32 the masters are the base layers themselves."""
        if self.dtype == torch.float32:
            return model.merge_and_unload()
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, LoraLayer):
                    layer: Any = module  # peft's lora.Linear & co.; the LoraLayer base type declares less
                    base: Any = layer.get_base_layer()
                    key = name.removeprefix(prefix) + ".weight"
                    # a copy: on CPU the fp32 base weight itself would come back, and be rounded below
                    master = self._masters.setdefault(key, base.weight.detach().to("cpu", torch.float32, copy=True))
                    for adapter in layer.active_adapters:
                        master += layer.get_delta_weight(adapter).detach().float().cpu()
                    base.weight.copy_(master.to(self.dtype))
        return model.unload()  # the adapters go; the base layers stay, holding the rounded masters

    def _masters_state(self) -> dict[str, torch.Tensor]:
        """The fp32 masters that `dtype` rounds: every weight (full) or the adapted ones (LoRA)."""
        if self.solver.finetune == "lora":
            return {k: v.contiguous() for k, v in self._masters.items()}
        return _weights(self.policy, torch.float32)

    def _load_masters(self, path: str) -> None:
        """Restore the fp32 masters a `save` wrote next to the policy (none in float32, or for pi_0)."""
        self._masters = {}
        file = Path(path) / MASTERS
        if self.dtype == torch.float32 or not file.is_file():
            return
        from safetensors.torch import load_file

        masters = load_file(str(file))
        if self.solver.finetune == "lora":
            self._masters = masters
            return
        missing = set(masters) - set(self.policy.state_dict())
        if missing:
            raise RuntimeError(f"{file}: weights the policy does not have: {sorted(missing)[:3]}")
        with torch.no_grad():
            params = self.policy.state_dict()
            for name, value in masters.items():
                params[name].copy_(value)


def attention_implementation(path: str, configured: str | None, trust_remote_code: bool = False) -> str | None:
    """The attention kernel the trainer loads a model with: `configured` (solver.attn_implementation)
    if set; else eager for a model whose attention logits are soft-capped (Gemma 2: 50), because
    transformers' default, sdpa, silently drops the cap that vLLM applies, so the policy trained
    would not be the policy served; else None (transformers' default)."""
    if configured is not None:
        return configured
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    return "eager" if getattr(config, "attn_logit_softcapping", None) else None


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def _round_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round fp32 parameters to the values `dtype` can hold (in place, still fp32)."""
    if dtype == torch.float32:
        return
    for p in model.parameters():
        p.copy_(p.to(dtype))


def _weights(
    model: torch.nn.Module, dtype: torch.dtype | None = None, device: str | None = "cpu"
) -> dict[str, torch.Tensor]:
    """state_dict in the model's own names, each tied tensor once (first name wins, as in save_pretrained:
    model.embed_tokens.weight before lm_head.weight), copied to contiguous tensors on `device` (None:
    where they are, copied only when the dtype changes)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        moved = tensor.detach().to(device or tensor.device, dtype or tensor.dtype, copy=device is not None)
        out[name] = moved.contiguous()
    return out


def _revert_names(model: PreTrainedModel, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo transformers 5 load-time weight conversions (none for Llama) so names match the checkpoint."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: no conversions
        return weights
    return dict(revert_weight_conversion(model, weights))


def _reference_weights(trainer) -> dict[str, torch.Tensor]:
    """The weights TRL will compute reference log-probs with, read from the TRL trainer (fp32, HF names)."""
    if not hasattr(trainer, "ref_model"):  # CPO / ORPO: reference-free
        return {}
    if trainer.ref_model is not None:
        model = trainer.accelerator.unwrap_model(trainer.ref_model)
        return _revert_names(model, _weights(model))
    # PEFT without ref_model: TRL disables the adapter, so the reference is the base layers' weights
    base = trainer.model.get_base_model()
    weights = {k.replace(".base_layer.", "."): v for k, v in _weights(base).items() if "lora_" not in k}
    return _revert_names(base, weights)


def _drop_reference(trainer) -> None:
    """Forget the reference module of a TRL trainer whose reference log-probs are precomputed (no
    step runs it): the trainer's attribute, and the accelerator's list of every module it prepared."""
    reference = getattr(trainer, "ref_model", None)
    if reference is None:  # LoRA with `previous`: the reference is the policy with its adapter off
        return
    trainer.ref_model = None
    accelerator = trainer.accelerator
    accelerator._models = [m for m in accelerator._models if m is not reference]


def _divergence(losses: list[float], model: torch.nn.Module) -> str | None:
    """What makes a finished round unusable: a non-finite step loss, or non-finite weights; None if fine."""
    bad_steps = [i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss)]
    bad_params = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    problems = []
    if bad_steps:
        problems.append(
            f"non-finite loss at step "
            f"{', '.join(map(str, bad_steps[:5]))}{' ...' if len(bad_steps) > 5 else ''} of {len(losses)}"
        )
    if bad_params:
        problems.append(
            f"{len(bad_params)} parameter tensors hold non-finite values "
            f"({', '.join(bad_params[:3])}{', ...' if len(bad_params) > 3 else ''})"
        )
    return "; ".join(problems) or None


def _round_metrics(log_history: list[dict[str, float]], seconds: float) -> dict[str, Any]:
    """Per-step losses and TRL's reward statistics (means over the round's logged steps)."""
    steps = [h for h in log_history if "loss" in h]
    losses = [float(h["loss"]) for h in steps]

    def mean_of(key: str) -> float | None:
        values = [float(h[key]) for h in steps if key in h]
        return sum(values) / len(values) if values else None

    return {
        "steps": len(losses),
        "losses": losses,
        "learning_rates": [float(h["learning_rate"]) for h in steps if "learning_rate" in h],
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
        "reward_accuracy": mean_of("rewards/accuracies"),
        "reward_margin": mean_of("rewards/margins"),
        "seconds": seconds,
        "seconds_per_step": seconds / len(losses) if losses else math.nan,
    }


def _step_logger(iteration: int, progress: list[int]):
    """A callback that keeps `progress` = [steps done, steps in the round] (the driver polls it for
    its progress bar) and prints a short line per logged step (into the actor's Ray log)."""
    from transformers import TrainerCallback

    class StepLine(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()
            progress[:] = [0, state.max_steps]

        def on_step_end(self, args, state, control, **kwargs):
            progress[:] = [state.global_step, state.max_steps]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                rate = (time.perf_counter() - self.t0) / max(state.global_step, 1)
                print(
                    f"[train it={iteration}] step {state.global_step}/{state.max_steps} loss "
                    f"{logs['loss']:.4f} ({rate:.2f} s/step)",
                    flush=True,
                )

    return StepLine()


# Written into a step checkpoint once transformers has saved all of it (its `on_save`): a folder
# without it is a save that was cut off, never resumed from.
CHECKPOINT_MARKER = "eva_step_checkpoint.json"


def _step_of(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def last_step_checkpoint(folder: str | Path, round_key: str) -> str | None:
    """The latest complete step checkpoint in `folder` of the round `round_key` names, or None."""
    import json

    found = []
    for path in Path(folder).glob("checkpoint-*"):
        marker = path / CHECKPOINT_MARKER
        if path.name.rsplit("-", 1)[1].isdigit() and marker.is_file():
            if json.loads(marker.read_text()).get("round") == round_key:
                found.append(str(path))
    return max(found, key=_step_of, default=None)


def _checkpoint_marker(round_key: str):
    """A callback that marks each step checkpoint complete once transformers has written it."""
    import json

    from transformers import TrainerCallback

    from eva.atomic import atomic_write_text

    class Marker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            body = json.dumps({"round": round_key, "step": state.global_step, "max_steps": state.max_steps})
            atomic_write_text(folder / CHECKPOINT_MARKER, body)

    return Marker()
