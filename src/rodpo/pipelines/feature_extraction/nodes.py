"""Nodes of ``feature_extraction``: adapters over ``rodpo.features``.

A preset may override the encoder defaults under ``dataset_spec.features`` (the demo uses a
packaged MiniLM and a seeded tiny CLIP, since no hub weights can be had offline). A disabled
modality, or a dataset without any image URL, yields a ``(n_items + 1, 0)`` matrix: downstream the
model then simply leaves that modality out.

``feature_extraction.world_size=N`` shards the items over N local ranks (one GPU each with NCCL,
gloo on CPU), the way warm-up training does; under torchrun the ranks are torchrun's and
world_size stays 1. Each rank fetches and encodes a contiguous slice of the items, the rows are
gathered in item-id order and only rank 0's outputs are written (rodpo.features.sharding). The
result equals a single-process run within float tolerance (1e-5 in fp32); the manifests record
the world size and each rank's items, seconds and device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from rodpo.distributed import DEFAULT_TIMEOUT_S
from rodpo.features.clip import MANIFEST_COUNTS as IMAGE_MANIFEST_COUNTS
from rodpo.features.clip import build_random_clip_checkpoint, extract_image_features
from rodpo.features.sharding import extract_on_ranks
from rodpo.features.templates import DEFAULT_TEMPLATE, check_template, empty_fields, has_value, without_fields
from rodpo.features.text import MANIFEST_COUNTS as TEXT_MANIFEST_COUNTS
from rodpo.features.text import extract_text_features
from rodpo.lineage import ITEM_CATALOG, catalog_fingerprint

logger = logging.getLogger(__name__)

RANDOM_CHECKPOINT = "demo-random"


def extract_item_text_features(
    items: pl.DataFrame, dataset_spec: dict, feature_extraction: dict, dataset: str
) -> tuple[np.ndarray, dict]:
    """(n_items + 1, d_text) float32, row i = item id i, row 0 zeros; plus a manifest part."""
    options = _options(feature_extraction, dataset_spec, "text")
    if not options.pop("enabled", True):
        return _absent(items), {"text_encoder": None, "text_skipped": "disabled"}
    if "template" in options:  # --params=...template={title} arrives as a dict: say how to quote it
        check_template(options["template"], _option_parameter(dataset_spec, "text", "template"))
    check_text_source(items, options.get("template", DEFAULT_TEMPLATE), dataset, dataset_spec)
    return _extract_on_ranks(extract_text_features, items, options, feature_extraction, "text", TEXT_MANIFEST_COUNTS)


def check_text_source(items: pl.DataFrame, template: str, dataset: str, dataset_spec: dict) -> None:
    """Refuse text features the data cannot give: no item metadata at all (e.g. a RecBole preset
    without its `.item` file), or a template field that no item has (a field the source lacks),
    which would otherwise encode the same "" or the same label for every item without a word."""
    off = (f"or turn text off for this preset: datasets.{dataset}.features.text.enabled: false "
           "(or --params=feature_extraction.text.enabled=false)")
    text_columns = ("title", "description", "brand", "categories")
    if not any(has_value(value) for column in text_columns for value in items[column].to_list()):
        where, add = "its item metadata file", "Fix the metadata download"
        if dataset_spec.get("source") == "recbole":
            where = f"{dataset_spec.get('base_url')}/{dataset_spec.get('category')}.item"
            add = "Add that file (item_id:token, title:token_seq, brand:token, categories:token_seq)"
        raise ValueError(
            f"dataset {dataset!r}: text features are enabled, but no item has any text "
            f"({', '.join(text_columns)} all empty): {where} is missing or holds none of these columns. "
            f"{add}, {off}."
        )
    missing = empty_fields(items, template)
    if missing:
        preset_template = f"datasets.{dataset}.features.text.template"
        source = "feature_extraction.text.template"
        if "template" in ((dataset_spec.get("features") or {}).get("text") or {}):
            source = preset_template
        fixed = without_fields(template, set(missing))
        fix = f"e.g. {preset_template}: {fixed!r}" if fixed else f"set {preset_template} to fields the items have"
        raise ValueError(
            f"dataset {dataset!r}: the text template {template!r} (from {source}) names "
            f"{', '.join('{' + name + '}' for name in missing)}, but no item of this dataset has a value "
            f"there: the source lacks that field. Drop it from this preset's template ({fix}), {off}."
        )


def extract_item_image_features(
    items: pl.DataFrame, dataset_spec: dict, feature_extraction: dict
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(n_items + 1, d_image) float32 and a bool mask (False = no usable image); plus a manifest part."""
    options = _options(feature_extraction, dataset_spec, "image")
    if not options.pop("enabled", True):
        return _absent(items), _no_images(items), {"image_encoder": None, "image_skipped": "disabled"}
    if items["image_url"].drop_nulls().str.len_chars().sum() == 0:
        logger.info("No item has an image URL: image features are absent for this dataset.")
        return _absent(items), _no_images(items), {"image_encoder": None, "image_skipped": "no image URLs"}
    seed = options.pop("random_checkpoint_seed", 0)
    if options.get("pretrained") == RANDOM_CHECKPOINT:
        checkpoint = Path(options["cache_dir"]).parent / f"random-{options['arch']}-seed{seed}.safetensors"
        if not checkpoint.exists():
            build_random_clip_checkpoint(checkpoint, arch=options["arch"], seed=seed)
        options["pretrained"] = str(checkpoint)
    return _extract_on_ranks(extract_image_features, items, options, feature_extraction, "image",
                             IMAGE_MANIFEST_COUNTS)


def merge_feature_manifests(text_manifest: dict, image_manifest: dict, items: pl.DataFrame, dataset: str) -> dict:
    """One JSON record of what was extracted, with which encoder, how long it took, and from which
    item catalog (checked by every stage that reads the features)."""
    return {"dataset": dataset, ITEM_CATALOG: catalog_fingerprint(items), "text": text_manifest,
            "image": image_manifest}


def _extract_on_ranks(extract, items: pl.DataFrame, options: dict, feature_extraction: dict, modality: str,
                      counts: tuple[str, ...]) -> tuple:
    """`extract` on `feature_extraction.world_size` ranks (or torchrun's), each on its slice of the items."""
    return extract_on_ranks(extract, items, {**options, "device": feature_extraction.get("device", "auto")},
                            modality=modality, counts=counts, world_size=feature_extraction.get("world_size", 1),
                            timeout_s=feature_extraction.get("dist_timeout_s", DEFAULT_TIMEOUT_S))


def _options(feature_extraction: dict, dataset_spec: dict, modality: str) -> dict:
    overrides = (dataset_spec.get("features") or {}).get(modality) or {}
    return {**feature_extraction[modality], **overrides}


def _option_parameter(dataset_spec: dict, modality: str, key: str) -> str:
    """The parameter a merged option was read from, so an error names the one to fix."""
    overrides = (dataset_spec.get("features") or {}).get(modality) or {}
    source = "dataset_spec.features" if key in overrides else "feature_extraction"
    return f"{source}.{modality}.{key}"


def _absent(items: pl.DataFrame) -> np.ndarray:
    return np.zeros((items.height + 1, 0), dtype=np.float32)


def _no_images(items: pl.DataFrame) -> np.ndarray:
    return np.zeros(items.height + 1, dtype=bool)
