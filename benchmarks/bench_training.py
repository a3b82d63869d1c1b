#!/usr/bin/env python
"""Epoch cost of RoDPO's two stages, per preference objective, on a synthetic dataset of the paper's Toys size.

19,412 users, 11,924 items, 167,597 actions (Table 5; `--scale` shrinks all three alike), 64-d text
and image features with 10% of images missing; an ID-only SASRec-like variant and the full model.
Per variant one fresh process trains the warm-up stage (`train`, validation included), times
full-ranking inference per batch of 2,048 users and saves the weights. Then every stage-2
configuration (objective x reference) runs in a fresh process of its own from those weights: its
stage-2 epochs, then as many warm-up epochs of the same model, both training only
(`Stage.train_epoch`, no validation), so `ratio_to_warmup` compares adjacent epochs under the same
load. Peak RSS is reset after data and model setup: `rss_increase_mib` is what the stage adds
(policy copy, frozen reference or its cached states, Adam state, activations).

Targets: a DPO-family epoch (dpo, sdpo) <= 1.2x a warm-up epoch; reference-free (simpo, bpr) <= 1.05x.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py --threads 1 --scale 0.1 \\
        --variants id_only --objectives dpo,simpo --references model,cached_states
    .venv/bin/python benchmarks/bench_training.py --device cuda --precision bf16     # a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from rodpo.devices import resolve_device
from rodpo.metrics import target_ranks
from rodpo.model import ModelConfig, RoDPOModel
from rodpo.sequences import SequenceData, build_sequence_data, trim_to_longest
from rodpo.training.config import PRECISIONS, REFERENCES
from rodpo.training.objectives import REFERENCE_FREE
from rodpo.training.stage import Stage
from rodpo.training.trainer import DPOConfig, TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling module, however this file is loaded
from measuring import peak_rss_bytes, run_fresh, synchronize, tensor_bytes  # noqa: E402

TOYS = {"users": 19_412, "items": 11_924, "actions": 167_597}
MIN_ACTIONS_PER_USER = 5  # 5-core: valid + test + at least 3 training items
MAX_SEQ_LEN = 50
FEATURE_DIM = 64
MISSING_IMAGE_SHARE = 0.1
INFERENCE_BATCH = 2048
VARIANTS = {
    "id_only": dict(modalities=("id",), moe_mode="none", temporal=False),
    "full": dict(modalities=("id", "text", "image"), moe_mode="sparse", temporal=True),
}
TARGET_RATIO = {"dpo": 1.2, "sdpo": 1.2, "simpo": 1.05, "bpr": 1.05}  # stage-2 epoch / warm-up epoch
OBJECTIVES = tuple(TARGET_RATIO)
DEFAULT_N_NEGATIVES = 4  # M losers of sdpo, simpo and bpr (the config's 1 would make sdpo plain dpo)


# ---------------------------------------------------------------------------------- synthetic inputs
def dataset_size(scale: float) -> dict[str, int]:
    """Toys' users, items and actions times `scale` (the mean sequence length stays 8.63)."""
    sizes = {name: round(value * scale) for name, value in TOYS.items()}
    if sizes["items"] <= DPOConfig().k or sizes["users"] < 1:
        raise SystemExit(f"--scale {scale}: {sizes['items']} items leave no top-{DPOConfig().k} negative pool; "
                         f"use --scale >= {(DPOConfig().k + 1) / TOYS['items']:.4f}.")
    return sizes


