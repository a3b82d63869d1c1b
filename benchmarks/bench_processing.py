"""Benchmark: data_processing (parse -> duplicates -> k-core -> ids -> sort -> sequences -> split) on
synthetic raw files of 10^6-10^8 lines, in bounded memory.

    OMP_NUM_THREADS=1 POLARS_MAX_THREADS=2 python benchmarks/bench_processing.py \\
        --lines 1000000,10000000 --format amazon2023,amazon2023_benchmark,recbole [--engine streaming,in_memory]

Files are generated once into ``--cache`` (default ``~/.cache/rodpo/bench_processing``) and reused:
``amazon2023`` review lines (28-character user ids, parent_asin items, ms timestamps, title and text;
power-law users and items, so 5-core removes a realistic share and duplicates occur),
``amazon2023_benchmark`` ``last_out`` CSVs (``<Category>.{train,valid,test}.csv.gz``, users of >= 5
items in time order) and a RecBole ``.inter`` file. Each (format, size) is measured in a fresh process
running the data_processing nodes with the catalog's sink dataset (``--engine streaming``, the
pipeline) or the in-memory reference (``--engine in_memory``: ``parse_interactions`` +
``preprocess_interactions``). One JSON object per size: ``peak_rss_bytes`` (sampled VmRSS high-water
of that process, interpreter included), ``seconds``, and per stage (``stages``: seconds and peak RSS;
``steps``: the streaming steps' seconds).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

USERS_PER_LINE = 0.3  # Amazon 2023: Home_and_Kitchen 23.2M users for 67.4M ratings
BENCHMARK_ITEMS_PER_USER = 9.7  # 5-core Home_and_Kitchen: 28.2M ratings by 2.9M users
ITEMS_PER_LINE = 0.05
ZIPF_USERS, ZIPF_ITEMS = 0.5, 0.8
FIRST_MS, LAST_MS = 946_684_800_000, 1_694_000_000_000  # 2000-01-01 .. 2023-09
CHUNK_LINES = 2_000_000  # generation: lines built and compressed at a time
GZIP_LEVEL = 1
CATEGORY = "Synthetic"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ------------------------------------------------------------------------------------------ generation


def zipf_sampler(rng: np.random.Generator, n_values: int, exponent: float):
    weights = 1.0 / np.arange(1, n_values + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    permutation = rng.permutation(n_values)
    return lambda size: permutation[np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_values - 1)]


def _user_ids(codes):
    """28-character user ids, as the 2023 release's ("AE" + 26 digits)."""
    import polars as pl

    return pl.lit("AE") + codes.cast(pl.Utf8).str.zfill(26)


def _item_ids(codes):
    import polars as pl

    return pl.lit("B0") + codes.cast(pl.Utf8).str.zfill(8)


def generate_amazon2023(folder: Path, lines: int, seed: int) -> dict[str, str]:
    import polars as pl

    rng = np.random.default_rng(seed)
    users = zipf_sampler(rng, max(1, int(lines * USERS_PER_LINE)), ZIPF_USERS)
    items = zipf_sampler(rng, max(1, int(lines * ITEMS_PER_LINE)), ZIPF_ITEMS)
    path = folder / f"{CATEGORY}.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=GZIP_LEVEL) as out:
        for start in range(0, lines, CHUNK_LINES):
            n = min(CHUNK_LINES, lines - start)
            codes = pl.DataFrame({"u": users(n), "i": items(n), "r": rng.integers(1, 6, n),
                                  "t": rng.integers(FIRST_MS, LAST_MS, n)})
            frame = codes.select(
                pl.concat_str(
                    pl.lit('{"rating": '), pl.col("r").cast(pl.Utf8),
                    pl.lit('.0, "title": "Works as described", "text": "Bought it twice, no complaints.", '
                           '"images": [], "asin": "'), _item_ids(pl.col("i")), pl.lit('", "parent_asin": "'),
                    _item_ids(pl.col("i")), pl.lit('", "user_id": "'), _user_ids(pl.col("u")),
                    pl.lit('", "timestamp": '), pl.col("t").cast(pl.Utf8),
                    pl.lit(', "helpful_vote": 0, "verified_purchase": true}'),
                ).alias("line"))
            frame.write_csv(out, include_header=False, quote_style="never")
    return {"reviews": str(path)}


