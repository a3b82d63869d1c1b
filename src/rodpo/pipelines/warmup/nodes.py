"""Nodes of ``warmup``. Training I/O (epoch checkpoints for resuming) lives in the trainer."""

from __future__ import annotations

import numpy as np
import polars as pl

from rodpo.model.encoder import RoDPOModel
from rodpo.training.assembly import build_model
from rodpo.training.batching import build_sequence_data
from rodpo.training.trainer import TrainConfig, train


def train_warmup_model(
    sequence_splits: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    model: dict,
    warmup: TrainConfig,
) -> tuple[RoDPOModel, list[dict]]:
    """Stage 1 (paper §3.4): CE over all items at every position; returns pi_sft and its history."""
    if warmup.stage != "warmup":
        raise ValueError(f"params:warmup has stage={warmup.stage!r}; the warm-up stage must say 'warmup'.")
    data = build_sequence_data(sequence_splits, model.get("max_seq_len", 50))
    fresh = build_model(
        data, model, item_text_features, item_image_features, item_image_mask, seed=warmup.seed
    )
    return train(fresh, data, warmup)
