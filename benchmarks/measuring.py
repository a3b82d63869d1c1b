"""What the benchmarks measure with: peak RSS, device synchronisation, tensor bytes, the rank pass
against its matmul floor, a configuration in a fresh process (one copy for all)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


def run_fresh(script: str | Path, config: dict, threads: int) -> dict:
    """`script --one <config>` in a fresh interpreter (its own peak RSS) with OMP_NUM_THREADS=threads;
    its last JSON stdout line is the record, else {"error": ...} with the exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, str(Path(script).resolve()), "--one", json.dumps(config)],
                          stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
    return {"error": f"exit code {done.returncode}{why}"}


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock interval covers it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def rank_pass_vs_matmul(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                        chunk_items: int | str, repeats: int = 3) -> dict:
    """Median seconds of the exact target-rank pass (rodpo.scoring.target_ranks) over the catalog and
    of its chunk matmuls alone (the same widths, into one reused buffer): the floor the pass can
    approach, and their ratio (issue 18's target: <= 1.5)."""
    from rodpo.scoring import SCORE_ALIGN, resolve_chunk_items, target_ranks

    n_rows, n_items = states.shape[0], table.shape[0] - 1
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    width = -(-width // SCORE_ALIGN) * SCORE_ALIGN
    buffer = torch.empty(n_rows * width, dtype=states.dtype, device=states.device)

    def matmuls() -> None:
        for first in range(1, n_items + 1, width):
            rows = table[first:first + width]
            torch.mm(states, rows.T, out=buffer[:n_rows * rows.shape[0]].view(n_rows, rows.shape[0]))

    def median_seconds(run) -> float:
        run()  # first call: allocator and kernels
        seconds = []
        for _ in range(repeats):
            synchronize(states.device)
            started = time.perf_counter()
            run()
            synchronize(states.device)
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    with torch.inference_mode():
        rank_s = median_seconds(lambda: target_ranks(states, table, targets, chunk_items=chunk_items))
        matmul_s = median_seconds(matmuls)
    return {"rank_pass_s": rank_s, "matmul_s": matmul_s,
            "rank_pass_over_matmul": round(rank_s / matmul_s, 3), "target_rank_pass_over_matmul": 1.5}
