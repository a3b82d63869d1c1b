#!/usr/bin/env python
"""Memory and speed of RoDPO's full-catalog scoring at 10^4..10^6 items: dense logits vs the chunked core.

Synthetic catalogs (ID-only, or 64-d text + image features with 10% of images missing), d = 64,
batches of 256 windows of T + 1 real items (--targets-per-sequence T, default 50 = full windows:
12,800 target rows; the rest of a window is padding, as in short real sequences), measured for
- warmup: one CE step (loss, backward, clip, Adam step, as Stage.train_epoch does);
- dpo:    one stage-2 step (CE + DPO, K = 50 topk_uniform negatives, reference = frozen copy);
- eval:   full ranking (exact target ranks) of one batch of 2,048 users.
Paths: dense = the implementation before the scoring core, kept as the reference (dense_reference.py:
F.cross_entropy(model.all_item_logits(states)), torch.topk pool + gather, model.score_next +
rodpo.metrics.target_ranks); chunked = the project's code (Stage.step_losses,
rodpo.ranking.evaluate_model); kernel = the same with the cut-cross-entropy CE kernel (CUDA, when installed).
Every configuration runs in a fresh subprocess (peak RSS is per process) and prints one JSON
line; a dense configuration whose predicted (rows, n_items + 1) tensors exceed
DENSE_MEMORY_SHARE of the available memory is skipped with `predicted_bytes`.
`--world-size 1,2` adds warm-up throughput of `train(..., world_size=W)` (gloo, CPU; 10^4 items,
4,096 windows, ID-only) in sequences/s, and the scaling efficiency T(W) / (W * T(1)).

Targets (10^6 items, ID-only, CPU): warm-up step peak RSS <= 4 GiB, DPO step <= 4.5 GiB,
2,048-user evaluation batch <= 2 GiB; at 12k items the chunked step is no slower than 1.1x dense.

Flags choose what runs: --n-items/--stages/--path/--variants steps, --world-size throughput (none: both).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --n-items 12000 \\
        --stages warmup,dpo,eval --path dense,chunked --steps 3 --variants id_only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --n-items 1000000 \\
        --stages warmup,dpo,eval --path chunked --steps 2 --variants id_only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --world-size 1,2
    .venv/bin/python benchmarks/bench_scale.py --steps 2        # everything (GPU: --device cuda)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rodpo import scoring
from rodpo.devices import configure_torch_threads, default_torch_threads, resolve_device
from rodpo.model import ModelConfig, RoDPOModel
from rodpo.ranking import evaluate_model
from rodpo.sequences import EvalSequences, SequenceData, TrainWindows
from rodpo.training.config import DPOConfig, TrainConfig
from rodpo.training.stage import Stage, set_policy_mode
from rodpo.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however this file is loaded
from dense_reference import DENSE_BYTES_PER_CELL, dense_predicted_bytes, dense_ranks, dense_step_loss  # noqa: E402,F401
from measuring import peak_rss_bytes, rank_pass_vs_matmul, run_fresh, synchronize, tensor_bytes  # noqa: E402

N_ITEMS = (10_000, 100_000, 1_000_000)
STAGES = ("warmup", "dpo", "eval")
PATHS = ("dense", "chunked", "kernel")
VARIANTS = {  # as benchmarks/bench_training.py: a SASRec-like ID-only model and the full multimodal one
    "id_only": dict(modalities=("id",), moe_mode="none", temporal=False),
    "multimodal": dict(modalities=("id", "text", "image"), moe_mode="sparse", temporal=True),
}
HIDDEN_SIZE = 64
MAX_SEQ_LEN = 50  # windows of MAX_SEQ_LEN + 1 items; by default all real: MAX_SEQ_LEN targets per window
BATCH_SIZE = 256
EVAL_USERS = 2048
DPO_K = 50
FEATURE_DIM = 64
MISSING_IMAGE_SHARE = 0.1
SEED = 2020
FIRST_TIMESTAMP = 1_300_000_000
MAX_GAP_S = 30 * 86_400
SCALING = {"n_items": 10_000, "n_windows": 4_096, "valid_users": 256, "variant": "id_only"}
DENSE_MEMORY_SHARE = 0.8  # the rest: model, optimizer, allocator slack, other processes


# ---------------------------------------------------------------------------------- synthetic inputs
def _sequences(rng: np.random.Generator, n_rows: int, width: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Random item ids 1..n_items and increasing unix-second timestamps, both (n_rows, width) int64."""
    items = rng.integers(1, n_items + 1, size=(n_rows, width), dtype=np.int64)
    times = FIRST_TIMESTAMP + np.cumsum(rng.integers(1, MAX_GAP_S, size=(n_rows, width), dtype=np.int64), axis=1)
    return items, times


