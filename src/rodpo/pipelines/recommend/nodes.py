"""Nodes of ``recommend``: an adapter over ``rodpo.evaluation.recommend``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rodpo.evaluation.recommend import DEFAULT_BATCH_SIZE, DEFAULT_TOP_N, recommend_top_n
from rodpo.lineage import STAGE, check_catalog, model_lineage
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import attach_item_features

RECOMMENDABLE_MODELS = ("rodpo", "warmup")
STAGE_OF_MODEL = {"rodpo": "dpo", "warmup": "warmup"}


@dataclass
class RecommendParams:
    model: str = "rodpo"            # which trained model recommends: rodpo | warmup
    top_n: int = DEFAULT_TOP_N
    exclude_history: bool = True    # never recommend an item the user already has
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in RECOMMENDABLE_MODELS:
            raise ValueError(f"params:recommend.model={self.model!r}: expected one of {RECOMMENDABLE_MODELS}, "
                             "e.g. `kedro run --pipelines=recommend --params=recommend.model=warmup`.")


def recommend_for_all_users(
    recommendation_model: RoDPOModel,
    sequences: pl.LazyFrame | pl.DataFrame,
    user_id_map: pl.DataFrame,
    item_id_map: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    recommend: RecommendParams,
) -> pl.DataFrame:
    """(user_id, rank, item_id, score) for every user, scored on the full history, original ids."""
    check_catalog(item_id_map, model=recommendation_model, model_name="the recommendation model")
    check_served_model(recommendation_model, recommend.model)
    model = attach_item_features(recommendation_model, item_text_features, item_image_features, item_image_mask)
    sequences = sequences.lazy().collect()  # the catalog scans the table (data_processing streams it)
    return recommend_top_n(model, sequences, user_id_map, item_id_map, top_n=recommend.top_n,
                           exclude_history=recommend.exclude_history, batch_size=recommend.batch_size,
                           device=recommend.device)


def check_served_model(model: RoDPOModel, requested: str) -> None:
    """The catalog picks the file from `recommend_model` (globals) or `--params recommend.model=...`;
    a `recommend.model` set only in a parameters file would change this node but not the file."""
    stage = model_lineage(model).get(STAGE)
    if stage is not None and stage != STAGE_OF_MODEL[requested]:
        served = next(name for name, value in STAGE_OF_MODEL.items() if value == stage)
        raise ValueError(
            f"params:recommend.model={requested!r}, but the catalog loaded the {served} model. The served "
            f"model is chosen by `recommend_model` in conf/<env>/globals.yml (or per run with "
            f"--params=recommend.model={requested}); do not set recommend.model in a parameters file."
        )