def synthetic_splits(sizes: dict[str, int], seed: int = 0) -> pl.DataFrame:
    """5-core-like sequences: length 5 + geometric extra (mean 8.63), Zipf-ish item popularity."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_actions = sizes["users"], sizes["items"], sizes["actions"]
    extra = rng.geometric(1.0 / (n_actions / n_users - MIN_ACTIONS_PER_USER + 1), size=n_users) - 1
    lengths = MIN_ACTIONS_PER_USER + extra
    while (surplus := int(lengths.sum()) - n_actions) != 0:  # hit the action count exactly
        can_shrink = np.flatnonzero(lengths > MIN_ACTIONS_PER_USER)
        users = rng.choice(can_shrink if surplus > 0 else n_users, size=abs(surplus))
        np.add.at(lengths, users, -1 if surplus > 0 else 1)
        lengths = np.maximum(lengths, MIN_ACTIONS_PER_USER)
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


def prepared_inputs(config: dict) -> tuple[SequenceData, RoDPOModel]:
    """The dataset and the variant's model with its features, and the warm-up weights once they exist."""
    sizes = dataset_size(config["scale"])
    data = build_sequence_data(synthetic_splits(sizes, config["seed"]), max_seq_len=MAX_SEQ_LEN,
                               n_items=sizes["items"])
    rng = np.random.default_rng(config["seed"])
    text = rng.standard_normal((data.n_items + 1, FEATURE_DIM)).astype(np.float32)
    image = rng.standard_normal((data.n_items + 1, FEATURE_DIM)).astype(np.float32)
    image_mask = rng.random(data.n_items + 1) > MISSING_IMAGE_SHARE
    text[0] = image[0] = 0.0
    image_mask[0] = False
    torch.manual_seed(config["seed"])
    model = RoDPOModel(ModelConfig(n_items=data.n_items, max_seq_len=MAX_SEQ_LEN, text_dim=FEATURE_DIM,
                                   image_dim=FEATURE_DIM, time_min=data.time_min, time_max=data.time_max,
                                   **VARIANTS[config["variant"]]))
    model.set_item_features(text, image, image_mask)
    if config.get("warm_weights"):
        model.load_state_dict(torch.load(config["warm_weights"], weights_only=True))
    return data, model