def generate_recbole(folder: Path, lines: int, seed: int) -> dict[str, str]:
    import polars as pl

    rng = np.random.default_rng(seed)
    users = zipf_sampler(rng, max(1, int(lines * USERS_PER_LINE)), ZIPF_USERS)
    items = zipf_sampler(rng, max(1, int(lines * ITEMS_PER_LINE)), ZIPF_ITEMS)
    path = folder / f"{CATEGORY}.inter"
    with open(path, "wb") as out:
        out.write(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for start in range(0, lines, CHUNK_LINES):
            n = min(CHUNK_LINES, lines - start)
            codes = pl.DataFrame({"u": users(n), "i": items(n), "r": rng.integers(1, 6, n).astype(float),
                                  "t": rng.integers(FIRST_MS, LAST_MS, n) // 1000})
            codes.select(_user_ids(pl.col("u")).alias("u"), _item_ids(pl.col("i")).alias("i"), "r", "t").write_csv(
                out, separator="\t", include_header=False)
    return {"reviews": str(path)}


def generate_benchmark(folder: Path, lines: int, seed: int) -> dict[str, str]:
    """last_out CSVs: each user's items in time order, the last one test, the second-to-last valid."""
    import polars as pl

    rng = np.random.default_rng(seed)
    items = zipf_sampler(rng, max(1, int(lines * ITEMS_PER_LINE)), ZIPF_ITEMS)
    mean_per_user = BENCHMARK_ITEMS_PER_USER
    paths = {part: folder / f"{CATEGORY}.{part}.csv.gz" for part in ("train", "valid", "test")}
    outs = {part: gzip.open(path, "wb", compresslevel=GZIP_LEVEL) for part, path in paths.items()}
    try:
        for out in outs.values():
            out.write(b"user_id,parent_asin,rating,timestamp\n")
        written, first_user = 0, 0
        while written < lines:
            counts = 4 + rng.geometric(1 / (mean_per_user - 4), size=CHUNK_LINES // int(mean_per_user))
            counts = counts[np.cumsum(counts) <= lines - written] if counts.sum() > lines - written else counts
            if counts.size == 0:
                counts = np.array([lines - written])
            n = int(counts.sum())
            user = np.repeat(np.arange(first_user, first_user + counts.size), counts)
            position = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
            from_end = np.repeat(counts, counts) - position  # 1 = the user's last item
            start = np.repeat(rng.integers(FIRST_MS, LAST_MS - 10**11, counts.size), counts)
            frame = pl.DataFrame({"u": user, "i": items(n), "r": rng.integers(1, 6, n).astype(float),
                                  "t": start + position * 86_400_000, "end": from_end})
            frame = frame.select(_user_ids(pl.col("u")).alias("user_id"), _item_ids(pl.col("i")).alias("parent_asin"),
                                 pl.col("r").alias("rating"), pl.col("t").alias("timestamp"), "end")
            for part, rows in (("test", frame.filter(pl.col("end") == 1)), ("valid", frame.filter(pl.col("end") == 2)),
                               ("train", frame.filter(pl.col("end") > 2))):
                buffer = rows.drop("end").write_csv(include_header=False)
                outs[part].write(buffer.encode())
            written += n
            first_user += counts.size
    finally:
        for out in outs.values():
            out.close()
    return {part: str(path) for part, path in paths.items()}


GENERATORS = {"amazon2023": generate_amazon2023, "amazon2023_benchmark": generate_benchmark, "recbole": generate_recbole}


def cached_files(cache: Path, fmt: str, lines: int, seed: int) -> dict[str, str]:
    """The synthetic files of (format, lines, seed), generated once; a manifest marks a complete set."""
    folder = cache / f"{fmt}_{lines}_{seed}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["files"]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = GENERATORS[fmt](folder, lines, seed)
    manifest.write_text(json.dumps({"files": files, "generate_seconds": round(time.perf_counter() - started, 1)}))
    return files


# ------------------------------------------------------------------------------------------ measurement


class RssSampler:
    """VmRSS high-water of this process, sampled; ``stage()`` starts a new per-stage maximum."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s, self.peak, self.stage_peak, self.step_peak = interval_s, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_BYTES

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self) -> None:
        now = self.rss()
        self.peak, self.stage_peak = max(self.peak, now), max(self.stage_peak, now)
        self.step_peak = max(self.step_peak, now)

    def step(self) -> int:
        """The peak since the previous call (the streaming steps' own windows)."""
        self.sample()
        peak, self.step_peak = self.step_peak, self.rss()
        return peak

    def stage(self) -> int:
        self.sample()
        peak, self.stage_peak = self.stage_peak, self.rss()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class StepLog(logging.Handler):
    """Seconds and peak RSS of the streaming steps (rodpo.data.streaming.timed records)."""

    def __init__(self, sampler: RssSampler) -> None:
        super().__init__(logging.DEBUG)
        self.sampler, self.steps = sampler, {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("step "):
            step, seconds = record.args
            seen = self.steps.setdefault(step, {"seconds": 0.0, "peak_rss_bytes": 0})
            seen["seconds"] = round(seen["seconds"] + seconds, 2)
            seen["peak_rss_bytes"] = max(seen["peak_rss_bytes"], self.sampler.step())


def measure(fmt: str, files: dict[str, str], engine: str, rows_per_bucket: int, work: Path) -> dict:
    import polars as pl

    sampler, stages, started = RssSampler(), {}, time.perf_counter()

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = {"seconds": round(now - since, 2), "peak_rss_bytes": sampler.stage()}
        sampler.step()  # a stage boundary also starts the next step's window
        return now

    if engine == "in_memory":
        result = _in_memory(fmt, files, stage)
    else:
        result = _streaming(fmt, files, rows_per_bucket, work, stage, sampler)
    users, items, actions = (result["stats"][key] for key in ("users", "items", "actions"))
    sampler.stop()
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_bytes": sampler.peak, "stages": stages,
            **({"steps": result["steps"]} if "steps" in result else {}),
            "users": users, "items": items, "actions": actions, "polars_threads": pl.thread_pool_size()}


def _streaming(fmt: str, files: dict[str, str], rows_per_bucket: int, work: Path, stage, sampler: RssSampler) -> dict:
    from rodpo.data.preprocess import dataset_statistics
    from rodpo.lazy_parquet import LazyParquetDataset
    from rodpo.pipelines.data_processing import nodes

    steps = StepLog(sampler)
    streaming_logger = logging.getLogger("rodpo.data.streaming")
    streaming_logger.addHandler(steps)
    streaming_logger.setLevel(logging.DEBUG)
    options = nodes.ProcessingParams(work_dir=str(work / "scratch"), rows_per_bucket=rows_per_bucket)
    raw_files = {"source": fmt, "files": files, "benchmark": "5core/last_out"}

    def sink(frame, name: str):
        dataset = LazyParquetDataset(filepath=str(work / f"{name}.parquet"))
        dataset.save(frame)
        return dataset.load()

    since = time.perf_counter()
    raw = sink(nodes.parse_raw_interactions(raw_files, options, {}), "raw_interactions")
    since = stage("parse", since)
    interactions, user_map, item_map = nodes.filter_and_index_interactions(raw, options, {})
    interactions = sink(interactions, "interactions")
    user_map.write_parquet(work / "user_id_map.parquet")
    item_map.write_parquet(work / "item_id_map.parquet")
    since = stage("filter_and_index", since)
    sequences = sink(nodes.build_sequences(interactions, options), "sequences")
    since = stage("sequences", since)
    sink(nodes.split_sequences(sequences, options, {}), "sequence_splits")
    since = stage("split", since)
    stats = dataset_statistics(interactions)
    stage("statistics", since)
    return {"stats": stats, "steps": steps.steps}


def _in_memory(fmt: str, files: dict[str, str], stage) -> dict:
    from rodpo.data.parsers import parse_interactions
    from rodpo.data.preprocess import build_sequences, dataset_statistics, leave_one_out_split, preprocess_interactions

    since = time.perf_counter()
    raw = parse_interactions(files["reviews"], fmt)
    since = stage("parse", since)
    interactions, _, _ = preprocess_interactions(raw, k_core=5)
    del raw
    since = stage("filter_and_index", since)
    sequences = build_sequences(interactions)
    since = stage("sequences", since)
    leave_one_out_split(sequences)
    since = stage("split", since)
    stats = dataset_statistics(interactions)
    stage("statistics", since)
    return {"stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="1000000", help="comma-separated sizes, e.g. 1000000,10000000,100000000")
    parser.add_argument("--format", default="amazon2023", help=f"comma-separated, of {sorted(GENERATORS)}")
    parser.add_argument("--engine", default="streaming", help="comma-separated: streaming (the pipeline), in_memory")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rodpo" / "bench_processing")
    parser.add_argument("--rows-per-bucket", type=int, default=4_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # JSON job for the child process
    args = parser.parse_args()
    if args.measure:
        job = json.loads(args.measure)
        print(json.dumps(measure(job["format"], job["files"], job["engine"], job["rows_per_bucket"], Path(job["work"]))))
        return
    for fmt in args.format.split(","):
        if fmt not in GENERATORS:
            raise SystemExit(f"--format {fmt!r}: expected some of {sorted(GENERATORS)}")
        for lines in (int(n) for n in args.lines.split(",")):
            files = cached_files(args.cache, fmt, lines, args.seed)
            input_bytes = sum(Path(p).stat().st_size for p in files.values())
            for engine in args.engine.split(","):
                if (fmt, engine) == ("amazon2023_benchmark", "in_memory"):
                    continue  # the split files have no in-memory reader: streaming only
                with tempfile.TemporaryDirectory(prefix="rodpo_bench_", dir=args.cache) as work:
                    job = {"format": fmt, "files": files, "engine": engine, "rows_per_bucket": args.rows_per_bucket,
                           "work": work}
                    child = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], check=True,
                                           capture_output=True, text=True)
                result = json.loads(child.stdout.strip().splitlines()[-1])
                print(json.dumps({"format": fmt, "lines": lines, "engine": engine, "input_bytes": input_bytes,
                                  "rows_per_bucket": args.rows_per_bucket, **result}), flush=True)


if __name__ == "__main__":
    main()
