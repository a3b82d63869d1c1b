"""Feature extraction on several ranks: each rank extracts a contiguous slice of the items.

Items 1..I are split into `world_size` contiguous slices as evenly as possible (`item_slice`; a
rank may get an empty slice). Each rank runs an extractor (`extract_text_features`,
`extract_image_features`) on its slice as a table of its own, so it loads, fetches and encodes only
those items; the rows are then gathered to every rank and concatenated in item-id order, and the
manifests merged (counts summed, per-rank items, seconds and device kept). Ranks come from
rodpo.distributed, as in training: `world_size=N` starts N local ranks from this process, under
torchrun they are torchrun's. Every rank returns the whole result; only rank 0's is written
(NonWriterRankHook).

Agreement with one process: per-item inputs are independent, but batches are formed within a slice,
so batch shapes and padding differ. In fp32 rows agree to about 1e-6 (tests hold them to 1e-5
absolute); identical texts in different slices are encoded in different batches, so they agree to
that tolerance rather than bit for bit. Under fp16/bf16 autocast (CUDA) the difference is that of
running one process with another batch size.

Caches stay shared and valid. The text cache is keyed by content (encoder, options and the exact
texts of a chunk; text._chunk_cache_path), never by rank or position, so a chunk written at one
world size is right at any other; chunks are formed per slice, though, so another world size mostly
recomputes, while a rerun at the same world size resumes. Two ranks can only name the same chunk
file for the very same texts, i.e. the same vectors, and every file is written to a unique temp file
and renamed, so a reader never sees half a file. Images are keyed by URL hash and written the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.distributed as dist

from rodpo.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedContext,
    all_gather_rows,
    backend_for,
    check_world_size,
    init_from_torchrun,
    launch_local,
    launched_by_torchrun,
    rank_device,
)
from rodpo.features.common import check_item_ids, with_padding_row

WORLD_SIZE_PARAMETER = "feature_extraction.world_size"
# An extractor: (items table, *, device, show_progress, **options) -> (arrays with padding row 0 ..., manifest
# part); module-level, so that spawned ranks can unpickle it.
Extractor = Callable[..., tuple]


def item_slice(n_items: int, rank: int, world_size: int) -> range:
    """Item ids of `rank`'s slice: contiguous, in rank order, sizes differing by at most one (the
    first n_items % world_size ranks take one more); empty when world_size > n_items."""
    if n_items < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"item_slice(n_items={n_items}, rank={rank}, world_size={world_size}): "
                         "need n_items >= 0 and 0 <= rank < world_size.")
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start + 1, start + 1 + base + (rank < extra))


def slice_items(items: Any, ids: range) -> Any:
    """The rows of item ids `ids` as a table of its own, ids renumbered 1..len(ids): the extractors'
    contract (row i-1 holds item i), so they run on a slice unchanged. Polars or pandas."""
    offset = ids.start - 1
    if isinstance(items, pl.DataFrame):
        return items.slice(offset, len(ids)).with_columns(pl.col("item_id") - offset)
    part = items.iloc[offset:offset + len(ids)].copy()
    part["item_id"] = part["item_id"] - offset
    return part


def gather_item_rows(rows: np.ndarray, context: DistributedContext, device: torch.device) -> np.ndarray:
    """Every rank's rows concatenated in rank order, which is item-id order (slices are contiguous).
    `device` carries the collective (a GPU for NCCL); bool masks travel as uint8."""
    if not context.enabled:
        return rows
    sent = rows.astype(np.uint8) if rows.dtype == np.bool_ else np.ascontiguousarray(rows)
    gathered = torch.cat(all_gather_rows(torch.from_numpy(sent).to(device), context)).cpu().numpy()
    return gathered.astype(np.bool_) if rows.dtype == np.bool_ else gathered


def _all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    if not context.enabled:
        return [value]
    parts: list[Any] = [None] * context.world_size
    dist.all_gather_object(parts, value)
    return parts


def _sum_counts(key: str, values: Sequence[Any]) -> Any:
    """Numbers add up, lists concatenate, dicts merge key by key; seconds take the slowest rank's
    (ranks run side by side) and maxima ("max_*", e.g. max_tokens) the largest."""
    if all(isinstance(value, dict) for value in values):
        keys = dict.fromkeys(name for value in values for name in value)
        return {name: _sum_counts(name, [value[name] for value in values if name in value]) for name in keys}
    if all(isinstance(value, list) for value in values):
        return [entry for value in values for entry in value]
    if key.endswith("seconds") or key.startswith("max_"):
        return max(values)
    return sum(values)


def merge_rank_manifests(parts: Sequence[dict], counts: Iterable[str]) -> dict:
    """One manifest from the ranks' parts (rank order): the `counts` keys added up over the slices,
    everything else (encoder, dimension, options) from rank 0, where all ranks agree."""
    merged = dict(parts[0])
    for key in counts:
        values = [part[key] for part in parts if key in part]
        if values:
            merged[key] = _sum_counts(key, values)
    return merged


def extract_on_rank(context: DistributedContext, extract: Extractor, items: Any, options: dict, modality: str,
                    counts: Iterable[str]) -> tuple:
    """This rank's part of a sharded extraction: `extract` on its slice, then the gathered whole
    (arrays with padding row 0, merged manifest). The single process is rank 0 of 1: all items."""
    started = time.perf_counter()
    n_items = check_item_ids(items)
    ids = item_slice(n_items, context.rank, context.world_size)
    device = rank_device(options.get("device", "auto"), context)
    if context.enabled and device.startswith("cuda:"):
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    rank_options = {**options, "device": device,
                    "show_progress": options.get("show_progress", True) and context.is_writer}
    *arrays, manifest = extract(slice_items(items, ids), **rank_options)
    carrier = torch.device(device) if context.enabled and dist.get_backend() == "nccl" else torch.device("cpu")
    whole = [with_padding_row(gather_item_rows(array[1:], context, carrier)) for array in arrays]
    parts = _all_gather_objects(manifest, context)
    merged = merge_rank_manifests(parts, counts)
    merged[f"{modality}_world_size"] = context.world_size
    merged[f"{modality}_ranks"] = [  # "items": what the rank's extractor saw, not what it was given
        {"rank": rank, "first_item_id": item_slice(n_items, rank, context.world_size).start,
         "items": part.get("items"), "seconds": part.get(f"{modality}_seconds"),
         "device": part.get(f"{modality}_device")}
        for rank, part in enumerate(parts)]
    merged[f"{modality}_seconds"] = round(time.perf_counter() - started, 3)
    return (*whole, merged)


def extract_on_ranks(extract: Extractor, items: Any, options: dict, *, modality: str, counts: Iterable[str],
                     world_size: Any = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                     parameter: str = WORLD_SIZE_PARAMETER) -> tuple:
    """`extract(items, **options)` sharded over ranks: `world_size` local ones started from here, or
    torchrun's (then `world_size` must stay 1). `options["device"]` picks GPUs (one per rank, NCCL)
    or the CPU (gloo). `timeout_s` bounds the wait for the slowest rank at the gather."""
    device = options.get("device", "auto")
    arguments = (extract, items, options, modality, tuple(counts))
    if launched_by_torchrun():
        if world_size != 1:
            raise ValueError(f"{parameter}={world_size!r} under torchrun: leave it at 1; torchrun's "
                             "--nnodes / --nproc-per-node set the ranks.")
        return extract_on_rank(init_from_torchrun(backend_for(device), timeout_s), *arguments)
    check_world_size(world_size, device, parameter=parameter)
    return launch_local(extract_on_rank, world_size, arguments, backend=backend_for(device), timeout_s=timeout_s,
                        task="feature extraction",
                        recovery="No array was written; finished text chunks stay cached: rerun to continue.")