# ---------------------------------------------------------------------------------- measuring
def current_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def reset_peak_rss() -> bool:
    """Linux >= 4.0: restart the peak-RSS count from the current RSS (so setup's peak is not counted)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _mib(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 1)


def epoch_seconds(stage: Stage, epochs: int) -> list[float]:
    """Training seconds of each of `epochs` epochs (no validation, no checkpoint)."""
    seconds = []
    for epoch in range(1, epochs + 1):
        synchronize(stage.device)
        started = time.perf_counter()
        stage.train_epoch(epoch, run_dir=None)
        synchronize(stage.device)
        seconds.append(time.perf_counter() - started)
    return seconds


def inference_seconds_per_batch(model: RoDPOModel, data: SequenceData, device: torch.device,
                                repeats: int = 3) -> tuple[int, float]:
    """Full ranking (scores over all items + target ranks) of up to 2,048 random test users."""
    n_users = min(INFERENCE_BATCH, len(data.test.targets))
    rows = np.random.default_rng(0).choice(len(data.test.targets), size=n_users, replace=False)
    items = torch.from_numpy(data.test.items[rows]).to(device)
    times = torch.from_numpy(data.test.timestamps[rows]).to(device)
    targets = torch.from_numpy(data.test.targets[rows]).to(device)
    items, times = trim_to_longest(items, times)
    model.eval().to(device)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # first call warms up kernels and allocator
            synchronize(device)
            started = time.perf_counter()
            target_ranks(model.score_next(items, times).float(), targets)
            synchronize(device)
            timings.append(time.perf_counter() - started)
    return n_users, float(np.median(timings[1:]))


def _train_settings(config: dict) -> dict:
    return dict(epochs=config["epochs"], batch_size=config["batch_size"], device=config["device"],
                precision=config.get("precision", "auto"), progress_bar=False, seed=config["seed"])


def measure_warmup(config: dict) -> dict:
    """Warm-up with `train` (validation each epoch); saves the best weights for the stage-2 processes."""
    started = time.perf_counter()
    data, model = prepared_inputs({**config, "warm_weights": None})
    setup_s = time.perf_counter() - started
    warm, history = train(model, data, TrainConfig(stage="warmup", **_train_settings(config)))
    torch.save(warm.state_dict(), config["warm_weights"])
    n_users, inference_s = inference_seconds_per_batch(warm, data, resolve_device(config["device"]))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_windows": int(data.train.items.shape[0]),
        "train_targets": int(((data.train.items > 0).sum(axis=1) - 1).clip(min=0).sum()),
        "data_setup_s": round(setup_s, 2),
        "warmup_s_per_epoch": round(statistics.median(h["train_seconds"] for h in history), 2),
        "valid_eval_s": round(statistics.median(h["eval_seconds"] for h in history), 2),
        f"inference_s_per_{INFERENCE_BATCH}_users": round(inference_s, 4), "inference_users": n_users,
        "peak_rss_mib": _mib(peak_rss_bytes()),
    }


def pay_one_time_costs(model: RoDPOModel, data: SequenceData, settings: dict) -> None:
    """One untimed warm-up step on a few windows, so neither stage is charged with the process's
    one-time costs: lazy imports (Adam's pulls in torch._dynamo: ~150 MB, ~1 s), autograd, thread pools."""
    stage = Stage(model, data, TrainConfig(stage="warmup", **settings), reference_model=None)
    rows = torch.arange(min(8, stage.train_items.shape[0]), device=stage.device)
    stage.optimizer.zero_grad(set_to_none=True)
    stage.step_losses(stage.train_items[rows], stage.train_timestamps[rows], rows)["loss"].backward()
    stage.optimizer.step()


def measure_stage2(config: dict) -> dict:
    """One (objective, reference) configuration: its stage-2 epochs, then warm-up epochs of the same model."""
    data, model = prepared_inputs(config)
    objective, reference = config["objective"], config["reference"]
    dpo = DPOConfig(objective=objective, n_negatives=config["n_negatives"], reference=reference or "model")
    settings = _train_settings(config)
    pay_one_time_costs(model, data, settings)
    gc.collect()
    baseline = current_rss_bytes()
    peak_was_reset = reset_peak_rss()
    baseline = baseline if peak_was_reset else peak_rss_bytes()
    started = time.perf_counter()
    stage = Stage(model, data, TrainConfig(stage="dpo", dpo=dpo, **settings), reference_model=None)
    setup_s = time.perf_counter() - started  # the policy copy, and the reference copy or its cached states
    scorer = stage.reference
    reference_bytes = 0 if scorer is None else tensor_bytes(
        [scorer.table, scorer.cached, *(scorer.model.parameters() if scorer.model is not None else ())])
    stage2_seconds = epoch_seconds(stage, config["epochs"])
    peak = max(peak_rss_bytes(), current_rss_bytes())  # the kernel's RSS counters lag by a few pages
    del stage, scorer
    gc.collect()
    warm_stage = Stage(model, data, TrainConfig(stage="warmup", **settings), reference_model=None)
    warmup_seconds = epoch_seconds(warm_stage, config["epochs"])
    stage2_s, warmup_s = statistics.median(stage2_seconds), statistics.median(warmup_seconds)
    ratio = stage2_s / warmup_s
    return {
        "objective": objective, "reference": reference, "n_negatives": dpo.n_negatives, "k": dpo.k,
        "stage2_s_per_epoch": round(stage2_s, 2), "stage2_seconds": [round(s, 2) for s in stage2_seconds],
        "warmup_s_per_epoch": round(warmup_s, 2), "warmup_seconds": [round(s, 2) for s in warmup_seconds],
        "ratio_to_warmup": round(ratio, 3), "target_ratio": TARGET_RATIO[objective],
        "meets_target": ratio <= TARGET_RATIO[objective], "stage2_setup_s": round(setup_s, 2),
        "reference_state_mib": _mib(reference_bytes), "baseline_rss_mib": _mib(baseline),
        "peak_rss_mib": _mib(peak), "rss_increase_mib": _mib(peak - baseline), "peak_was_reset": peak_was_reset,
    }


def run_one(config: dict) -> dict:
    torch.set_num_threads(config["threads"])
    return measure_warmup(config) if config["kind"] == "warmup" else measure_stage2(config)


# ---------------------------------------------------------------------------------- the driver
def _csv(text: str, allowed, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise SystemExit(f"{flag} {text!r}: unknown {unknown}; expected some of {list(allowed)}.")
    return names


def stage2_configs(objectives: list[str], references: list[str], n_negatives: int) -> list[dict]:
    """(objective, reference) pairs; the reference-free objectives run once, with reference None."""
    configs = []
    for objective in objectives:
        m = 1 if objective == "dpo" else n_negatives  # DPO is pairwise
        for reference in [None] if objective in REFERENCE_FREE else references:
            configs.append({"kind": "stage2", "objective": objective, "reference": reference, "n_negatives": m})
    return configs


def bench_variant(variant: str, common: dict, configs: list[dict], workdir: Path) -> dict:
    warm_weights = str(workdir / f"{variant}-warmup.pt")
    shared = {**common, "variant": variant, "warm_weights": warm_weights}
    print(f"bench_training: {variant} warm-up", file=sys.stderr, flush=True)
    result = run_fresh(__file__, {**shared, "kind": "warmup"}, shared["threads"])
    if "error" in result:
        return result
    result["objectives"] = {}
    for config in configs:
        print(f"bench_training: {variant} {config['objective']} reference={config['reference']}",
              file=sys.stderr, flush=True)
        record = run_fresh(__file__, {**shared, **config}, shared["threads"])
        result["objectives"].setdefault(config["objective"], {})[config["reference"] or "none"] = record
    paper_dpo = result["objectives"].get("dpo", {}).get("model", {})  # the fields earlier runs reported
    if "ratio_to_warmup" in paper_dpo:
        result["dpo_s_per_epoch"] = paper_dpo["stage2_s_per_epoch"]
        result["dpo_over_warmup"] = paper_dpo["ratio_to_warmup"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="training autocast: auto = bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and OMP_NUM_THREADS)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per stage (median reported)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--references", default=",".join(REFERENCES), help="for dpo and sdpo")
    parser.add_argument("--n-negatives", type=int, default=DEFAULT_N_NEGATIVES,
                        help="M losers per target of sdpo, simpo, bpr (dpo always 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Toys' users, items and actions")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.epochs < 1:
        raise SystemExit(f"--epochs {args.epochs}: need at least one timed epoch per stage.")
    variants = _csv(args.variants, VARIANTS, "--variants")
    configs = stage2_configs(_csv(args.objectives, OBJECTIVES, "--objectives"),
                             _csv(args.references, REFERENCES, "--references"), args.n_negatives)
    sizes = dataset_size(args.scale)
    device = resolve_device(args.device)
    common = {"device": args.device, "precision": args.precision, "threads": args.threads, "epochs": args.epochs,
              "batch_size": args.batch_size, "scale": args.scale, "seed": args.seed}
    result = {
        "benchmark": "bench_training", "dataset": {**sizes, "scale": args.scale}, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": args.threads, "precision": args.precision, "torch": torch.__version__, "batch_size": args.batch_size,
        "epochs_per_stage": args.epochs, "n_negatives": {c["objective"]: c["n_negatives"] for c in configs},
        "target_ratio": {c["objective"]: TARGET_RATIO[c["objective"]] for c in configs}, "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_training-") as workdir:
        for name in variants:
            result["variants"][name] = bench_variant(name, common, configs, Path(workdir))
    peaks = [r.get("peak_rss_mib", 0) for v in result["variants"].values()
             for r in [v, *(rec for refs in v.get("objectives", {}).values() for rec in refs.values())]]
    result["peak_rss_gib"] = round(max(peaks, default=0) / 1024, 2)  # the largest process
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
