#!/usr/bin/env python
"""One GPU check, prepared for short and rare GPU slots: run `benchmarks/gpu_check.sh` as is.

Steps, each with its own time limit (all together <= 8 minutes on one GPU):
- facts:          torch / CUDA / cuDNN / NCCL versions, the GPU, bf16 support, cut-cross-entropy;
- cuda_tests:     the tests marked `cuda` (chunked CE and its gradient vs dense in fp32 and bf16,
                  the kernel vs the chunked path, top-K pools and ranks on CUDA == on the CPU, a
                  bf16 DPO step);
- bench_scale:    warm-up step, DPO step and 2,048-user evaluation at 10^5 and 10^6 items, chunked
                  vs the cut-cross-entropy kernel: s/step and peak_cuda_bytes, kernel/chunked ratios;
- bench_training: stage-2 / warm-up epoch ratios on CUDA in bf16 (ID-only and full model);
- ddp_smoke:      benchmarks/ddp_smoke.py under `torchrun --nproc-per-node=1`: one NCCL rank, the
                  demo's data, a DDP step against the plain one, one warm-up epoch and validation.
Everything lands in ONE JSON file (its path is printed last). `--dry-run` walks the same steps on
the CPU at tiny sizes (gloo instead of NCCL, fp32); without a GPU and without `--dry-run` it says
so and exits 2, writing nothing.

    benchmarks/gpu_check.sh --out /tmp/gpu_check.json
    benchmarks/gpu_check.sh --dry-run                     # CPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NO_GPU_EXIT = 2
NO_GPU_MESSAGE = ("gpu_check: torch sees no CUDA GPU (torch.cuda.is_available() is False); nothing was run or "
                  "written. Run it on a GPU machine, or pass --dry-run to walk the same steps on the CPU at tiny "
                  "sizes.")
TAIL_CHARS = 3000  # of a failed step's output, kept in the JSON

# Per mode: sizes and time limits (seconds). The full limits add up to 430 s of the 480 s budget.
PLANS = {
    "full": {
        "device": "cuda", "backend": "nccl", "precision": "bf16",
        "cuda_tests": {"paths": ["tests"], "timeout_s": 60},
        "bench_scale": {"args": ["--n-items", "100000,1000000", "--stages", "warmup,dpo,eval",
                                 "--path", "chunked,kernel", "--variants", "id_only", "--steps", "2"],
                        "timeout_s": 180},
        "bench_training": {"args": ["--scale", "0.5", "--variants", "id_only,full", "--objectives", "dpo,simpo",
                                    "--references", "model", "--epochs", "1", "--threads", "4"],
                           "timeout_s": 130},
        "ddp_smoke": {"users": 1000, "items": 500, "timeout_s": 60},
    },
    "dry_run": {
        "device": "cpu", "backend": "gloo", "precision": "fp32",
        "cuda_tests": {"paths": ["tests/test_cuda.py", "tests/training/test_stage.py"], "timeout_s": 60},
        "bench_scale": {"args": ["--n-items", "150", "--stages", "warmup,dpo,eval", "--path", "chunked,kernel",
                                 "--variants", "id_only", "--steps", "1", "--batch-size", "4", "--eval-users", "8",
                                 "--targets-per-sequence", "5"],
                        "timeout_s": 60},
        "bench_training": {"args": ["--scale", "0.01", "--variants", "id_only", "--objectives", "simpo",
                                    "--epochs", "1", "--threads", "1", "--batch-size", "64"],
                           "timeout_s": 60},
        "ddp_smoke": {"users": 100, "items": 60, "timeout_s": 60},
    },
}


# ---------------------------------------------------------------------------------- steps
def gpu_facts() -> dict:
    """What the machine is: versions, devices, and whether the optional kernel is importable."""
    import torch

    facts = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
             "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "nccl": None, "gpus": [], "cut_cross_entropy": _package_version("cut-cross-entropy"),
             "cpu_count": os.cpu_count(), "rodpo_commit": _git_commit()}
    if torch.cuda.is_available():
        try:
            facts["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError):
            facts["nccl"] = None
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            facts["gpus"].append({"name": properties.name, "capability": f"{properties.major}.{properties.minor}",
                                  "memory_bytes": properties.total_memory,
                                  "multiprocessors": properties.multi_processor_count})
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
        facts["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return facts


def run_command(command: list[str], timeout_s: float, cwd: Path = ROOT, env: dict | None = None) -> dict:
    """rc, seconds and the output of one command; past `timeout_s` its whole process group (the
    benchmarks' per-configuration children, torchrun's workers) is killed and rc is 124."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        rc = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        rc = 124
    return {"command": " ".join(command), "rc": rc, "seconds": round(time.perf_counter() - started, 1),
            "stdout": stdout, "stderr": stderr}


