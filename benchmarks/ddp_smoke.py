#!/usr/bin/env python
"""One-rank DDP smoke run of the demo warm-up, launched by torchrun (NCCL on CUDA, gloo on CPU).

rodpo runs a world of one as a plain process (`rodpo.distributed.launched_by_torchrun` needs
WORLD_SIZE > 1), so on a one-GPU machine its DDP path never starts by itself. This script joins
torchrun's process group, wraps the stage's policy forward in DistributedDataParallel as a
multi-rank run does, and checks that a DDP step gives the gradients of the plain step, that a
collective runs on the backend, and that one warm-up epoch and its validation finish with finite
numbers. The data is the demo generator's (ID-only model with sparse MoE and temporal module).
Prints one JSON line.

    torchrun --standalone --nproc-per-node=1 benchmarks/ddp_smoke.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rodpo.data.demo import generate_demo_dataset
from rodpo.data.parsers import parse_interactions
from rodpo.data.preprocess import build_sequences, leave_one_out_split, preprocess_interactions
from rodpo.distributed import backend_for, init_from_torchrun
from rodpo.model import ModelConfig, RoDPOModel
from rodpo.sequences import build_sequence_data
from rodpo.training.config import TrainConfig
from rodpo.training.stage import Stage

MAX_SEQ_LEN = 50
# A world of one averages over one rank: the same gradients, up to CUDA's unordered (atomic) sums.
GRADIENT_RTOL = 1e-4


def demo_data(n_users: int, n_items: int):
    with tempfile.TemporaryDirectory(prefix="ddp_smoke-") as workdir:
        files = generate_demo_dataset(Path(workdir), n_users=n_users, n_items=n_items)
        interactions, _, _ = preprocess_interactions(parse_interactions(files["reviews"], "demo"))
    return build_sequence_data(leave_one_out_split(build_sequences(interactions)), max_seq_len=MAX_SEQ_LEN)


def step_gradients(stage: Stage, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    stage.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same MoE router noise and dropout for both calls
    stage.step_losses(stage.train_items[rows], stage.train_timestamps[rows], rows)["loss"].backward()
    return {name: p.grad.detach().clone() for name, p in stage.policy.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=500)
    args = parser.parse_args()
    backend = backend_for(args.device)
    context = init_from_torchrun(backend)
    data = demo_data(args.users, args.items)
    torch.manual_seed(0)
    model = RoDPOModel(ModelConfig(n_items=data.n_items, max_seq_len=MAX_SEQ_LEN, modalities=("id",),
                                   time_min=data.time_min, time_max=data.time_max))
    stage = Stage(model, data, TrainConfig(epochs=1, device=args.device, precision=args.precision,
                                           progress_bar=False), None, context)
    rows = torch.arange(min(64, stage.train_items.shape[0]), device=stage.device)
    plain = step_gradients(stage, rows)
    stage.forward = DistributedDataParallel(  # as Stage does for world_size > 1
        stage.forward, device_ids=[stage.device.index] if stage.device.type == "cuda" else None,
        find_unused_parameters=True)
    synced = step_gradients(stage, rows)
    gradient_difference = max(float((plain[name] - synced[name]).abs().max()) for name in plain)
    gradient_scale = max(float(grad.abs().max()) for grad in plain.values())
    probe = torch.ones(3, device=stage.device if backend == "nccl" else "cpu")
    dist.all_reduce(probe)
    started = time.perf_counter()
    losses = stage.train_epoch(1, run_dir=None)
    epoch_seconds = time.perf_counter() - started
    metrics = stage.validate()
    record = {
        "backend": dist.get_backend(), "world_size": dist.get_world_size(), "rank": dist.get_rank(),
        "device": str(stage.device), "precision": args.precision, "autocast_dtype": str(stage.autocast_dtype),
        "users": args.users, "items": data.n_items, "train_windows": int(stage.train_items.shape[0]),
        "gradient_max_abs_difference": gradient_difference, "gradient_max_abs": gradient_scale,
        "all_reduce_ok": bool(torch.all(probe == 1)),
        "epoch_seconds": round(epoch_seconds, 3), "losses": losses, "valid": metrics,
    }
    record["ok"] = (gradient_difference <= GRADIENT_RTOL * max(gradient_scale, 1.0) and record["all_reduce_ok"]
                    and all(math.isfinite(v) for v in [*losses.values(), *metrics.values()]))
    dist.destroy_process_group()
    print(json.dumps(record), flush=True)
    if not record["ok"]:
        raise SystemExit(f"ddp_smoke: failed checks: {record}")


if __name__ == "__main__":
    main()
