#!/usr/bin/env bash
# The GPU check: facts, CUDA tests, bench_scale at 10^5 / 10^6 items, bench_training in bf16 and a
# one-rank NCCL DDP warm-up, in <= 8 minutes, into ONE JSON file (path printed last). See
# benchmarks/gpu_check.py for the steps.
#
#   benchmarks/gpu_check.sh [--out FILE] [--steps cuda_tests,bench_scale,bench_training,ddp_smoke]
#   benchmarks/gpu_check.sh --dry-run      # the same steps on the CPU at tiny sizes (gloo, fp32)
#
# Without a GPU and without --dry-run: a message and exit 2, nothing written. Python: $PYTHON, else
# the checkout's .venv, else python3 on the PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
  python="$root/.venv/bin/python"
else
  python="$(command -v python3)"
fi
exec "$python" "$here/gpu_check.py" "$@"
