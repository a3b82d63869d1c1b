"""Frozen item features for RoDPO: text (BERT-family) and image (open_clip) vectors per item id.

Pure library code returning numpy arrays; the Kedro nodes that store them live in rodpo.pipelines.
Matrices are indexed by item id: row 0 is padding (zeros / False), row i is item i.
"""

from rodpo.features.clip import (
    DEMO_ARCH,
    build_random_clip_checkpoint,
    encode_images,
    extract_image_features,
    load_clip_image_encoder,
)
from rodpo.features.images import fetch_item_images
from rodpo.features.templates import DEFAULT_TEMPLATE, build_item_texts
from rodpo.features.text import encode_texts, extract_text_features, load_text_encoder

__all__ = [
    "DEFAULT_TEMPLATE",
    "DEMO_ARCH",
    "build_item_texts",
    "build_random_clip_checkpoint",
    "encode_images",
    "encode_texts",
    "extract_image_features",
    "extract_text_features",
    "fetch_item_images",
    "load_clip_image_encoder",
    "load_text_encoder",
]