def _finished(result: dict, **fields) -> dict:
    """The step's record: rc and seconds, its fields, and the output tails only when it failed."""
    record = {"command": result["command"], "rc": result["rc"], "seconds": result["seconds"], **fields}
    if result["rc"] != 0:
        record["stdout_tail"] = result["stdout"][-TAIL_CHARS:]
        record["stderr_tail"] = result["stderr"][-TAIL_CHARS:]
    return record


def cuda_tests(plan: dict) -> dict:
    step = plan["cuda_tests"]
    result = run_command([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                          *step["paths"]], step["timeout_s"])
    lines = [line for line in result["stdout"].splitlines() if line.strip()]
    return _finished(result, summary=lines[-1] if lines else "")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def bench_scale(plan: dict) -> dict:
    step = plan["bench_scale"]
    result = run_command([sys.executable, str(BENCHMARKS / "bench_scale.py"), *step["args"],
                          "--device", plan["device"]], step["timeout_s"])
    records = _json_lines(result["stdout"])
    return _finished(result, records=records, kernel_over_chunked=kernel_over_chunked(records))


def kernel_over_chunked(records: list[dict]) -> list[dict]:
    """Per catalog size and stage where both ran: s/step and peak memory of the kernel / of the chunked path."""
    by_key = {(r["n_items"], r["stage"], r["path"]): r for r in records if "seconds_per_step" in r}
    ratios = []
    for (n_items, stage, path), kernel in sorted(by_key.items()):
        chunked = by_key.get((n_items, stage, "chunked"))
        if path != "kernel" or chunked is None:
            continue
        ratio = {"n_items": n_items, "stage": stage,
                 "seconds_per_step": round(kernel["seconds_per_step"] / chunked["seconds_per_step"], 3)}
        if "peak_cuda_bytes" in kernel and chunked.get("peak_cuda_bytes"):
            ratio["peak_cuda_bytes"] = round(kernel["peak_cuda_bytes"] / chunked["peak_cuda_bytes"], 3)
        ratios.append(ratio)
    return ratios


def bench_training(plan: dict) -> dict:
    step = plan["bench_training"]
    result = run_command([sys.executable, str(BENCHMARKS / "bench_training.py"), *step["args"],
                          "--device", plan["device"], "--precision", plan["precision"]], step["timeout_s"])
    try:
        report = json.loads(result["stdout"])
    except json.JSONDecodeError:
        report = None
    return _finished(result, report=report)


def ddp_smoke(plan: dict) -> dict:
    """benchmarks/ddp_smoke.py under `torchrun --standalone --nproc-per-node=1`: one DDP rank on the
    plan's backend, the demo warm-up's data, one epoch and its validation."""
    step = plan["ddp_smoke"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = run_command([torchrun, "--standalone", "--nproc-per-node=1", str(BENCHMARKS / "ddp_smoke.py"),
                          "--device", plan["device"], "--precision", plan["precision"],
                          "--users", str(step["users"]), "--items", str(step["items"])], step["timeout_s"])
    records = _json_lines(result["stdout"])
    return _finished(result, record=records[-1] if records else None)


# ---------------------------------------------------------------------------------- helpers
def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def default_out() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return ROOT / "data" / "08_reporting" / f"gpu_check-{stamp}.json"


def write_json(path: Path, payload: dict) -> None:
    """Written whole or not at all (a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(payload, indent=2))
    os.replace(partial, path)


STEPS = {"cuda_tests": cuda_tests, "bench_scale": bench_scale, "bench_training": bench_training,
         "ddp_smoke": ddp_smoke}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, help="the JSON file to write (default data/08_reporting/gpu_check-*.json)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"some of {','.join(STEPS)} (default all)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; expected some of {list(STEPS)}.")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return NO_GPU_EXIT
    mode = "dry_run" if args.dry_run else "full"
    plan = PLANS[mode]
    started = time.perf_counter()
    report = {"benchmark": "gpu_check", "mode": mode, "device": plan["device"], "backend": plan["backend"],
              "precision": plan["precision"], "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "facts": gpu_facts(), "steps": {}}
    print(json.dumps(report["facts"], indent=2), flush=True)
    for name in chosen:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        report["steps"][name] = STEPS[name](plan)
        print(f"gpu_check: {name} rc={report['steps'][name]['rc']} in {report['steps'][name]['seconds']} s",
              file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failed_steps"] = [name for name, step in report["steps"].items() if step["rc"] != 0]
    out = args.out or default_out()
    write_json(out, report)
    print(f"gpu_check: results in {out}")
    return 1 if report["failed_steps"] else 0


if __name__ == "__main__":
    sys.exit(main())
