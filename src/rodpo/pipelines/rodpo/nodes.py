"""Nodes of ``rodpo`` (stage 2, paper Algorithm 1)."""

from __future__ import annotations

import numpy as np
import polars as pl

from rodpo.lineage import STAGE, model_lineage
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import prepared_model
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
    sft, data = prepared_model(warmup_model, sequence_splits, item_id_map, item_text_features, item_image_features,
                               item_image_mask, feature_manifest, "the warm-up model")
    trained, history = train(sft, data, rodpo)
    trained.lineage = {**model_lineage(warmup_model), STAGE: "dpo"}
    return trained, history
