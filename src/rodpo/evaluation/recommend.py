"""Top-N recommendations from a trained next-item model: what a user ships downstream.

At serving time everything a user did is known, so the model reads each user's FULL history
(train + valid + test items, i.e. the ``sequences`` table), keeps the most recent
``max_seq_len`` items as in training, scores every real item and keeps the best N
(``torch.topk``). Scores are the model's fp32 logits; the padding item 0 never appears.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch import nn

from rodpo.devices import resolve_device
from rodpo.ranking import state_batches
from rodpo.scoring import top_k_items

DEFAULT_TOP_N = 20
DEFAULT_BATCH_SIZE = 2048
RECOMMENDATION_SCHEMA = {"user_id": pl.Utf8, "rank": pl.Int32, "item_id": pl.Utf8, "score": pl.Float32}


def right_padded(lists: pl.Series, width: int) -> np.ndarray:
    """The last ``width`` values of each list, left-aligned and zero-padded: (rows, width) int64."""
    padding = pl.lit([0] * width, dtype=pl.List(pl.Int64))
    recent = lists.cast(pl.List(pl.Int64)).list.tail(width).list.concat(padding).list.head(width)
    values = pl.select(recent.list.to_array(width)).to_series().to_numpy()
    return np.array(values, dtype=np.int64).reshape(len(lists), width)  # a writable copy, for torch


def top_n_items(
    model: nn.Module,
    histories: np.ndarray,
    timestamps: np.ndarray,
    *,
    top_n: int = DEFAULT_TOP_N,
    exclude: pl.Series | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    chunk_items: int | str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_n`` best-scored real items after each right-padded history (exact, chunked over the
    catalog by the scoring core: no (users, n_items) scores).

    Args:
        model: has ``last_states(items, timestamps) -> (B, D)`` and ``scoring_table() -> (n_items + 1, D)``.
        histories, timestamps: (users, seq_len) int64, right-padded with 0.
        exclude: optional list column, one list of item ids per user, never recommended
            (e.g. everything the user already has).

    Returns:
        item ids (users, top_n) int64 and their scores (users, top_n) float32, best first (ties: lower
        item id first). Where fewer than ``top_n`` items are left (tiny catalogues, long exclusions)
        the tail holds item 0 with score -inf; ``recommendations_table`` drops those.
    """
    if top_n < 1 or batch_size < 1:
        raise ValueError(f"top_n={top_n}, batch_size={batch_size}: both must be >= 1.")
    if histories.shape != timestamps.shape or histories.ndim != 2:
        raise ValueError(f"histories {histories.shape} and timestamps {timestamps.shape}: expected the same "
                         "(users, seq_len) shape; build both with right_padded.")
    if exclude is not None and len(exclude) != len(histories):
        raise ValueError(f"exclude has {len(exclude)} lists for {len(histories)} users; pass one list per user.")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model.to(device)
    n_users = len(histories)
    item_ids = np.zeros((n_users, top_n), dtype=np.int64)
    scores = np.full((n_users, top_n), -np.inf, dtype=np.float32)
    for rows, _, states, table in state_batches(model, histories, timestamps, batch_size, device):
        excluded = None if exclude is None else torch.from_numpy(_padded_lists(exclude.gather(rows))).to(device)
        best_scores, best_items = top_k_items(states, table, top_n, exclude_ids=excluded, chunk_items=chunk_items)
        item_ids[rows] = best_items.cpu().numpy()
        scores[rows] = best_scores.cpu().numpy()
    return item_ids, scores


def recommend_top_n(
    model: nn.Module,
    sequences: pl.DataFrame,
    user_id_map: pl.DataFrame,
    item_id_map: pl.DataFrame,
    *,
    top_n: int = DEFAULT_TOP_N,
    exclude_history: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
) -> pl.DataFrame:
    """Top-N for every user of ``sequences`` (full histories), with original user and item ids.

    Returns columns user_id (str), rank (1..N), item_id (str), score (float32), sorted by user then
    rank. ``exclude_history`` leaves out every item the user has already interacted with.
    """
    missing = {"user_id", "item_ids", "timestamps"} - set(sequences.columns)
    if missing:
        raise ValueError(f"sequences lacks columns {sorted(missing)}; pass the `sequences` table "
                         "(user_id, item_ids, timestamps) from data_processing.")
    width = model.config.max_seq_len
    item_ids, scores = top_n_items(
        model,
        right_padded(sequences["item_ids"], width),
        right_padded(sequences["timestamps"], width),
        top_n=top_n,
        exclude=sequences["item_ids"] if exclude_history else None,
        batch_size=batch_size,
        device=device,
    )
    return recommendations_table(sequences["user_id"].to_numpy(), item_ids, scores, user_id_map, item_id_map)


def recommendations_table(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    scores: np.ndarray,
    user_id_map: pl.DataFrame,
    item_id_map: pl.DataFrame,
) -> pl.DataFrame:
    """(users, N) internal ids and scores -> long table with original ids; padding slots dropped."""
    n_users, top_n = item_ids.shape
    long = pl.DataFrame({
        "user_id": np.repeat(user_ids.astype(np.int32), top_n),
        "rank": np.tile(np.arange(1, top_n + 1, dtype=np.int32), n_users),
        "item_id": item_ids.ravel().astype(np.int32),
        "score": scores.ravel().astype(np.float32),
    }).filter(pl.col("item_id") > 0)
    users = user_id_map.select(pl.col("user_id").cast(pl.Int32), pl.col("original_user_id"))
    items = item_id_map.select(pl.col("item_id").cast(pl.Int32), pl.col("original_item_id"))
    table = long.join(users, on="user_id", how="left").join(items, on="item_id", how="left")
    unmapped = table.filter(pl.col("original_user_id").is_null() | pl.col("original_item_id").is_null())
    if unmapped.height:
        raise ValueError(
            f"{unmapped.height} recommendations have no original id (e.g. user {unmapped['user_id'][0]}, item "
            f"{unmapped['item_id'][0]}); user_id_map / item_id_map do not match the model's data. Rerun "
            "data_processing and retrain, or pass the maps of the same dataset."
        )
    return (
        table.sort("user_id", "rank")
        .select(pl.col("original_user_id").alias("user_id"), "rank",
                pl.col("original_item_id").alias("item_id"), "score")
        .cast(RECOMMENDATION_SCHEMA)
    )


def _padded_lists(lists: pl.Series) -> np.ndarray:
    """A list column -> (rows, longest) int64 ids, right-padded with 0 (the scoring core's exclusion ids)."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    values = lists.explode().drop_nulls().cast(pl.Int64).to_numpy(writable=True)
    padded = np.zeros((len(lengths), width), dtype=np.int64)
    padded[np.repeat(np.arange(len(lengths)), lengths), np.arange(lengths.sum()) - np.repeat(
        np.cumsum(lengths) - lengths, lengths)] = values
    return padded
