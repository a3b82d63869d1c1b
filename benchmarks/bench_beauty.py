"""Quality and speed on the real Amazon Beauty sequences (../shared/benchmarks/amazon-beauty).

Runs the project's own `rodpo` pipeline (warm-up, DPO, evaluation) on the `amazon-beauty` preset
for each model variant below, through `kedro run` in the project, then prints one JSON line per
variant and a final summary line. Finished warm-ups are reused from their checkpoints, so variants
that differ only in stage 2 train one warm-up.

    python benchmarks/bench_beauty.py                       # all variants, paper hyper-parameters
    python benchmarks/bench_beauty.py --variants id_only full --seeds 2020 2021 2022

Compare with RecBole SASRec on the same files: ../shared/peers/recbole/RESULTS.md
(test NDCG@5 0.0326, MRR@5 0.0249, 133 s per training epoch on this 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DATASET = "amazon-beauty"

# Each variant: parameter overrides on top of conf/base (the paper's hyper-parameters).
VARIANTS: dict[str, dict[str, object]] = {
    # SASRec-equivalent: item ids only, no temporal module, no MoE (for the RecBole comparison).
    "id_only": {"model.modalities": "[id]", "model.temporal": False, "model.moe_mode": "none"},
    # The paper's model on what this copy has: ids + title fragments + time (no images exist).
    "full": {},
    "full_argmax": {"rodpo.dpo.negative_strategy": "argmax"},
    "full_random": {"rodpo.dpo.negative_strategy": "random"},
}


def _params(overrides: dict[str, object], seed: int, extra: list[str]) -> str:
    values = {"dataset": DATASET, "warmup.seed": seed, "rodpo.seed": seed,
              "warmup.progress_bar": False, "rodpo.progress_bar": False, **overrides}
    return ",".join([f"{key}={value}" for key, value in values.items()] + extra)


def _latest_json(path: Path) -> object:
    versions = sorted(p for p in path.iterdir() if p.is_dir())
    return json.loads((versions[-1] / path.name).read_text())


def _kedro_run(pipelines: str, params: str, log: Path) -> float:
    """`kedro run` in the project; returns wall seconds. The log keeps Kedro's output."""
    started = time.perf_counter()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    with log.open("w") as handle:
        subprocess.run([str(Path(sys.executable).with_name("kedro")), "run", f"--pipelines={pipelines}",
                        f"--params={params}"], cwd=PROJECT, env=env, stdout=handle,
                       stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def prepare_data(log_dir: Path) -> float:
    """Parse, filter, split and extract title features once; every variant reads them."""
    return _kedro_run("data_download,data_processing,feature_extraction", f"dataset={DATASET}",
                      log_dir / "data.log")


def run_variant(name: str, seed: int, extra: list[str], log_dir: Path) -> dict:
    params = _params(VARIANTS[name], seed, extra)
    wall = _kedro_run("rodpo", params, log_dir / f"{name}-seed{seed}.log")
    output = PROJECT / "data" / "07_model_output" / DATASET
    result = {"variant": name, "seed": seed, "params": params, "wall_seconds": round(wall, 1)}
    for stage in ("warmup", "rodpo"):
        metrics = _latest_json(output / stage / "metrics.json")
        history = _latest_json(output / f"{stage}_history.json")
        trained = [e for e in history if e.get("epoch", 0) > 0 and "train_seconds" in e]
        result[stage] = {
            "test": {k: round(v, 4) for k, v in metrics["test"].items()},
            "valid_ndcg@10": round(metrics["valid"]["ndcg@10"], 4),
            "epochs_run": len(trained),
            "train_seconds_per_epoch": round(statistics.median(e["train_seconds"] for e in trained), 2)
            if trained else None,
        }
    for metric in ("ndcg@5", "mrr@5"):
        before, after = result["warmup"]["test"][metric], result["rodpo"]["test"][metric]
        result[f"rodpo_vs_warmup_{metric}_%"] = round(100 * (after - before) / before, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020])
    parser.add_argument("--params", nargs="*", default=[], help="extra key=value overrides")
    parser.add_argument("--log-dir", default=str(PROJECT / "data" / "08_reporting" / DATASET / "bench_logs"))
    args = parser.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"data_seconds": round(prepare_data(log_dir), 1)}), flush=True)
    results = []
    for seed in args.seeds:
        for name in args.variants:
            results.append(run_variant(name, seed, args.params, log_dir))
            print(json.dumps(results[-1]), flush=True)
    summary = {}
    for name in args.variants:
        runs = [r for r in results if r["variant"] == name]
        summary[name] = {
            f"{stage}_{metric}": round(statistics.mean(r[stage]["test"][metric] for r in runs), 4)
            for stage in ("warmup", "rodpo") for metric in ("ndcg@5", "ndcg@10", "mrr@5", "mrr@10")
        }
        summary[name]["seeds"] = len(runs)
    print(json.dumps({"benchmark": "beauty", "dataset": DATASET, "summary": summary}))


if __name__ == "__main__":
    main()
