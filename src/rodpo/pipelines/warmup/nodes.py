"""Nodes of ``warmup``. Training I/O (epoch checkpoints for resuming) lives in the trainer."""

from __future__ import annotations

import numpy as np
import polars as pl

from rodpo.lineage import FEATURES, ITEM_CATALOG, STAGE, check_catalog, features_fingerprint
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import build_model
from rodpo.sequences import build_sequence_data
from rodpo.training.trainer import TrainConfig, train


def train_warmup_model(
    sequence_splits: pl.DataFrame,
    item_id_map: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    feature_manifest: dict,
    model: dict,
    warmup: TrainConfig,
) -> tuple[RoDPOModel, list[dict]]:
    """Stage 1 (paper §3.4): CE over all items at every position; returns pi_sft and its history.

    The features must belong to the item catalog of the splits; the model records both (lineage).
    """
    if warmup.stage != "warmup":
        raise ValueError(f"params:warmup has stage={warmup.stage!r}; the warm-up stage must say 'warmup'.")
    catalog = check_catalog(item_id_map, feature_manifest)
    data = build_sequence_data(sequence_splits, model.get("max_seq_len", 50), n_items=item_id_map.height)
    fresh = build_model(
        data, model, item_text_features, item_image_features, item_image_mask, seed=warmup.seed
    )
    trained, history = train(fresh, data, warmup)
    trained.lineage = {STAGE: "warmup", ITEM_CATALOG: catalog,
                       FEATURES: features_fingerprint(item_text_features, item_image_features, item_image_mask)}
    return trained, history