def synthetic_data(n_items: int, n_windows: int, n_eval_users: int, seed: int = SEED,
                   targets_per_sequence: int = MAX_SEQ_LEN) -> SequenceData:
    """Training windows of targets_per_sequence + 1 real items, zero-padded on the right to MAX_SEQ_LEN + 1;
    valid/test users with MAX_SEQ_LEN-item histories."""
    rng = np.random.default_rng(seed)
    train_items, train_times = _sequences(rng, n_windows, MAX_SEQ_LEN + 1, n_items)
    train_items[:, targets_per_sequence + 1:] = train_times[:, targets_per_sequence + 1:] = 0

    def split() -> EvalSequences:
        items, times = _sequences(rng, n_eval_users, MAX_SEQ_LEN + 1, n_items)
        return EvalSequences(user_ids=np.arange(n_eval_users), items=items[:, :-1], timestamps=times[:, :-1],
                             targets=items[:, -1].copy(), target_timestamps=times[:, -1].copy())

    train = TrainWindows(train_items, train_times, user_ids=np.arange(n_windows))
    return SequenceData(train, split(), split(), n_items, MAX_SEQ_LEN, int(train_times.min()), int(train_times.max()))


def synthetic_model(data: SequenceData, variant: str, seed: int = SEED) -> RoDPOModel:
    """d = HIDDEN_SIZE; the multimodal variant gets random text and image features (10% images missing)."""
    torch.manual_seed(seed)
    config = ModelConfig(n_items=data.n_items, hidden_size=HIDDEN_SIZE, max_seq_len=MAX_SEQ_LEN,
                         text_dim=FEATURE_DIM, image_dim=FEATURE_DIM, time_min=data.time_min,
                         time_max=data.time_max, **VARIANTS[variant])
    model = RoDPOModel(config)
    if "text" in config.modalities:
        rng = np.random.default_rng(seed)
        rows = data.n_items + 1
        text = rng.standard_normal((rows, FEATURE_DIM), dtype=np.float32)
        image = rng.standard_normal((rows, FEATURE_DIM), dtype=np.float32)
        text[0] = image[0] = 0.0
        has_image = rng.random(rows) >= MISSING_IMAGE_SHARE
        model.set_item_features(text, image, has_image)
    return model


