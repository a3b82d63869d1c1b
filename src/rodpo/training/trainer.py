"""One trainer for both stages of RoDPO (paper §3.4, Algorithm 1), on one process or many.

`train` runs a stage (stage.py: losses, epochs) with early stopping on valid NDCG@10
(`valid_metric`), where a value >= the best so far counts as a new best (RecBole's rule: on a
plateau the later model wins); patience counts evaluations. In stage 2 the warm-up model itself is
epoch 0 and a candidate: if no epoch beats it, the stage returns (and saves as best) its weights.
Each epoch is checkpointed, so an interrupted run resumes where it stopped and a finished run is
reused.

Distributed (torch.distributed, DDP): `world_size=N` starts N local ranks from here (this process
is rank 0); under torchrun the ranks are torchrun's. Every rank trains its share of each global
batch; rank 0 alone writes checkpoints and returns the model. Rank 0 holds the run folder's writer
lock for the whole run (checkpoints.RunLock): a second process training the same run is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from rodpo.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_ranks_ok,
    backend_for,
    barrier,
    check_world_size,
    init_from_torchrun,
    launch_local,
    launched_by_torchrun,
)
from rodpo.lineage import features_fingerprint
from rodpo.sequences import SequenceData
from rodpo.training.checkpoints import (
    RunCheckpoint,
    RunInProgressError,
    RunLock,
    run_key,
    state_fingerprint,
    weights_copy,
)
from rodpo.training.config import DPOConfig, TrainConfig  # noqa: F401 - the trainer's public settings
from rodpo.training.stage import PairMonitor, Stage

logger = logging.getLogger("rodpo.training")


def item_features_fingerprint(model: nn.Module) -> str:
    """The frozen feature buffers' fingerprint: non-persistent, so `state_fingerprint` misses them,
    yet a run on re-extracted features is another run."""
    return features_fingerprint(*(getattr(model, name, None)
                                  for name in ("text_features", "image_features", "image_mask")))


def run_directory(model: nn.Module, data: SequenceData, config: TrainConfig) -> Path | None:
    """Where a run's checkpoints live: keyed by everything the result depends on."""
    if not config.checkpoint_dir:
        return None
    model_config = model.config.to_dict() if hasattr(model, "config") else None
    key = run_key(model_config, config.run_key_fields(), data.fingerprint(), state_fingerprint(model),
                  item_features_fingerprint(model))
    return Path(config.checkpoint_dir) / f"{config.stage}-{key}"


def _log_epoch(entry: dict[str, Any]) -> None:
    shown = {k: v for k, v in entry.items() if k not in ("stage", "epoch")}
    text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    logger.info("%s epoch %d: %s", entry["stage"], entry["epoch"], text)


def count_epoch_zero(best: dict[str, Any], history: list[dict[str, Any]], valid_metric: str) -> None:
    """Make the warm-up (stage 2's epoch 0) the best when it scores above every stage-2 epoch: a
    no-op for runs that counted it from the start, the fix for runs saved before they did."""
    key = f"valid_{valid_metric}"
    start = next((entry for entry in history if entry.get("epoch") == 0 and key in entry), None)
    if start is not None and best["epoch"] > 0 and start[key] > best["metric"]:
        evaluated = sum(1 for entry in history if entry.get("epoch", 0) >= 1 and key in entry)
        best.update(metric=start[key], epoch=0, evals_since=evaluated)


