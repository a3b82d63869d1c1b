"""One trainer for both stages of RoDPO (paper §3.4, Algorithm 1).

warmup: L = L_CE (+ moe_aux_weight * L_aux)                      -> pi_sft
dpo:    L = L_CE + lambda * L_DPO (+ moe_aux_weight * L_aux)      (Eq. 6), policy <- pi_sft,
        reference = frozen pi_sft, y_l from the policy's own scores (Eq. 4).

Each step encodes every sequence once and supervises all its positions: states are gathered at
the real target positions first, so padding never reaches the (N, n_items+1) logits. The
reference model only scores (y_w, y_l) per position: no full reference logits.
Early stopping on valid NDCG@10 (`valid_metric`), where a value >= the best so far counts as a new
best (RecBole's rule: on a plateau the later model wins); patience counts evaluations.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rodpo.devices import resolve_device
from rodpo.evaluation.evaluate import DEFAULT_EVAL_BATCH_SIZE, evaluate_model
from rodpo.evaluation.metrics import history_exclusion_mask
from rodpo.lineage import features_fingerprint
from rodpo.model.moe import SparseNoisyMoE
from rodpo.training.batching import SequenceData, trim_to_longest
from rodpo.training.checkpoints import BEST_WEIGHTS, RunCheckpoint, run_key, state_fingerprint, weights_copy
from rodpo.training.dpo import NEGATIVE_STRATEGIES, dpo_loss, frozen_reference, implicit_reward_stats, sample_negatives

logger = logging.getLogger("rodpo.training")

STAGES = ("warmup", "dpo")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
VALID_KS = (5, 10, 20)
# Fields that change neither the optimisation trajectory nor the result of an epoch: a rerun that
# only changes these resumes the same run (e.g. more epochs after an interruption).
_NOT_IN_RUN_KEY = ("epochs", "patience", "device", "eval_batch_size", "checkpoint_dir", "progress_bar")


@dataclass(frozen=True)
class DPOConfig:
    """Stage-2 settings (paper §3.4 and §4.1)."""

    beta: float = 1.0
    k: int = 50
    # Not given in the paper. On amazon-beauty (ID-only warm-up, 5 DPO epochs) valid NDCG@10 was
    # 0.0489 / 0.0490 / 0.0502 / 0.0504 for lambda = 0 / 0.1 / 0.5 / 1.0: 1.0 chosen on validation.
    lambda_dpo: float = 1.0
    negative_strategy: str = "topk_uniform"
    exclude_history: bool = False  # drop the sequence's own items from the negative pool (off in the paper)
    # False (TRL's default): no dropout / router noise in the policy during stage 2, so pi_theta == pi_ref
    # at the start and L_DPO starts at ln 2. With dropout on (amazon-beauty, lambda 1.0) L_DPO sat near 1.8
    # and reward accuracy near 0.25 (noise-dominated margins) for the same valid NDCG@10 (0.0504 both).
    policy_dropout_in_dpo: bool = False

    def __post_init__(self) -> None:
        if self.negative_strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(f"DPOConfig.negative_strategy={self.negative_strategy!r}: expected one of "
                             f"{NEGATIVE_STRATEGIES}.")
        if self.k < 1:
            raise ValueError(f"DPOConfig.k={self.k}: the top-K pool needs at least one item.")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training stage. `batch_size` counts sequences (all their positions are targets)."""

    stage: str = "warmup"
    # Upper bound; early stopping ends the run. ID-only warm-up on amazon-beauty peaked at epoch 16
    # (the paper's 15 is close); the DPO stage is usually given a handful of epochs.
    epochs: int = 50
    batch_size: int = 256
    # Length-sorted groups each batch is encoded in (exact; less padding). 1 = one padded call.
    encoder_chunks: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # a safety net only (RecBole does not clip); 0 disables
    seed: int = 2020
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 if bf16 is unsupported), fp32 elsewhere
    patience: int = 5  # evaluations without a new best (>=) before stopping; RecBole uses 10
    eval_every: int = 1
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    valid_metric: str = "ndcg@10"
    dpo: DPOConfig = field(default_factory=DPOConfig)
    checkpoint_dir: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.dpo, dict):
            object.__setattr__(self, "dpo", DPOConfig(**self.dpo))
        if self.stage not in STAGES:
            raise ValueError(f"TrainConfig.stage={self.stage!r}: expected one of {STAGES}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: expected one of {PRECISIONS}.")
        valid_metrics = {f"{name}@{k}" for name in ("ndcg", "mrr", "hit") for k in VALID_KS}
        if self.valid_metric not in valid_metrics:
            raise ValueError(f"TrainConfig.valid_metric={self.valid_metric!r}: expected one of {sorted(valid_metrics)}.")
        positive = (self.batch_size, self.encoder_chunks, self.eval_every, self.patience)
        if self.epochs < 0 or min(positive) < 1:
            raise ValueError(f"TrainConfig: need epochs={self.epochs} >= 0 and batch_size, encoder_chunks, "
                             f"eval_every, patience = {positive} all >= 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_key_fields(self) -> dict[str, Any]:
        values = self.to_dict()
        for name in _NOT_IN_RUN_KEY:
            values.pop(name)
        if self.stage == "warmup":
            values.pop("dpo")
        return values


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _set_policy_mode(policy: nn.Module, stochastic: bool) -> None:
    """Training mode; with stochastic=False dropout and MoE router noise are switched off."""
    policy.train()
    if not stochastic:
        for module in policy.modules():
            if isinstance(module, (nn.Dropout, SparseNoisyMoE)):
                module.eval()


class _Stage:
    """State of one training run: the policy, optional frozen reference, optimizer and RNGs."""

    def __init__(self, model: nn.Module, data: SequenceData, config: TrainConfig,
                 reference_model: nn.Module | None) -> None:
        self.config = config
        self.data = data
        self.device = resolve_device(config.device)
        self.autocast_dtype = _autocast_dtype(config.precision, self.device)
        self.is_dpo = config.stage == "dpo"
        torch.manual_seed(config.seed)
        shared_buffers = {id(buffer): buffer for buffer in model.buffers()}
        self.policy = copy.deepcopy(model, memo=shared_buffers).to(self.device)  # the caller's model is untouched
        self.reference = None
        if self.is_dpo:
            self.reference = frozen_reference(reference_model if reference_model is not None else model)
            self.reference.to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.train_items = torch.from_numpy(data.train.items).to(self.device)
        self.train_timestamps = torch.from_numpy(data.train.timestamps).to(self.device)
        self.aux_weight = getattr(getattr(model, "config", None), "moe_aux_weight", 0.0)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def rng_state(self) -> dict[str, Any]:
        state = {"shuffle": self.shuffle_generator.get_state(), "torch": torch.get_rng_state(),
                 "device_type": self.device.type, "sample": self.sample_generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.shuffle_generator.set_state(state["shuffle"])
        torch.set_rng_state(state["torch"])
        if state["device_type"] != self.device.type:  # device RNG states do not transfer between devices
            logger.warning("resuming on %s a run saved on %s: device random streams restart from the seed.",
                           self.device.type, state["device_type"])
            return
        self.sample_generator.set_state(state["sample"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # ------------------------------------------------------------------ one step
    def encode_targets(self, model: nn.Module, inputs: torch.Tensor, input_times: torch.Tensor,
                       is_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States at the target positions (N, M*d), in row-major order of a length-sorted batch.

        The rows are encoded in `encoder_chunks` contiguous groups, each cut to its own longest
        sequence: the same result as one padded call (attention is causal and masks padding),
        with far fewer padding positions. The MoE aux loss is averaged over the groups.
        """
        states, aux_losses = [], []
        for rows in torch.arange(inputs.shape[0], device=inputs.device).chunk(self.config.encoder_chunks):
            chunk_targets, chunk_inputs, chunk_times = trim_to_longest(is_target[rows], inputs[rows], input_times[rows])
            chunk_states, aux_loss = model.encode(chunk_inputs, chunk_times)
            states.append(chunk_states[chunk_targets])
            aux_losses.append(aux_loss)
        return torch.cat(states), torch.stack(aux_losses).mean()

    def step_losses(self, items: torch.Tensor, timestamps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch of right-padded windows (B, max_seq_len + 1)."""
        by_length = (items > 0).sum(dim=1).argsort()
        items, timestamps = items[by_length], timestamps[by_length]
        inputs, targets, input_times = items[:, :-1], items[:, 1:], timestamps[:, :-1]
        is_target = targets > 0
        positive_item = targets[is_target]  # y_w, (N,)
        with self.autocast():
            target_states, aux_loss = self.encode_targets(self.policy, inputs, input_times, is_target)
            logits = self.policy.all_item_logits(target_states)  # (N, n_items+1)
        ce_loss = F.cross_entropy(logits.float(), positive_item)
        losses = {"ce_loss": ce_loss, "aux_loss": aux_loss, "n_targets": positive_item.numel()}
        loss = ce_loss + self.aux_weight * aux_loss
        if self.is_dpo:
            dpo = self.config.dpo
            exclude = None
            if dpo.exclude_history:
                sequence_of_target = torch.arange(items.shape[0], device=items.device)[:, None].expand_as(targets)
                exclude = history_exclusion_mask(items, logits.shape[1] - 1)[sequence_of_target[is_target]]
            sampled_negative = sample_negatives(logits, positive_item, dpo.negative_strategy, dpo.k,
                                                self.sample_generator, exclude)
            pair = torch.stack([positive_item, sampled_negative], dim=1)  # (N, 2): (y_w, y_l)
            policy_scores = logits.gather(1, pair).float()
            with torch.no_grad(), self.autocast():
                reference_states, _ = self.encode_targets(self.reference, inputs, input_times, is_target)
                reference_scores = self.reference.item_logits(reference_states, pair).float()
            pair_losses = dpo_loss(policy_scores[:, 0], policy_scores[:, 1],
                                   reference_scores[:, 0], reference_scores[:, 1], dpo.beta)
            losses["dpo_loss"] = pair_losses.mean()
            losses.update(implicit_reward_stats(policy_scores[:, 0], policy_scores[:, 1],
                                                reference_scores[:, 0], reference_scores[:, 1], dpo.beta))
            loss = ce_loss + dpo.lambda_dpo * losses["dpo_loss"] + self.aux_weight * aux_loss  # Eq. (6)
        losses["loss"] = loss
        return losses

    def check_finite(self, losses: dict[str, torch.Tensor], epoch: int, step: int, run_dir: Path | None) -> None:
        value = float(losses["loss"].detach())
        if math.isfinite(value):
            return
        parts = ", ".join(f"{name}={float(losses[name].detach()):.4g}"
                          for name in ("ce_loss", "dpo_loss", "aux_loss") if name in losses)
        has_best = run_dir is not None and (run_dir / BEST_WEIGHTS).exists()
        kept = f"; the best checkpoint in {run_dir} was not overwritten" if has_best else "; nothing was saved"
        raise FloatingPointError(
            f"{self.config.stage} stage, epoch {epoch}, step {step}: loss is {value} ({parts}). Likely causes: "
            f"learning rate too high (lr={self.config.lr}; try 10x lower), half-precision overflow "
            f"(precision={self.config.precision}; try 'fp32'), or NaN/inf in the item features{kept}."
        )

    def train_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        _set_policy_mode(self.policy, stochastic=not self.is_dpo or self.config.dpo.policy_dropout_in_dpo)
        n_windows = self.train_items.shape[0]
        order = torch.randperm(n_windows, generator=self.shuffle_generator).to(self.device)
        batch_starts = range(0, n_windows, self.config.batch_size)
        totals: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step
        n_total = 0
        progress = tqdm(batch_starts, desc=f"{self.config.stage} epoch {epoch}", leave=False,
                        disable=not self.config.progress_bar)
        for step, start in enumerate(progress, start=1):
            rows = order[start:start + self.config.batch_size]
            losses = self.step_losses(self.train_items[rows], self.train_timestamps[rows])
            self.check_finite(losses, epoch, step, run_dir)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n_targets = losses.pop("n_targets")
            for name, value in losses.items():  # means are weighted by targets, reward sums are already sums
                weight = 1.0 if name.startswith("rewards_") else n_targets
                totals[name] = totals.get(name, 0.0) + value.detach().float() * weight
            n_total += n_targets
        return {name: float(value) / max(n_total, 1) for name, value in totals.items()}

    def validate(self) -> dict[str, float]:
        result = evaluate_model(self.policy, self.data.valid, ks=VALID_KS,
                                batch_size=self.config.eval_batch_size, device=self.device)
        return result["metrics"]


def item_features_fingerprint(model: nn.Module) -> str:
    """The frozen feature buffers' fingerprint: non-persistent, so `state_fingerprint` misses them,
    yet a run on re-extracted features is another run."""
    return features_fingerprint(*(getattr(model, name, None)
                                  for name in ("text_features", "image_features", "image_mask")))


def _log_epoch(entry: dict[str, Any]) -> None:
    shown = {k: v for k, v in entry.items() if k not in ("stage", "epoch")}
    text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    logger.info("%s epoch %d: %s", entry["stage"], entry["epoch"], text)


def train(model: nn.Module, data: SequenceData, config: TrainConfig,
          reference_model: nn.Module | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train one stage and return (best model on validation, in eval mode; per-epoch history).

    `model` (with item features attached) is not modified: warm-up starts from its weights, DPO
    uses it as pi_sft for both the policy start and the frozen reference (unless
    `reference_model` is given). With `config.checkpoint_dir`, the run resumes from its last epoch
    and a finished run returns its best model without training.
    """
    stage = _Stage(model, data, config, reference_model)
    policy, valid_metric = stage.policy, config.valid_metric
    run_dir = checkpoint = None
    if config.checkpoint_dir:
        model_config = model.config.to_dict() if hasattr(model, "config") else None
        key = run_key(model_config, config.run_key_fields(), data.fingerprint(), state_fingerprint(model),
                      item_features_fingerprint(model))
        run_dir = Path(config.checkpoint_dir) / f"{config.stage}-{key}"
        checkpoint = RunCheckpoint(run_dir)

    history: list[dict[str, Any]] = []
    best = {"metric": -math.inf, "epoch": 0, "weights": None, "evals_since": 0}
    start_epoch = 1
    state = checkpoint.load_state() if checkpoint else None
    if state is not None:
        history, best_info = list(state["history"]), state["best"]
        finished = checkpoint.is_done() and (state["stopped_early"] or state["epoch"] >= config.epochs)
        if finished:
            logger.info("%s: finished run found in %s (best epoch %d), not training again.",
                        config.stage, run_dir, best_info["epoch"])
            checkpoint.load_weights(policy, "best")
            return policy.eval(), history
        checkpoint.load_weights(policy, "last")
        stage.optimizer.load_state_dict(state["optimizer"])
        stage.set_rng_state(state["rng"])
        best.update(metric=best_info["metric"], epoch=best_info["epoch"], evals_since=best_info["evals_since"])
        if best_info["epoch"] > 0:
            best["weights"] = checkpoint.read_weights("best")
        start_epoch = state["epoch"] + 1
        logger.info("%s: resuming %s from epoch %d.", config.stage, run_dir, start_epoch)

    if stage.is_dpo and start_epoch == 1:  # the warm-up model's score: the bar DPO has to clear
        entry = {"stage": config.stage, "epoch": 0, **{f"valid_{k}": v for k, v in stage.validate().items()}}
        history.append(entry)
        _log_epoch(entry)

    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        entry = {"stage": config.stage, "epoch": epoch, **stage.train_epoch(epoch, run_dir)}
        entry["train_seconds"] = time.perf_counter() - started
        improved = False
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            started = time.perf_counter()
            entry.update({f"valid_{k}": v for k, v in stage.validate().items()})
            entry["eval_seconds"] = time.perf_counter() - started
            score = entry[f"valid_{valid_metric}"]
            improved = score >= best["metric"]
            if improved:
                best.update(metric=score, epoch=epoch, weights=weights_copy(policy), evals_since=0)
            else:
                best["evals_since"] += 1
        history.append(entry)
        _log_epoch(entry)
        stopped_early = best["evals_since"] >= config.patience
        if checkpoint:
            checkpoint.save_epoch(policy, {
                "epoch": epoch, "optimizer": stage.optimizer.state_dict(), "rng": stage.rng_state(),
                "history": history, "stopped_early": stopped_early,
                "best": {"metric": best["metric"], "epoch": best["epoch"], "evals_since": best["evals_since"]},
            }, is_best=improved)
        if stopped_early:
            logger.info("%s: early stop after epoch %d (best epoch %d, valid %s=%.4f).",
                        config.stage, epoch, best["epoch"], valid_metric, best["metric"])
            break

    if best["weights"] is not None:
        policy.load_state_dict(best["weights"])
    if checkpoint:
        if best["weights"] is None:  # zero epochs trained: the starting model is the result
            checkpoint.save_best(policy)
        checkpoint.mark_done({"best_epoch": best["epoch"], "best_metric": best["metric"], "epochs_run": epoch,
                              "stopped_early": stopped_early})
    return policy.eval(), history
