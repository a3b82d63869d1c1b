"""Nodes of ``rodpo`` (stage 2, paper Algorithm 1)."""

from __future__ import annotations

import numpy as np
import polars as pl

from rodpo.lineage import STAGE, check_catalog, model_lineage
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import attach_item_features
from rodpo.sequences import build_sequence_data
from rodpo.training.trainer import TrainConfig, train


def train_rodpo_model(
    warmup_model: RoDPOModel,
    sequence_splits: pl.DataFrame,
    item_id_map: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    feature_manifest: dict,
    rodpo: TrainConfig,
) -> tuple[RoDPOModel, list[dict]]:
    """pi_theta <- pi_sft, pi_ref <- frozen pi_sft; optimise L_CE + lambda * L_DPO (Eq. 6)."""
    if rodpo.stage != "dpo":
        raise ValueError(f"params:rodpo has stage={rodpo.stage!r}; the DPO stage must say 'dpo'.")
    check_catalog(item_id_map, feature_manifest, warmup_model, "the warm-up model")
    sft = attach_item_features(warmup_model, item_text_features, item_image_features, item_image_mask)
    data = build_sequence_data(sequence_splits, sft.config.max_seq_len, n_items=sft.config.n_items)
    trained, history = train(sft, data, rodpo)
    trained.lineage = {**model_lineage(warmup_model), STAGE: "dpo"}
    return trained, history
