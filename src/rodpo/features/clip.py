"""Item image features from an open_clip image tower.

Features are L2-normalised: CLIP is trained on cosine similarities, so only the direction of an
image embedding carries meaning and its norm varies with the image for no useful reason.
Row i belongs to item id i; row 0 and items without a usable image are zeros with mask False.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rodpo.devices import resolve_device
from rodpo.features.common import autocast_for, check_item_ids, with_padding_row
from rodpo.features.images import fetch_item_images
from rodpo.files import atomic_write

logger = logging.getLogger(__name__)

# Architectures shipped with rodpo (JSON files in open_clip_configs/, registered with open_clip on use).
CONFIG_DIR = Path(__file__).with_name("open_clip_configs")
DEMO_ARCH = "RoDPO-Tiny-ViT"
WHITE = (255, 255, 255)
# Manifest entries that add up over item slices (features.sharding merges the ranks' manifests).
MANIFEST_COUNTS = ("items", "items_with_image", "image_failures", "image_fetch")
# What open_clip logs (root logger, WARNING) for every model built without pretrained weights.
OPEN_CLIP_RANDOM_INIT_NOTE = "No pretrained weights loaded for model"


def _register_configs() -> None:
    """Make rodpo's own architectures (e.g. the tiny demo ViT) known to open_clip by name."""
    import open_clip

    if DEMO_ARCH not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def load_clip_image_encoder(
    arch: str = "ViT-B-32",
    pretrained: str | Path | None = "laion2b_s34b_b79k",
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """(model in eval mode on `device`, the model's own eval preprocessing) from open_clip.

    `pretrained` is an open_clip tag (downloads on first use), a local checkpoint file (.safetensors
    is read without pickle; .pt/.bin go through torch.load(weights_only=True)), or None for random
    weights (same compute as the real model; used by the benchmark).
    """
    import open_clip

    _register_configs()
    if arch not in open_clip.list_models():
        raise ValueError(f"CLIP arch {arch!r} is unknown to open_clip; pick one of open_clip.list_models() "
                         f"(e.g. 'ViT-B-32') or {DEMO_ARCH!r} for the tiny demo model.")
    pretrained = str(pretrained) if pretrained is not None else None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        with _random_weights_expected(pretrained is None):
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    except RuntimeError as error:
        raise RuntimeError(
            f"open_clip could not load arch={arch!r} pretrained={pretrained!r}: {error}. Without network, "
            "download the checkpoint elsewhere and pass its local file path as `pretrained`."
        ) from error
    return model.eval(), preprocess


def build_random_clip_checkpoint(path: str | Path, arch: str = DEMO_ARCH, seed: int = 0) -> Path:
    """Write a randomly initialised open_clip checkpoint (safetensors) and return its path.

    For the offline demo only: no CLIP weights can be had without network, so the demo encodes
    images with a small fixed-seed random network. Its image features are NOT semantic (similar
    pictures need not get similar vectors); they only exercise the pipeline. The same seed gives
    byte-identical files. Load it like any user checkpoint: load_clip_image_encoder(arch, pretrained=path).
    """
    import open_clip
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {path} must end in .safetensors (read without pickle).")
    _register_configs()
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        with _random_weights_expected():
            model = open_clip.create_model(arch, pretrained=None, device="cpu")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry only: safetensors writes several in hash order, which breaks byte-identity.
    metadata = {"rodpo": f"random {arch} weights, seed {seed}; features are not semantic"}
    atomic_write(path, lambda temporary: save_file(state, str(temporary), metadata=metadata), suffix=".part")
    return path


@contextmanager
def _random_weights_expected(expected: bool = True) -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning while a model is built without weights on
    purpose (the demo's seeded checkpoint, the benchmark): the demo's features are documented as not
    semantic, so the warning would tell the user nothing. Any other message passes."""
    root = logging.getLogger()
    note = (lambda record: not record.getMessage().startswith(OPEN_CLIP_RANDOM_INIT_NOTE)) if expected else None
    if note is not None:
        root.addFilter(note)
    try:
        yield
    finally:
        if note is not None:
            root.removeFilter(note)


def _load_image(path: str | Path | None, preprocess: Callable) -> torch.Tensor | None:
    """Preprocessed image tensor, or None if the file cannot be decoded. Transparent pixels are
    composited on white (product photos have white backgrounds), not turned black."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba)
            return preprocess(image.convert("RGB"))
    except Exception as error:  # corrupt at this stage -> masked, never fatal
        logger.debug("Cannot decode image %s: %s", path, error)
        return None


def encode_images(
    paths: Sequence[str | Path | None],
    model: torch.nn.Module,
    preprocess: Callable,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    precision: str = "auto",
    normalize: bool = True,
    loader_threads: int = 2,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, d) features, bool (n,) ok) for image files, row k for paths[k].

    Uses the model's own preprocessing and `encode_image`. A None path or an undecodable file gives a
    zero row with ok False. Images for the next batch are decoded on `loader_threads` threads while
    the current batch runs. `device=None` keeps the model where it is.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: need at least 1.")
    if device is not None:
        model = model.to(device if isinstance(device, torch.device) else resolve_device(device))
    device = next(model.parameters()).device
    autocast, _ = autocast_for(device, precision)

    def embed(batch: torch.Tensor) -> np.ndarray:
        with autocast:
            features = model.encode_image(batch.to(device)).float()  # (batch, embed_dim)
        if normalize:
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()

    with torch.inference_mode():
        dim = embed(preprocess(Image.new("RGB", (8, 8), WHITE)).unsqueeze(0)).shape[1]
        features = np.zeros((len(paths), dim), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        starts = range(0, len(paths), batch_size)
        progress = tqdm(total=len(paths), unit="image", desc="image features", disable=not show_progress)
        with ThreadPoolExecutor(max_workers=max(1, loader_threads)) as pool, progress:
            def submit(start: int) -> list[Future]:
                return [pool.submit(_load_image, path, preprocess) for path in paths[start:start + batch_size]]

            pending = submit(0) if len(paths) else []
            for start in starts:
                current, pending = pending, (submit(start + batch_size) if start + batch_size < len(paths) else [])
                loaded = [(start + k, future.result()) for k, future in enumerate(current)]
                rows = [row for row, tensor in loaded if tensor is not None]
                if rows:
                    features[rows] = embed(torch.stack([tensor for _, tensor in loaded if tensor is not None]))
                    ok[rows] = True
                progress.update(len(current))
    return features, ok


def extract_image_features(
    items: Any,
    *,
    arch: str = "ViT-B-32",
    pretrained: str | Path | None = "laion2b_s34b_b79k",
    cache_dir: str | Path,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    normalize: bool = True,
    max_workers: int = 8,
    timeout_s: float = 10.0,
    max_retries: int = 2,
    max_bytes: int = 10_000_000,
    loader_threads: int = 2,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(float32 (I+1, d_image) features, bool (I+1,) mask, manifest part) for the primary items table.

    Fetches images into `cache_dir` (see fetch_item_images), then encodes them; row 0 and items
    without a usable image are zeros with mask False.
    """
    started = time.perf_counter()
    n_items = check_item_ids(items)
    paths_by_item, fetch_report = fetch_item_images(items, cache_dir, max_workers=max_workers,
                                                    timeout_s=timeout_s, max_retries=max_retries,
                                                    max_bytes=max_bytes)
    device = resolve_device(device)
    model, preprocess = load_clip_image_encoder(arch, pretrained, device)
    paths = [paths_by_item[item_id] for item_id in range(1, n_items + 1)]
    vectors, ok = encode_images(paths, model, preprocess, batch_size=batch_size,
                                                     precision=precision, normalize=normalize,
                                                     loader_threads=loader_threads, show_progress=show_progress)
    undecodable = sum(1 for path, good in zip(paths, ok) if path is not None and not good)
    failures = dict(fetch_report["failures"])
    if undecodable:
        failures["not_decodable"] = undecodable
        logger.warning("Item images: %d fetched files could not be decoded for encoding; masked.", undecodable)
    manifest = {
        "image_encoder": f"open_clip/{arch}",
        "image_checkpoint": None if pretrained is None else str(pretrained),
        "image_dim": int(vectors.shape[1]),
        "image_normalized": normalize,
        "items": n_items,
        "items_with_image": int(ok.sum()),
        "image_failures": failures,
        "image_fetch": fetch_report,
        "image_precision": autocast_for(device, precision)[1],
        "image_device": str(device),
        "image_seconds": round(time.perf_counter() - started, 3),
    }
    return with_padding_row(vectors), with_padding_row(ok), manifest
