"""Benchmark: parse + preprocess + split of a synthetic Amazon-2018-format review dump.

    python benchmarks/bench_processing.py --n 10000000 [--users U] [--items I] [--workdir DIR] [--keep]

Generates ``reviews.json.gz`` (JSON lines with reviewerID, asin, unixReviewTime, overall, ...) with
power-law user activity and item popularity, so 5-core filtering removes a realistic share, then
times ``parse_interactions(path, "amazon2018")``, ``preprocess_interactions`` (k=5),
``build_sequences`` and ``leave_one_out_split`` in a fresh subprocess, so the generator's memory
is not in the peak RSS. Prints one JSON line. peak_rss_mb is ``ru_maxrss`` of the timed
subprocess: its whole life, including the interpreter and polars import (~100 MB).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECONDS_PER_DAY = 86_400
FIRST_DAY = 10_957  # 2000-01-01 in days since the epoch
LAST_DAY = 17_805  # 2018-10-01
USERS_PER_INTERACTION = 0.3  # Amazon 2018 categories: about 0.3-0.5 users per review
ITEMS_PER_INTERACTION = 0.05
ZIPF_EXPONENT_USERS = 0.5  # max ~1k reviews per user at 1M; 5-core keeps ~37% of actions
ZIPF_EXPONENT_ITEMS = 0.8  # with the above: ~8 actions per user, ~18 per item after 5-core
GZIP_LEVEL = 1  # generation speed matters more than file size here


def zipf_sample(rng: np.random.Generator, n_values: int, exponent: float, size: int) -> np.ndarray:
    """Draw ``size`` indices in [0, n_values) with P(rank r) ~ 1 / (r + 1) ** exponent, shuffled."""
    weights = 1.0 / np.arange(1, n_values + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    return rng.permutation(n_values)[np.minimum(ranks, n_values - 1)]


def generate_reviews(path: Path, n: int, n_users: int, n_items: int, seed: int) -> None:
    """Write ``n`` review lines in the Amazon 2018 JSON-lines layout, grouped by item like the dumps."""
    import polars as pl

    rng = np.random.default_rng(seed)
    users = zipf_sample(rng, n_users, ZIPF_EXPONENT_USERS, n)
    items = zipf_sample(rng, n_items, ZIPF_EXPONENT_ITEMS, n)
    days = rng.integers(FIRST_DAY, LAST_DAY, n)
    order = np.argsort(items, kind="stable")  # the 2018 dumps list reviews item by item
    frame = pl.DataFrame(
        {
            "u": users[order],
            "i": items[order],
            "t": days[order] * SECONDS_PER_DAY,
            "r": rng.integers(1, 6, n)[order],
        }
    )
    del users, items, days, order
    q = '"'
    lines = frame.select(
        pl.concat_str(
            pl.lit('{"overall": '), pl.col("r").cast(pl.Utf8), pl.lit('.0, "verified": true, '),
            pl.lit('"reviewTime": "'),
            pl.from_epoch("t", time_unit="s").dt.strftime("%m %-d, %Y"),
            pl.lit(f'{q}, "reviewerID": "A'), pl.col("u").cast(pl.Utf8).str.zfill(13),
            pl.lit(f'{q}, "asin": "B'), pl.col("i").cast(pl.Utf8).str.zfill(9),
            pl.lit(f'{q}, "reviewerName": "Reviewer", "unixReviewTime": '),
            pl.col("t").cast(pl.Utf8), pl.lit("}"),
        ).alias("line")
    )  # fmt: skip
    del frame
    plain = path.with_suffix("")  # reviews.json
    lines.write_csv(plain, include_header=False, quote_style="never")
    del lines
    with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=GZIP_LEVEL) as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)
    plain.unlink()


def measure(path: Path) -> dict:
    """Time the processing chain on ``path``; runs in its own process (see module docstring)."""
    import polars as pl

    from rodpo.data.parsers import parse_interactions
    from rodpo.data.preprocess import (
        build_sequences,
        dataset_statistics,
        leave_one_out_split,
        preprocess_interactions,
    )

    start = time.perf_counter()
    raw = parse_interactions(path, "amazon2018")
    parsed = time.perf_counter()
    interactions, _, _ = preprocess_interactions(raw, k_core=5, drop_duplicates=True)
    preprocessed = time.perf_counter()
    splits = leave_one_out_split(build_sequences(interactions))
    split_done = time.perf_counter()
    stats = dataset_statistics(interactions)
    assert splits.height == stats["users"]
    return {
        "n_interactions_parsed": len(raw),
        "parse_seconds": round(parsed - start, 2),
        "preprocess_seconds": round(preprocessed - parsed, 2),
        "split_seconds": round(split_done - preprocessed, 2),
        "total_seconds": round(split_done - start, 2),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_note": "ru_maxrss of the timed subprocess (interpreter + imports included)",
        "users": stats["users"],
        "items": stats["items"],
        "actions": stats["actions"],
        "polars_threads": pl.thread_pool_size(),
        "cpu_count": os.cpu_count(),
    }


def run_stage(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="interactions to generate")
    parser.add_argument("--users", type=int, help=f"default n * {USERS_PER_INTERACTION}")
    parser.add_argument("--items", type=int, help=f"default n * {ITEMS_PER_INTERACTION}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to write the file (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--stage", choices=["generate", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage == "generate":
        generate_reviews(args.path, args.n, args.users, args.items, args.seed)
        return
    if args.stage == "measure":
        print(json.dumps(measure(args.path)))
        return

    n_users = args.users or max(1, int(args.n * USERS_PER_INTERACTION))
    n_items = args.items or max(1, int(args.n * ITEMS_PER_INTERACTION))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rodpo_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"reviews_{args.n}.json.gz"
    try:
        start = time.perf_counter()
        run_stage("--stage", "generate", "--path", str(path), "--n", str(args.n),
                  "--users", str(n_users), "--items", str(n_items), "--seed", str(args.seed))  # fmt: skip
        generate_seconds = time.perf_counter() - start
        file_mb = path.stat().st_size / 2**20
        result = json.loads(run_stage("--stage", "measure", "--path", str(path)))
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "n_interactions": args.n,
        "generated_users": n_users,
        "generated_items": n_items,
        "file_mb": round(file_mb, 1),
        "generate_seconds": round(generate_seconds, 2),
        **result,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
