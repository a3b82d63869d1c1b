"""Lineage fingerprints: which item catalog and which feature arrays a result was built from.

Every stage that outlives one run records the fingerprints of its inputs (the feature manifest
records the item catalog; a saved model records the catalog and its feature arrays in its header),
and every stage that combines results of different runs checks them, so an output of one
processing run is never silently paired with features or a model of another.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl

ITEM_CATALOG = "item_catalog"   # sha256 of (item_id, original_item_id), in id order
FEATURES = "features"           # sha256 of the text, image and image-mask arrays
STAGE = "stage"                 # warmup | dpo: which training stage produced a model


class LineageError(ValueError):
    """Inputs of one node come from different, incompatible runs."""


def catalog_fingerprint(table: pl.DataFrame) -> str:
    """sha256 of an item table's (item_id, original_item_id) pairs in id order (`items` or `item_id_map`)."""
    missing = {"item_id", "original_item_id"} - set(table.columns)
    if missing:
        raise ValueError(f"catalog_fingerprint: the table lacks {sorted(missing)}; pass `items` or `item_id_map`.")
    pairs = table.select(pl.col("item_id").cast(pl.Int64), pl.col("original_item_id").cast(pl.Utf8)).sort("item_id")
    digest = hashlib.sha256(str(pairs.height).encode())
    digest.update(pairs["item_id"].to_numpy().tobytes())
    for original in pairs["original_item_id"].to_list():
        digest.update(original.encode() + b"\x00")
    return digest.hexdigest()


def arrays_fingerprint(*arrays: Any) -> str:
    """sha256 of arrays (NumPy or torch; None allowed) including dtype and shape, so equal bytes of
    another shape never collide."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        if hasattr(array, "detach"):  # a torch tensor
            array = array.detach().cpu().numpy()
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def features_fingerprint(text: Any, image: Any, image_mask: Any) -> str:
    """The fingerprint of one set of item features, as a model records it."""
    return arrays_fingerprint(text, image, image_mask)


def require_same(kind: str, expected: str | None, found: str | None, *, expected_from: str, found_from: str,
                 redo: str) -> None:
    """Raise a LineageError naming both sources and the run to redo when two fingerprints differ.

    A missing fingerprint (an artefact written before lineage was recorded) is not an error.
    """
    if expected is None or found is None or expected == found:
        return
    raise LineageError(
        f"{found_from} was built from a different {kind} than {expected_from} "
        f"({found[:12]} vs {expected[:12]}): they come from different runs. {redo}"
    )


def model_lineage(model: Any) -> dict[str, str]:
    """The lineage a (loaded) model carries; {} for models saved without one."""
    return dict(getattr(model, "lineage", None) or {})


def check_catalog(item_id_map: pl.DataFrame, feature_manifest: dict | None = None, model: Any = None,
                  model_name: str = "the model") -> str:
    """The current item catalog's fingerprint, after checking that the features (their manifest) and
    `model` were built from it; a LineageError names the run to redo."""
    catalog = catalog_fingerprint(item_id_map)
    if feature_manifest is not None:
        require_same("item catalog", catalog, feature_manifest.get(ITEM_CATALOG),
                     expected_from="the processed data (item_id_map)", found_from="the item features",
                     redo="Rerun feature extraction: kedro run --pipelines=feature_extraction.")
    if model is not None:
        require_same("item catalog", catalog, model_lineage(model).get(ITEM_CATALOG),
                     expected_from="the processed data (item_id_map)", found_from=model_name,
                     redo="Retrain it on the current data: kedro run --pipelines=rodpo.")
    return catalog
