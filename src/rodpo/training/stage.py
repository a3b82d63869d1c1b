"""One training stage's state and steps: the policy (DDP-wrapped in a distributed run), the frozen
reference, the optimizer, the random streams, one step's losses and one epoch.

warmup: L = L_CE (+ moe_aux_weight * L_aux)                      -> pi_sft
dpo:    L = L_CE + lambda * L_pref (+ moe_aux_weight * L_aux)    (Eq. 6, `objectives.rodpo_loss`),
        policy <- pi_sft, reference = frozen pi_sft (reference.py), y_l from the policy's own
        scores (Eq. 4, negatives.py).
Each step encodes every sequence once and supervises all its positions: states are gathered at
the real target positions, and every score goes through the chunked scoring core (rodpo.scoring),
so no (N, n_items) logits exist. A DPO step scores the catalog once: the CE pass also yields the
top-K pool the losers are drawn from. The reference only scores (y_w, y_l) per position.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rodpo.devices import resolve_device
from rodpo.distributed import SINGLE_PROCESS, DistributedContext, all_gather_rows, all_reduce_sum, rank_device
from rodpo.ranking import evaluate_model
from rodpo.model import encode_targets
from rodpo.model.moe import SparseNoisyMoE
from rodpo.scoring import chunked_cross_entropy, cross_entropy_and_top_k
from rodpo.sequences import SequenceData
from rodpo.training.checkpoints import BEST_WEIGHTS
from rodpo.training.config import VALID_KS, TrainConfig
from rodpo.training.negatives import draw_negatives, pool_exclusions, pool_size
from rodpo.training.objectives import preference_loss, rodpo_loss
from rodpo.training.reference import ReferenceScorer, implicit_reward_stats

logger = logging.getLogger("rodpo.training")
# Called once per DPO step with the sampled pairs: users (N,), the item before each target (N,),
# the chosen y_w (N,) and the losers y_l (N, M).
PairMonitor = Callable[..., None]
RANK_SEED_STRIDE = 1_000_003  # per-rank random streams: seed + stride * rank
# Above these, a NaN/inf loss is blamed on the preference term first: β scales the DPO margin
# inside a sigmoid, λ scales its gradient against CE's, γ shifts SimPO's margin.
EXTREME_PREFERENCE = {"beta": 50.0, "lambda_dpo": 100.0, "gamma": 50.0}


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_policy_mode(policy: nn.Module, stochastic: bool) -> None:
    """Training mode; with stochastic=False dropout and MoE router noise are switched off."""
    policy.train()
    if not stochastic:
        for module in policy.modules():
            if isinstance(module, (nn.Dropout, SparseNoisyMoE)):
                module.eval()


class PolicyForward(nn.Module):
    """The policy's whole differentiable part of a step as one forward(): target states, MoE aux
    loss and the item table. DistributedDataParallel synchronises gradients only through forward()."""

    def __init__(self, policy: nn.Module, encoder_chunks: int) -> None:
        super().__init__()
        self.policy = policy
        self.encoder_chunks = encoder_chunks

    def forward(self, inputs: torch.Tensor, input_times: torch.Tensor,
                is_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states, aux_loss = encode_targets(self.policy, inputs, input_times, is_target, self.encoder_chunks)
        return states, aux_loss, self.policy.scoring_table()


class Stage:
    """State of one training run on one rank: policy, optional reference, optimizer and RNGs."""

    def __init__(self, model: nn.Module, data: SequenceData, config: TrainConfig,
                 reference_model: nn.Module | None, context: DistributedContext = SINGLE_PROCESS,
                 pair_monitor: PairMonitor | None = None) -> None:
        self.config, self.data, self.context, self.pair_monitor = config, data, context, pair_monitor
        self.device = resolve_device(rank_device(config.device, context))
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.autocast_dtype = _autocast_dtype(config.precision, self.device)
        self.is_dpo = config.stage == "dpo"
        torch.manual_seed(config.seed + RANK_SEED_STRIDE * context.rank)  # dropout: its own stream per rank
        shared_buffers = {id(buffer): buffer for buffer in model.buffers()}
        self.policy = copy.deepcopy(model, memo=shared_buffers).to(self.device)  # the caller's model is untouched
        self.forward = PolicyForward(self.policy, config.encoder_chunks)
        if context.enabled:
            sparse_moe = getattr(getattr(model, "config", None), "moe_mode", None) == "sparse"
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=sparse_moe)  # experts a batch does not route to get no gradient
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)  # the same on every rank
        self.sample_generator = torch.Generator(device=self.device).manual_seed(
            config.seed + 1 + RANK_SEED_STRIDE * context.rank)
        self.train_items = torch.from_numpy(data.train.items).to(self.device)
        self.train_timestamps = torch.from_numpy(data.train.timestamps).to(self.device)
        self.aux_weight = getattr(getattr(model, "config", None), "moe_aux_weight", 0.0)
        self.pool_k = self._pool_size(data.n_items) if self.is_dpo else None
        self.ce_backend = "auto"  # rodpo.scoring.BACKENDS; benchmarks pin "chunked" or "kernel" to compare them
        self.reference = None
        if self.is_dpo and config.dpo.uses_reference:
            sft = reference_model if reference_model is not None else model
            self.reference = ReferenceScorer(sft, self.train_items, self.train_timestamps, config.dpo.reference,
                                             config.encoder_chunks, self.autocast)

    def _pool_size(self, n_items: int) -> int:
        """rodpo.dpo.k, capped at the items a loser can come from (the catalog minus the positive): a
        larger K only costs time, the pool being the whole catalog either way."""
        dpo, candidates = self.config.dpo, max(n_items - 1, 1)
        if dpo.k <= candidates:
            return dpo.k
        if dpo.negative_strategy == "topk_uniform" and dpo.n_negatives > candidates:
            raise ValueError(f"rodpo.dpo.n_negatives={dpo.n_negatives}: the catalog has {n_items} items, so at most "
                             f"{candidates} distinct losers per target; lower rodpo.dpo.n_negatives.")
        if dpo.negative_strategy == "topk_uniform" and self.context.is_writer:
            logger.warning("rodpo.dpo.k=%d is more than the %d items a loser can come from (%d in the catalog, "
                           "minus the positive): the top-K pool is capped at %d.", dpo.k, candidates, n_items,
                           candidates)
        return candidates

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    # ------------------------------------------------------------------ random streams
    def rng_state(self) -> dict[str, Any]:
        """This rank's streams; in a distributed run every rank's, gathered (rank 0 writes them)."""
        state = {"shuffle": self.shuffle_generator.get_state(), "torch": torch.get_rng_state(),
                 "sample": self.sample_generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        per_rank = {name: [part.cpu() for part in all_gather_rows(value.to(self._collective_device), self.context)]
                    for name, value in state.items()}
        return {"device_type": self.device.type, "world_size": self.context.world_size, "ranks": per_rank}

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def set_rng_state(self, saved: dict[str, Any]) -> None:
        if "ranks" not in saved:  # a single-process checkpoint of an older layout
            saved = {"device_type": saved["device_type"], "ranks": {
                name: [value] for name, value in saved.items() if name != "device_type"}}
        mine = {name: values[self.context.rank] for name, values in saved["ranks"].items()}
        self.shuffle_generator.set_state(mine["shuffle"])
        torch.set_rng_state(mine["torch"])
        if saved["device_type"] != self.device.type:  # device RNG states do not transfer between devices
            logger.warning("resuming on %s a run saved on %s: device random streams restart from the seed.",
                           self.device.type, saved["device_type"])
            return
        self.sample_generator.set_state(mine["sample"])
        if "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], self.device)

    # ------------------------------------------------------------------ one step
    def step_losses(self, items: torch.Tensor, timestamps: torch.Tensor,
                    rows: torch.Tensor | None = None, loss_scale: float | None = None) -> dict[str, torch.Tensor]:
        """Losses of one batch of right-padded windows (B, max_seq_len + 1) (`rows`: their indices in
        the training windows): per-target means, TRL's reward statistics as sums. The optimised
        "loss" scales per-target sums by `loss_scale`: 1 / targets in the step, or, in a
        distributed run, world size / targets in the global step (DDP averages the gradients)."""
        rows = torch.arange(items.shape[0], device=items.device) if rows is None else rows
        by_length = (items > 0).sum(dim=1).argsort()
        items, timestamps, rows = items[by_length], timestamps[by_length], rows[by_length]
        inputs, targets, input_times = items[:, :-1], items[:, 1:], timestamps[:, :-1]
        is_target = targets > 0
        positive_item = targets[is_target]  # y_w, (N,)
        scale = loss_scale if loss_scale is not None else 1.0 / max(positive_item.numel(), 1)
        with self.autocast():
            target_states, aux_loss, table = self.forward(inputs, input_times, is_target)
        ce_rows, exclude_ids, pool = self._cross_entropy_and_pool(items, is_target, target_states, table, positive_item)
        n_targets = max(positive_item.numel(), 1)
        losses = {"ce_loss": ce_rows.detach().mean(), "aux_loss": aux_loss.detach(), "n_targets": positive_item.numel()}
        preference = None
        if self.is_dpo:
            preference_rows, stats = self._preference_losses(is_target, target_states, table, positive_item, rows,
                                                             inputs, input_times, exclude_ids, pool)
            losses.update(stats)
            losses["dpo_loss"] = preference_rows.detach().mean()
            losses["score_margin"] = losses["score_margin"] / n_targets
            preference = preference_rows.sum() * scale
        losses["loss"] = self.total_loss(ce_rows.sum() * scale, preference, aux_loss)
        return losses

    def total_loss(self, ce: torch.Tensor, preference: torch.Tensor | None, aux: torch.Tensor) -> torch.Tensor:
        """Eq. 6 with this stage's λ and MoE aux weight: the optimised loss and the logged one alike."""
        return rodpo_loss(ce, preference, aux, lambda_dpo=self.config.dpo.lambda_dpo, aux_weight=self.aux_weight)

    def _cross_entropy_and_pool(self, items, is_target, target_states, table, positive_item):
        """Per-target CE (N,), and in a DPO step the ids left out of the negative pool (N, L + 1) or
        None and the top-K pool (N, K) of Eq. 4 from the same pass over the catalog (random: None)."""
        chunk, dpo = self.config.score_chunk_items, self.config.dpo
        if not self.is_dpo:
            return chunked_cross_entropy(target_states, table, positive_item, chunk_items=chunk, reduction="none",
                                         backend=self.ce_backend), None, None
        exclude_ids = pool_exclusions(items, is_target, dpo.exclude_from_pool)
        k = pool_size(dpo.negative_strategy, self.pool_k)  # K capped at the catalog
        if k is None:
            return chunked_cross_entropy(target_states, table, positive_item, chunk_items=chunk, reduction="none",
                                         backend=self.ce_backend), exclude_ids, None
        ce_rows, _, pool = cross_entropy_and_top_k(target_states, table, positive_item, k, exclude_ids=exclude_ids,
                                                   chunk_items=chunk, reduction="none", backend=self.ce_backend)
        return ce_rows, exclude_ids, pool

    def _preference_losses(self, is_target, target_states, table, positive_item, rows, inputs, input_times,
                           exclude_ids, pool):
        """Per-target preference losses (N,) and their diagnostics (sums over targets)."""
        dpo = self.config.dpo
        sampled_negative = draw_negatives(dpo.negative_strategy, pool, positive_item, table.shape[0] - 1,
                                          self.sample_generator, exclude_ids=exclude_ids,
                                          n_negatives=dpo.n_negatives)  # (N, M)
        pairs = torch.cat([positive_item[:, None], sampled_negative], dim=1)  # (N, 1 + M): y_w, y_l...
        policy_scores = torch.einsum("nd,nmd->nm", target_states.float(), F.embedding(pairs, table).float())
        reference_scores = (self.reference.scores(rows, inputs, input_times, is_target, pairs)
                            if self.reference is not None else None)
        if self.pair_monitor is not None:  # e.g. false negatives against a known ground truth
            window_of_target = rows[:, None].expand_as(is_target)[is_target]
            self.pair_monitor(users=torch.from_numpy(self.data.train.user_ids).to(rows.device)[window_of_target],
                              last_items=inputs[is_target], chosen=positive_item, losers=sampled_negative)
        chosen, rejected = policy_scores[:, 0], policy_scores[:, 1:]
        preference = preference_loss(
            dpo.objective, chosen, rejected,
            None if reference_scores is None else reference_scores[:, 0],
            None if reference_scores is None else reference_scores[:, 1:], beta=dpo.beta, gamma=dpo.gamma)
        stats = {"score_margin": (chosen[:, None] - rejected).mean(dim=1).detach().sum()}
        if reference_scores is not None:
            stats.update(implicit_reward_stats(chosen, rejected.mean(dim=1), reference_scores[:, 0],
                                               reference_scores[:, 1:].mean(dim=1), dpo.beta))
        return preference, stats

    def check_finite(self, losses: dict[str, torch.Tensor], epoch: int, step: int, run_dir: Path | None) -> None:
        value = float(losses["loss"].detach())
        if math.isfinite(value):
            return
        n = max(int(losses["n_targets"]), 1)
        parts = ", ".join(f"{name}={float(losses[name].detach()) / n:.4g}"
                          for name in ("ce_loss", "dpo_loss", "aux_loss") if name in losses)
        has_best = run_dir is not None and (run_dir / BEST_WEIGHTS).exists()
        kept = f"; the best checkpoint in {run_dir} was not overwritten" if has_best else "; nothing was saved"
        dpo = self.config.dpo
        extreme = [f"rodpo.dpo.{name}={getattr(dpo, name)} (|{name}| > {limit:g})"
                   for name, limit in EXTREME_PREFERENCE.items() if self.is_dpo and abs(getattr(dpo, name)) > limit]
        preference = (f"extreme preference parameters: {', '.join(extreme)}; β, λ and γ scale the DPO margin and "
                      "its gradient (defaults: β = 1, λ = 1, γ = 0), try values near those; " if extreme else "")
        raise FloatingPointError(
            f"{self.config.stage} stage, epoch {epoch}, step {step}: loss is {value} ({parts}). Likely causes: "
            f"{preference}learning rate too high (lr={self.config.lr}; try 10x lower), half-precision overflow "
            f"(precision={self.config.precision}; try 'fp32'), or NaN/inf in the item features{kept}."
        )

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        """One pass over the windows in a seeded permutation (the same on every rank); each global
        batch is split over the ranks, and every loss is a mean over the global batch's targets."""
        set_policy_mode(self.policy, stochastic=not self.is_dpo or self.config.dpo.policy_dropout_in_dpo)
        n_windows = self.train_items.shape[0]
        order = torch.randperm(n_windows, generator=self.shuffle_generator).to(self.device)
        batch_starts = range(0, n_windows, self.config.batch_size)
        totals: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step
        n_total = torch.zeros((), device=self.device)
        progress = tqdm(batch_starts, desc=f"{self.config.stage} epoch {epoch}", leave=False,
                        disable=not self.config.progress_bar or not self.context.is_writer)
        world, rank = self.context.world_size, self.context.rank
        for step, start in enumerate(progress, start=1):
            global_rows = order[start:start + self.config.batch_size]
            rows = global_rows.chunk(world)[rank] if world > 1 else global_rows
            loss_scale = None
            if world > 1:
                step_targets = ((self.train_items[global_rows] > 0).sum() - global_rows.numel()).clamp(min=1)
                loss_scale = world / float(step_targets)  # DDP averages gradients over the ranks
            losses = self.step_losses(self.train_items[rows], self.train_timestamps[rows], rows, loss_scale)
            self.check_finite(losses, epoch, step, run_dir)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n_targets = losses.pop("n_targets")
            n_total += n_targets
            losses.pop("loss")  # this rank's share of the optimised loss; the logged one is Eq. 6 of the means:
            losses["loss"] = self.total_loss(losses["ce_loss"], losses.get("dpo_loss"), losses["aux_loss"])
            for name, value in losses.items():  # means are weighted by targets, reward sums are already sums
                weight = 1.0 if name.startswith("rewards_") else n_targets
                totals[name] = totals.get(name, 0.0) + value.detach().float() * weight
        names = sorted(totals)
        summed = torch.stack([torch.as_tensor(totals[name], device=self.device) for name in names] + [n_total])
        summed = all_reduce_sum(summed.to(self._collective_device), self.context)
        return {name: float(value) / max(float(summed[-1]), 1.0) for name, value in zip(names, summed[:-1])}

    def validate(self) -> dict[str, float]:
        result = evaluate_model(self.policy, self.data.valid, ks=VALID_KS, batch_size=self.config.eval_batch_size,
                                device=self.device, chunk_items=self.config.score_chunk_items, context=self.context)
        return result["metrics"]