def train(model: nn.Module, data: SequenceData, config: TrainConfig, reference_model: nn.Module | None = None,
          pair_monitor: PairMonitor | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train one stage and return (best model on validation, in eval mode; per-epoch history).

    `model` (with item features attached) is not modified: warm-up starts from its weights, DPO
    uses it as pi_sft for both the policy start and the frozen reference (unless
    `reference_model` is given). With `config.checkpoint_dir`, the run resumes from its last epoch
    and a finished run returns its best model without training. `pair_monitor` sees every DPO
    step's sampled pairs (single process only).
    """
    if pair_monitor is not None and (config.world_size > 1 or launched_by_torchrun()):
        raise ValueError("train: pair_monitor works in a single process only; set world_size=1.")
    if pair_monitor is not None:
        return train_on_rank(SINGLE_PROCESS, model, data, config, reference_model, pair_monitor)
    if launched_by_torchrun():
        if config.world_size != 1:
            raise ValueError(f"{config.stage}.world_size={config.world_size} under torchrun: leave it at 1, "
                             "torchrun's --nnodes / --nproc-per-node set the ranks.")
        context = init_from_torchrun(backend_for(config.device), config.dist_timeout_s)
        return train_on_rank(context, model, data, config, reference_model)
    check_world_size(config.world_size, config.device, parameter=f"{config.stage}.world_size")
    return launch_local(train_on_rank, config.world_size, (model, data, config, reference_model),
                        backend=backend_for(config.device), timeout_s=config.dist_timeout_s)


def train_on_rank(context: DistributedContext, model: nn.Module, data: SequenceData, config: TrainConfig,
                  reference_model: nn.Module | None = None,
                  pair_monitor: PairMonitor | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The training loop of one rank (the whole run when `context` is the single process)."""
    stage = Stage(model, data, config, reference_model, context, pair_monitor)
    run_dir = run_directory(model, data, config)
    with _writer_lock(run_dir, context, stage):
        return _train_epochs(context, stage, config, run_dir)


@contextlib.contextmanager
def _writer_lock(run_dir: Path | None, context: DistributedContext, stage: Stage) -> Iterator[None]:
    """Rank 0 (the writer) holds the run folder's lock for the whole run; if it cannot, every rank stops."""
    lock, refused = None, None
    if run_dir is not None and context.is_writer:
        try:
            lock = RunLock(run_dir).acquire()
        except RunInProgressError as error:
            refused = error
    if run_dir is not None and not all_ranks_ok(refused is None, context, stage._collective_device):
        raise refused or RunInProgressError(f"rank 0 could not lock {run_dir}: another process trains this run.")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _train_epochs(context: DistributedContext, stage: Stage, config: TrainConfig,
                  run_dir: Path | None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Epochs with early stopping, checkpointed in `run_dir` (resumed from it, or reused when finished)."""
    policy, valid_metric = stage.policy, config.valid_metric
    checkpoint = RunCheckpoint(run_dir) if run_dir is not None else None
    writer = checkpoint if context.is_writer else None  # only rank 0 writes files

    history: list[dict[str, Any]] = []
    best = {"metric": -math.inf, "epoch": 0, "weights": None, "evals_since": 0}
    # Stage 2's epoch 0 is the warm-up itself, a candidate like any epoch: stage 2 never returns a
    # model that is worse on validation than the one it started from.
    start_weights = weights_copy(policy) if stage.is_dpo else None
    start_epoch = 1
    state = checkpoint.load_state() if checkpoint else None
    if state is not None:
        history, best_info = list(state["history"]), state["best"]
        best.update(metric=best_info["metric"], epoch=best_info["epoch"], evals_since=best_info["evals_since"])
        if stage.is_dpo:
            count_epoch_zero(best, history, valid_metric)
        finished = checkpoint.is_done() and (state["stopped_early"] or state["epoch"] >= config.epochs)
        if finished:
            logger.info("%s: finished run found in %s (best epoch %d), not training again.",
                        config.stage, run_dir, best["epoch"])
            if stage.is_dpo and best["epoch"] == 0:
                policy.load_state_dict(start_weights)
            else:
                checkpoint.load_weights(policy, "best")
            return policy.eval(), history
        checkpoint.load_weights(policy, "last")
        stage.optimizer.load_state_dict(state["optimizer"])
        stage.set_rng_state(state["rng"])
        if best["epoch"] > 0:
            best["weights"] = checkpoint.read_weights("best")
        elif stage.is_dpo:
            best["weights"] = start_weights
        start_epoch = state["epoch"] + 1
        logger.info("%s: resuming %s from epoch %d.", config.stage, run_dir, start_epoch)

    if stage.is_dpo and start_epoch == 1:  # the warm-up model's score: the bar DPO has to clear
        entry = {"stage": config.stage, "epoch": 0, **{f"valid_{k}": v for k, v in stage.validate().items()}}
        history.append(entry)
        _log_epoch(entry)
        best.update(metric=entry[f"valid_{valid_metric}"], epoch=0, weights=start_weights, evals_since=0)

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
        if context.is_writer:
            _log_epoch(entry)
        stopped_early = best["evals_since"] >= config.patience
        if checkpoint:
            rng = stage.rng_state()  # collective: every rank takes part, rank 0 writes
            if writer:
                writer.save_epoch(policy, {
                    "epoch": epoch, "optimizer": stage.optimizer.state_dict(), "rng": rng,
                    "history": history, "stopped_early": stopped_early,
                    "best": {"metric": best["metric"], "epoch": best["epoch"], "evals_since": best["evals_since"]},
                }, is_best=improved)
            barrier(context)
        if stopped_early:
            if context.is_writer:
                logger.info("%s: early stop after epoch %d (best epoch %d, valid %s=%.4f).",
                            config.stage, epoch, best["epoch"], valid_metric, best["metric"])
            break

    if best["weights"] is not None:
        policy.load_state_dict(best["weights"])
    if stage.is_dpo and best["epoch"] == 0 and context.is_writer:
        logger.info("%s: no epoch beat the warm-up on valid %s (%.4f): returning the warm-up's weights (best epoch 0).",
                    config.stage, valid_metric, best["metric"])
    if writer:
        if best["weights"] is None or best["epoch"] == 0:  # the starting model is the result
            writer.save_best(policy)
        writer.mark_done({"best_epoch": best["epoch"], "best_metric": best["metric"], "epochs_run": epoch,
                          "stopped_early": stopped_early, "world_size": context.world_size})
    barrier(context)
    return policy.eval(), history  # every rank holds the same weights; only rank 0 wrote them


__all__ = ["DPOConfig", "TrainConfig", "SINGLE_PROCESS", "item_features_fingerprint", "run_directory", "train",
           "train_on_rank"]