def chunked_step_loss(stage: Stage, items: torch.Tensor, timestamps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return stage.step_losses(items, timestamps, rows)["loss"]


def optimizer_step(stage: Stage, loss: torch.Tensor) -> None:
    """What Stage.train_epoch does with a step's loss."""
    stage.optimizer.zero_grad(set_to_none=True)
    stage.scaler.scale(loss).backward()
    if stage.config.grad_clip:
        stage.scaler.unscale_(stage.optimizer)
        torch.nn.utils.clip_grad_norm_(stage.policy.parameters(), stage.config.grad_clip)
    stage.scaler.step(stage.optimizer)
    stage.scaler.update()


# ---------------------------------------------------------------------------------- measuring
def available_bytes(device: torch.device) -> int:
    """Free device memory on CUDA; MemAvailable of /proc/meminfo (else free physical pages) on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def timed_steps(run_step: Callable[[int], object], steps: int, device: torch.device) -> list[float]:
    """Seconds of `steps` calls after one warm-up call (kernels, allocator, Adam state)."""
    seconds = []
    for step in range(steps + 1):
        synchronize(device)
        started = time.perf_counter()
        run_step(step)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds[1:]


def _start_peak_count(record: dict, device: torch.device) -> None:
    """Setup's peaks; on CUDA the peak is counted again from here (`peak_cuda_bytes`: the steps')."""
    record["setup_peak_rss_bytes"] = peak_rss_bytes()
    if device.type == "cuda":
        record["setup_peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)


def measure_step(config: dict) -> dict:
    """One configuration of the step benchmarks, in this process; returns its JSON record."""
    device = resolve_device(config["device"])
    n_items, stage_name, path = config["n_items"], config["stage"], config["path"]
    batch_size, eval_users, steps = config["batch_size"], config["eval_users"], config["steps"]
    targets_per_sequence = config.get("targets_per_sequence", MAX_SEQ_LEN)  # training windows only
    n_rows = eval_users if stage_name == "eval" else batch_size * targets_per_sequence
    record = {"n_items": n_items, "variant": config["variant"], "stage": stage_name, "path": path,
              "device": str(device), "threads": torch.get_num_threads(), "steps": steps,
              "sequences": eval_users if stage_name == "eval" else batch_size, "rows": n_rows,
              "targets_per_sequence": 1 if stage_name == "eval" else targets_per_sequence, "targets_per_step": n_rows,
              "chunk_items": None if path == "dense" else scoring.resolve_chunk_items(
                  config["chunk_items"], n_rows, n_items, device)}
    if path == "dense":
        record["predicted_bytes"] = dense_predicted_bytes(stage_name, n_rows, n_items)
        budget = int(DENSE_MEMORY_SHARE * available_bytes(device))
        if record["predicted_bytes"] > budget:
            record["skipped"] = (f"dense (rows, n_items + 1) tensors need ~{record['predicted_bytes'] / 2**30:.1f} GiB"
                                 f" > {DENSE_MEMORY_SHARE:.0%} of the {budget / DENSE_MEMORY_SHARE / 2**30:.1f} GiB"
                                 f" available on {device.type}")
            return record
    if skip_reason(config):
        record["skipped"] = skip_reason(config)
        return record

    n_windows = batch_size * (steps + 1) if stage_name != "eval" else 1  # a fresh batch every step
    data = synthetic_data(n_items, n_windows, eval_users if stage_name == "eval" else 1,
                          targets_per_sequence=targets_per_sequence)
    model = synthetic_model(data, config["variant"])
    if stage_name == "eval":
        model.to(device)
        if path == "dense":
            run_step = lambda step: dense_ranks(model, data.test, device)  # noqa: E731
        else:
            run_step = lambda step: evaluate_model(model, data.test, batch_size=eval_users, device=device,  # noqa: E731
                                                   chunk_items=config["chunk_items"])
        _start_peak_count(record, device)
        seconds = timed_steps(run_step, steps, device)
        record["state_bytes"] = {"parameters": tensor_bytes(model.parameters())}
        if path == "chunked":  # the rank pass alone (states encoded once) against its matmul floor
            with torch.inference_mode():
                items = torch.from_numpy(data.test.items).to(device)
                states = model.eval().last_states(items, torch.from_numpy(data.test.timestamps).to(device))
                record.update(rank_pass_vs_matmul(states.float(), model.scoring_table().float(),
                                                  torch.from_numpy(data.test.targets).to(device), config["chunk_items"]))
    else:
        train_config = TrainConfig(stage=stage_name, batch_size=batch_size, device=str(device), progress_bar=False,
                                   score_chunk_items=config["chunk_items"], seed=SEED,
                                   dpo=DPOConfig(k=DPO_K, negative_strategy="topk_uniform"))
        stage = Stage(model, data, train_config, reference_model=None)
        stage.ce_backend = "kernel" if path == "kernel" else "chunked"  # 'auto' would take the kernel on CUDA
        record["ce_backend"] = None if path == "dense" else stage.ce_backend
        set_policy_mode(stage.policy, stochastic=not stage.is_dpo or train_config.dpo.policy_dropout_in_dpo)
        step_loss = dense_step_loss if path == "dense" else chunked_step_loss

        def run_step(step: int) -> None:
            rows = torch.arange(step * batch_size, (step + 1) * batch_size, device=stage.device)
            optimizer_step(stage, step_loss(stage, stage.train_items[rows], stage.train_timestamps[rows], rows))

        _start_peak_count(record, device)
        seconds = timed_steps(run_step, steps, device)
        reference = stage.reference
        record["state_bytes"] = {
            "parameters": tensor_bytes(stage.policy.parameters()),
            "gradients": tensor_bytes(p.grad for p in stage.policy.parameters()),
            "optimizer_state": tensor_bytes(v for state in stage.optimizer.state.values() for v in state.values()),
            "callers_model": tensor_bytes(model.parameters()),
            "reference": 0 if reference is None else tensor_bytes(
                [reference.table, *(reference.model.parameters() if reference.model is not None else ())]),
        }
    record["seconds_per_step"] = round(statistics.median(seconds), 4)
    record["seconds"] = [round(s, 4) for s in seconds]
    record["peak_rss_bytes"] = peak_rss_bytes()
    if device.type == "cuda":
        record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return record


def measure_scaling(config: dict) -> dict:
    """Warm-up training throughput of `train` with world_size ranks (gloo, CPU): one epoch, validation excluded."""
    world_size = config["world_size"]
    data = synthetic_data(config["n_items"], config["n_windows"], config["valid_users"])
    model = synthetic_model(data, config["variant"])
    train_config = TrainConfig(stage="warmup", epochs=1, batch_size=config["batch_size"], device="cpu",
                               progress_bar=False, score_chunk_items=config["chunk_items"], seed=SEED,
                               world_size=world_size, eval_batch_size=config["valid_users"])
    _, history = train(model, data, train_config)
    train_seconds = history[-1]["train_seconds"]  # the epoch's training; validation is in eval_seconds
    record = {"n_items": config["n_items"], "variant": config["variant"], "stage": "warmup", "path": "chunked",
              "device": "cpu", "world_size": world_size, "threads_per_rank": default_torch_threads(world_size),
              "threads": default_torch_threads(world_size) * world_size, "windows": config["n_windows"],
              "batch_size": config["batch_size"], "chunk_items": scoring.resolve_chunk_items(
                  config["chunk_items"], config["batch_size"] // world_size * MAX_SEQ_LEN, config["n_items"], "cpu"),
              "train_seconds": round(train_seconds, 3), "eval_seconds": round(history[-1]["eval_seconds"], 3),
              "sequences_per_second": round(config["n_windows"] / train_seconds, 2),
              "peak_rss_bytes": peak_rss_bytes()}
    if world_size > 1:
        record["peak_rss_other_ranks_bytes"] = peak_rss_bytes(resource.RUSAGE_CHILDREN)  # the largest spawned rank
    return record


def run_one(config: dict) -> dict:
    return measure_scaling(config) if config["kind"] == "scaling" else measure_step(config)


# ---------------------------------------------------------------------------------- the driver
def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _chunk_items(text: str) -> int | str:
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"--chunk-items {text!r}: use 'auto' or a positive number of items.")


def skip_reason(config: dict) -> str | None:
    """Why a kernel-path configuration cannot run here (decided without starting its process), or None."""
    if config.get("kind") != "step" or config.get("path") != "kernel":
        return None
    if config["stage"] == "eval":
        return "the kernel computes CE only; ranks are always chunked"
    return None if kernel_available(config["device"]) else "needs CUDA and the cut_cross_entropy package"


def kernel_available(device: str) -> bool:
    wants_cuda = device in ("auto", "cuda") or device.startswith("cuda")
    return wants_cuda and torch.cuda.is_available() and importlib.util.find_spec("cut_cross_entropy") is not None


def planned_configs(args: argparse.Namespace) -> list[dict]:
    """Step benchmarks (smallest catalog first), then the world sizes in increasing order."""
    step_flags = any(value is not None for value in (args.n_items, args.stages, args.path, args.variants))
    run_steps = step_flags or args.world_size is None
    run_scaling = args.world_size is not None or not step_flags
    common = {"device": args.device, "chunk_items": args.chunk_items}
    configs = []
    if run_steps:
        paths = _csv(args.path) if args.path else ["dense", "chunked"] + (["kernel"] if kernel_available(args.device)
                                                                         else [])
        for name, values, allowed in (("--stages", args.stages, STAGES), ("--path", ",".join(paths), PATHS),
                                      ("--variants", args.variants, VARIANTS)):
            unknown = set(_csv(values or "")) - set(allowed)
            if unknown:
                raise SystemExit(f"{name}: unknown {sorted(unknown)}; expected some of {list(allowed)}.")
        for n_items in sorted(int(n) for n in _csv(args.n_items or ",".join(map(str, N_ITEMS)))):
            for variant in _csv(args.variants or ",".join(VARIANTS)):
                for stage in _csv(args.stages or ",".join(STAGES)):
                    for path in paths:
                        configs.append({"kind": "step", "n_items": n_items, "variant": variant, "stage": stage,
                                        "path": path, "steps": args.steps, "batch_size": args.batch_size,
                                        "eval_users": args.eval_users,
                                        "targets_per_sequence": args.targets_per_sequence, **common})
    if run_scaling:
        for world_size in sorted(int(w) for w in _csv(args.world_size or "1,2")):
            configs.append({"kind": "scaling", "world_size": world_size, "batch_size": args.batch_size,
                            **SCALING, **common})
    return configs


def run_in_subprocess(config: dict, threads: int) -> dict:
    """One configuration in a fresh interpreter; a world-size run gives each rank threads // world_size."""
    per_process = max(1, threads // config["world_size"]) if config["kind"] == "scaling" else threads
    record = run_fresh(__file__, config, per_process)
    fields = ("n_items", "variant", "stage", "path", "world_size")
    return {**{k: config[k] for k in fields if k in config}, **record} if "error" in record else record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-items", help=f"catalog sizes, comma-separated (default {','.join(map(str, N_ITEMS))})")
    parser.add_argument("--stages", help=f"of {','.join(STAGES)} (default all)")
    parser.add_argument("--path", help="of dense,chunked,kernel (default dense,chunked, +kernel on CUDA with "
                                       "cut_cross_entropy)")
    parser.add_argument("--variants", help=f"of {','.join(VARIANTS)} (default all)")
    parser.add_argument("--world-size", help="warm-up throughput runs, e.g. 1,2 (gloo on CPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median reported)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda")
    parser.add_argument("--chunk-items", type=_chunk_items, default="auto", help="auto|N items per scoring chunk")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per configuration (default rodpo.devices.default_torch_threads(); "
                             "a world-size run gives each rank threads // world_size)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="training windows per step")
    parser.add_argument("--eval-users", type=int, default=EVAL_USERS, help="users in the evaluation batch")
    parser.add_argument("--targets-per-sequence", type=int, default=MAX_SEQ_LEN, choices=range(1, MAX_SEQ_LEN + 1),
                        metavar="T", help=f"real targets per training window, 1..{MAX_SEQ_LEN} (the rest is padding)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, in this process
    args = parser.parse_args()
    if args.one:
        baseline = peak_rss_bytes()  # the interpreter with torch and rodpo imported
        configure_torch_threads(default_torch_threads())  # the driver set OMP_NUM_THREADS
        print(json.dumps({**run_one(json.loads(args.one)), "import_rss_bytes": baseline}), flush=True)
        return
    if args.steps < 1:
        raise SystemExit(f"--steps {args.steps}: need at least one timed step.")
    threads = args.threads or default_torch_threads()
    throughput_1 = None
    for config in planned_configs(args):
        shown = {k: config[k] for k in ("n_items", "variant", "stage", "path", "world_size") if k in config}
        print(f"bench_scale: {shown}", file=sys.stderr, flush=True)
        reason = skip_reason(config)
        record = ({**{k: config[k] for k in ("n_items", "variant", "stage", "path")}, "skipped": reason} if reason
                  else run_in_subprocess(config, threads))
        if config["kind"] == "scaling" and "sequences_per_second" in record:
            if record["world_size"] == 1:
                throughput_1 = record["sequences_per_second"]
            elif throughput_1:
                record["scaling_efficiency"] = round(
                    record["sequences_per_second"] / (record["world_size"] * throughput_1), 3)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
