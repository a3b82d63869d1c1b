#!/usr/bin/env python
"""Training and inference speed of RoDPO on a synthetic dataset of the paper's Toys size.

19,412 users, 11,924 items, 167,597 actions (Table 5), 64-d text and image features with 10% of
images missing. Prints one JSON object: seconds per warm-up epoch and per DPO epoch (training
only, validation excluded), their ratio (target <= 1.3), full-ranking inference seconds per batch
of 2,048 users, peak RSS, for an ID-only SASRec-like variant and the full multimodal model.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
    .venv/bin/python benchmarks/bench_training.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import polars as pl
import torch

from rodpo.devices import resolve_device
from rodpo.metrics import target_ranks
from rodpo.model import ModelConfig, RoDPOModel
from rodpo.sequences import build_sequence_data, trim_to_longest
from rodpo.training.trainer import DPOConfig, TrainConfig, train

TOYS = {"users": 19_412, "items": 11_924, "actions": 167_597}
FEATURE_DIM = 64
MISSING_IMAGE_SHARE = 0.1
INFERENCE_BATCH = 2048
VARIANTS = {
    "id_only": dict(modalities=("id",), moe_mode="none", temporal=False),
    "full": dict(modalities=("id", "text", "image"), moe_mode="sparse", temporal=True),
}


def synthetic_splits(seed: int = 0) -> pl.DataFrame:
    """5-core-like sequences: length 5 + geometric extra (mean 8.63), Zipf-ish item popularity."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_actions = TOYS["users"], TOYS["items"], TOYS["actions"]
    extra = rng.geometric(1.0 / (n_actions / n_users - 4.0), size=n_users) - 1
    lengths = 5 + extra
    while (surplus := int(lengths.sum()) - n_actions) != 0:  # hit the action count exactly
        users = rng.choice(np.flatnonzero(lengths > 5) if surplus > 0 else n_users, size=abs(surplus))
        np.add.at(lengths, users, -1 if surplus > 0 else 1)
        lengths = np.maximum(lengths, 5)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=n_actions, p=popularity / popularity.sum()).astype(np.int32) + 1
    gaps = rng.exponential(20 * 86_400, size=n_actions).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    times = 1_300_000_000 + np.cumsum(gaps)
    item_lists = [items[offsets[u]:offsets[u + 1]] for u in range(n_users)]
    time_lists = [np.sort(times[offsets[u]:offsets[u + 1]]) for u in range(n_users)]
    return pl.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int32),
        "train_item_ids": [x[:-2].tolist() for x in item_lists],
        "train_timestamps": [x[:-2].tolist() for x in time_lists],
        "valid_item_id": [int(x[-2]) for x in item_lists], "valid_timestamp": [int(x[-2]) for x in time_lists],
        "test_item_id": [int(x[-1]) for x in item_lists], "test_timestamp": [int(x[-1]) for x in time_lists],
    }, schema_overrides={"train_item_ids": pl.List(pl.Int32), "valid_item_id": pl.Int32, "test_item_id": pl.Int32})


def inference_seconds_per_batch(model: RoDPOModel, data, device: torch.device, repeats: int = 3) -> float:
    """Full ranking (scores over all items + target ranks) for 2,048 random test users."""
    rows = np.random.default_rng(0).choice(len(data.test.targets), size=INFERENCE_BATCH, replace=False)
    items = torch.from_numpy(data.test.items[rows]).to(device)
    times = torch.from_numpy(data.test.timestamps[rows]).to(device)
    targets = torch.from_numpy(data.test.targets[rows]).to(device)
    items, times = trim_to_longest(items, times)
    model.eval().to(device)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # first call warms up kernels and allocator
            started = time.perf_counter()
            target_ranks(model.score_next(items, times).float(), targets)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
    return float(np.median(timings[1:]))


def bench_variant(name: str, data, features, args, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    config = ModelConfig(n_items=data.n_items, text_dim=FEATURE_DIM, image_dim=FEATURE_DIM,
                         time_min=data.time_min, time_max=data.time_max, **VARIANTS[name])
    model = RoDPOModel(config)
    model.set_item_features(*features)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, device=str(device), progress_bar=False,
                  seed=args.seed)
    warm, warm_history = train(model, data, TrainConfig(stage="warmup", **common))
    _, dpo_history = train(warm, data, TrainConfig(stage="dpo", dpo=DPOConfig(), **common))
    warm_s = float(np.median([h["train_seconds"] for h in warm_history]))
    dpo_s = float(np.median([h["train_seconds"] for h in dpo_history if "train_seconds" in h]))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "warmup_s_per_epoch": round(warm_s, 2),
        "dpo_s_per_epoch": round(dpo_s, 2),
        "dpo_over_warmup": round(dpo_s / warm_s, 3),
        "valid_eval_s": round(float(np.median([h["eval_seconds"] for h in warm_history])), 2),
        "inference_s_per_2048_users": round(inference_seconds_per_batch(warm, data, device), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per stage (median reported)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    started = time.perf_counter()
    splits = synthetic_splits(args.seed)
    data = build_sequence_data(splits, max_seq_len=50, n_items=TOYS["items"])
    setup_s = time.perf_counter() - started
    rng = np.random.default_rng(args.seed)
    text = rng.standard_normal((data.n_items + 1, FEATURE_DIM)).astype(np.float32)
    image = rng.standard_normal((data.n_items + 1, FEATURE_DIM)).astype(np.float32)
    image_mask = rng.random(data.n_items + 1) > MISSING_IMAGE_SHARE
    text[0] = image[0] = 0.0
    image_mask[0] = False

    result = {
        "benchmark": "bench_training", "dataset": {**TOYS, "train_windows": int(data.train.items.shape[0])},
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "batch_size": args.batch_size,
        "epochs_per_stage": args.epochs, "data_setup_s": round(setup_s, 2), "variants": {},
    }
    for name in args.variants.split(","):
        result["variants"][name] = bench_variant(name, data, (text, image, image_mask), args, device)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
