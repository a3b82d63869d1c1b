"""Build or re-attach a RoDPO model from the pipeline's data and feature matrices.

Features are optional: a modality the parameters ask for is used only when its matrix has
columns (and, for images, at least one usable image). Every consumer of a saved model goes
through `attach_item_features`, since checkpoints deliberately omit the frozen features.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl
import torch

from rodpo.lineage import FEATURES, check_catalog, features_fingerprint, model_lineage, require_same
from rodpo.model.config import ModelConfig
from rodpo.model.encoder import RoDPOModel
from rodpo.sequences import SequenceData, build_sequence_data

logger = logging.getLogger(__name__)

# ModelConfig fields that come from the data, never from parameters.
DATA_FIELDS = ("n_items", "text_dim", "image_dim", "time_min", "time_max")


def available_modalities(
    requested: list[str] | tuple[str, ...],
    text: np.ndarray | None,
    image: np.ndarray | None,
    image_mask: np.ndarray | None,
) -> tuple[str, ...]:
    """The requested modalities that the extracted features can actually serve, in the requested
    order with "id" first. "id" is used only when asked for (without it: the text-only ablation)."""
    usable = {
        "id": True,
        "text": text is not None and text.ndim == 2 and text.shape[1] > 0,
        "image": image is not None and image.ndim == 2 and image.shape[1] > 0
        and image_mask is not None and bool(np.asarray(image_mask).any()),
    }
    unknown = set(requested) - set(usable)
    if unknown:
        raise ValueError(f"model.modalities has unknown entries {sorted(unknown)}; use id, text, image.")
    dropped = [m for m in requested if not usable[m]]
    kept = (["id"] if "id" in requested else []) + [m for m in requested if m != "id" and usable[m]]
    if not kept:
        raise ValueError(
            f"model.modalities={list(requested)}: no features for {dropped or 'any modality'} (their matrices are "
            "(n_items + 1, 0): disabled or not extracted), so the model would have no input. Add id to "
            "model.modalities (conf/local/parameters_warmup.yml; --params='model.modalities=[id]' for ID only), "
            "or enable that modality's feature_extraction for this dataset and rerun it."
        )
    if dropped:
        logger.warning("Modalities %s requested but no features for them: training without.", dropped)
    return tuple(kept)


def build_model(
    data: SequenceData,
    model_params: dict[str, Any],
    text: np.ndarray | None = None,
    image: np.ndarray | None = None,
    image_mask: np.ndarray | None = None,
    *,
    seed: int = 2020,
) -> RoDPOModel:
    """A fresh model sized by the data (items, time range) and the available features.

    Initialised from `seed`, so a rerun builds the same starting weights (and so finds and resumes
    its own checkpoint).
    """
    clashing = set(model_params) & set(DATA_FIELDS)
    if clashing:
        raise ValueError(f"model parameters {sorted(clashing)} are set from the data; remove them.")
    params = dict(model_params)
    modalities = available_modalities(params.pop("modalities", ("id", "text", "image")), text, image, image_mask)
    config = ModelConfig(
        n_items=data.n_items,
        modalities=modalities,
        text_dim=int(text.shape[1]) if "text" in modalities else None,
        image_dim=int(image.shape[1]) if "image" in modalities else None,
        time_min=data.time_min,
        time_max=data.time_max,
        **params,
    )
    torch.manual_seed(seed)
    return attach_item_features(RoDPOModel(config), text, image, image_mask)


def attach_item_features(
    model: RoDPOModel,
    text: np.ndarray | None,
    image: np.ndarray | None,
    image_mask: np.ndarray | None,
) -> RoDPOModel:
    """Give a (loaded) model its frozen feature buffers; checks they match the model's config and,
    for a model that recorded its lineage, that they are the very arrays it was trained on."""
    require_same("set of item features", model_lineage(model).get(FEATURES),
                 features_fingerprint(text, image, image_mask),
                 expected_from="the model", found_from="the item feature arrays in the catalog",
                 redo="Retrain on the current features (kedro run --pipelines=rodpo), or rerun "
                      "data_processing and feature_extraction if the features are the stale part.")
    expected_rows = model.config.n_items + 1
    for name, values in (("text", text), ("image", image)):
        if name in model.config.modalities and (values is None or values.shape[0] != expected_rows):
            raise ValueError(
                f"the model was trained on {model.config.n_items} items with {name} features, but the "
                f"{name} feature matrix has shape {None if values is None else values.shape}; rerun "
                "feature_extraction for this dataset (or retrain)."
            )
    model.set_item_features(text=text, image=image, image_mask=image_mask)
    return model


def prepared_model(
    model: RoDPOModel,
    sequence_splits: pl.DataFrame,
    item_id_map: pl.DataFrame,
    text: np.ndarray | None,
    image: np.ndarray | None,
    image_mask: np.ndarray | None,
    feature_manifest: dict | None = None,
    model_name: str = "the model",
) -> tuple[RoDPOModel, SequenceData]:
    """A saved model and the sequences it reads, as every node that trains or scores it needs them:
    its item catalog (and the features') checked against the data's, its frozen features
    re-attached, the splits cut to its own max_seq_len."""
    check_catalog(item_id_map, feature_manifest, model, model_name)
    model = attach_item_features(model, text, image, image_mask)
    return model, build_sequence_data(sequence_splits, model.config.max_seq_len, n_items=model.config.n_items)
