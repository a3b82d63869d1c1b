"""Turn `sequence_splits` into padded int64 arrays once, for training and leave-one-out evaluation.

Layout: RIGHT padding (items first, zeros after), as RecBole's SASRec: position embeddings count
from the oldest item kept, the last real position is read with a gather, and a batch can be cut
to its longest sequence (`trim_to_longest`) without touching any real position.

Training: a user's train sequence i_1..i_n gives inputs i_1..i_{n-1} and targets i_2..i_n, every
position supervised. A sequence longer than max_seq_len + 1 is cut into windows of max_seq_len + 1
items overlapping by one item, newest first, so every target i_2..i_n is supervised exactly once
and the most recent window keeps full context.
Validation: history = last max_seq_len train items, target = valid item.
Test: history = last max_seq_len of train + valid items, target = test item.
Several targets (global-time and given splits: list columns `valid_item_ids`, `test_item_ids`): one
evaluation row per (user, target), every target of a split sharing the user's history before the cut.
Leave-one-out's single targets are read as one-element lists, so its rows are exactly one per user.
A target whose user has no history before the cut is still ranked (from the empty history, as a
leave-one-out user without train items always was) and counted in
`SequenceData.targets_without_history`; evaluation reports those targets' metrics apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

SPLIT_COLUMNS = ("user_id", "train_item_ids", "train_timestamps", "valid_item_id", "valid_timestamp",
                 "test_item_id", "test_timestamp")
MULTI_TARGET_SPLIT_COLUMNS = ("user_id", "train_item_ids", "train_timestamps", "valid_item_ids", "valid_timestamps",
                              "test_item_ids", "test_timestamps")


@dataclass(frozen=True)
class TrainWindows:
    """Training windows: items/timestamps (N, max_seq_len + 1) int64, right-padded; user_ids (N,)."""

    items: np.ndarray
    timestamps: np.ndarray
    user_ids: np.ndarray


@dataclass(frozen=True)
class EvalSequences:
    """One row per user: history items/timestamps (N, max_seq_len) right-padded, next-item target (N,)."""

    user_ids: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    targets: np.ndarray
    target_timestamps: np.ndarray


@dataclass(frozen=True)
class SequenceData:
    """Everything the trainer and evaluator read, built once by `build_sequence_data`."""

    train: TrainWindows
    valid: EvalSequences
    test: EvalSequences
    n_items: int
    max_seq_len: int
    time_min: int | None  # over real training timestamps; sets the temporal module's range
    time_max: int | None
    # {"valid": {"users": u, "targets": t}, "test": ...}: evaluation rows whose history is empty
    targets_without_history: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of all arrays and sizes: keys checkpoints so changed data never resumes a stale run."""
        digest = hashlib.sha256(f"{self.n_items}:{self.max_seq_len}".encode())
        for part in (self.train, self.valid, self.test):
            for array in vars(part).values():
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def _flatten(column: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """list column -> (flat values int64, start offset per row, length per row)."""
    arrow = column.rechunk().to_arrow()
    lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = arrow.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return flat, starts, lengths


def _gather_rows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Rows flat[starts[r]:ends[r]] left-aligned in a (R, width) zero-padded array (ends - starts <= width)."""
    index = starts[:, None] + np.arange(width)[None, :]
    real = index < ends[:, None]
    return np.where(real, flat[np.where(real, index, 0)] if flat.size else 0, 0)


def _training_windows(item_col: pl.Series, time_col: pl.Series, user_ids: np.ndarray,
                      max_seq_len: int) -> TrainWindows:
    items, starts, lengths = _flatten(item_col)
    times, _, _ = _flatten(time_col)
    n_windows = np.where(lengths >= 2, -(-(lengths - 1) // max_seq_len), 0)  # ceil((n - 1) / L)
    row = np.repeat(np.arange(len(lengths)), n_windows)
    first_window_of_row = np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    window = np.arange(row.size) - first_window_of_row  # 0 = most recent
    ends = starts[row] + lengths[row] - window * max_seq_len
    window_starts = np.maximum(starts[row], ends - max_seq_len - 1)
    width = max_seq_len + 1
    return TrainWindows(
        items=_gather_rows(items, window_starts, ends, width),
        timestamps=_gather_rows(times, window_starts, ends, width),
        user_ids=user_ids[row],
    )


def _eval_sequences(item_col: pl.Series, time_col: pl.Series, user_ids: np.ndarray, target_col: pl.Series,
                    target_time_col: pl.Series, max_seq_len: int) -> tuple[EvalSequences, dict[str, int]]:
    """One row per (user, target), in user then target order; and how many rows have no history."""
    items, starts, lengths = _flatten(item_col)
    times, _, _ = _flatten(time_col)
    targets, _, n_targets = _flatten(target_col)
    target_times, _, _ = _flatten(target_time_col)
    row = np.repeat(np.arange(len(lengths)), n_targets)  # the user (row of the split) of each target
    ends = starts[row] + lengths[row]
    history_starts = np.maximum(starts[row], ends - max_seq_len)  # most recent items kept
    sequences = EvalSequences(
        user_ids=user_ids[row],
        items=_gather_rows(items, history_starts, ends, max_seq_len),
        timestamps=_gather_rows(times, history_starts, ends, max_seq_len),
        targets=targets,
        target_timestamps=target_times,
    )
    without = {"users": int(((lengths == 0) & (n_targets > 0)).sum()), "targets": int((lengths[row] == 0).sum())}
    return sequences, without


def _with_target_lists(sequence_splits: pl.DataFrame) -> pl.DataFrame:
    """The split with list target columns; leave-one-out's scalar targets become one-element lists."""
    if all(c in sequence_splits.columns for c in MULTI_TARGET_SPLIT_COLUMNS):
        return sequence_splits.select(MULTI_TARGET_SPLIT_COLUMNS)
    missing = [c for c in SPLIT_COLUMNS if c not in sequence_splits.columns]
    if missing:
        raise ValueError(f"sequence_splits lacks columns {missing}; expected {list(SPLIT_COLUMNS)} (leave-one-out) "
                         f"or {list(MULTI_TARGET_SPLIT_COLUMNS)} (rodpo.data.preprocess / splits write them).")
    return sequence_splits.select(
        "user_id", "train_item_ids", "train_timestamps",
        *(pl.concat_list(single).alias(f"{single}s") for single in SPLIT_COLUMNS[3:]),
    )


def build_sequence_data(sequence_splits: pl.DataFrame, max_seq_len: int, n_items: int | None = None) -> SequenceData:
    """Padded arrays for training windows, validation and test (see the module docstring).

    `n_items` defaults to the largest item id seen; pass the item table's size when feature
    matrices have rows for items that never occur in the splits.
    """
    splits = _with_target_lists(sequence_splits)
    if max_seq_len < 1:
        raise ValueError(f"build_sequence_data: max_seq_len={max_seq_len} must be >= 1.")
    user_ids = splits["user_id"].to_numpy().astype(np.int64)
    train = _training_windows(splits["train_item_ids"], splits["train_timestamps"], user_ids, max_seq_len)
    valid, valid_unranked = _eval_sequences(splits["train_item_ids"], splits["train_timestamps"], user_ids,
                                            splits["valid_item_ids"], splits["valid_timestamps"], max_seq_len)
    with_valid = splits.select(  # the history before the test cut: train + valid items
        pl.concat_list("train_item_ids", "valid_item_ids").alias("items"),
        pl.concat_list("train_timestamps", "valid_timestamps").alias("timestamps"),
    )
    test, test_unranked = _eval_sequences(with_valid["items"], with_valid["timestamps"], user_ids,
                                          splits["test_item_ids"], splits["test_timestamps"], max_seq_len)

    largest_id = int(max(train.items.max(initial=0), valid.targets.max(initial=0), test.targets.max(initial=0)))
    if n_items is None:
        n_items = largest_id
    elif largest_id > n_items:
        raise ValueError(f"sequence_splits holds item id {largest_id} > n_items={n_items}; ids must be 1..n_items.")
    if min(valid.targets.min(initial=1), test.targets.min(initial=1)) < 1:
        raise ValueError("sequence_splits: valid/test item ids must be >= 1 (0 is padding).")
    real_times = train.timestamps[train.items > 0]
    time_min = int(real_times.min()) if real_times.size else None
    time_max = int(real_times.max()) if real_times.size else None
    return SequenceData(train, valid, test, n_items, max_seq_len, time_min, time_max,
                        {"valid": valid_unranked, "test": test_unranked})


def trim_to_longest(item_ids: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop trailing all-padding columns of a right-padded batch (and of tensors aligned with it).

    `item_ids` may also be a bool "is real" mask.
    """
    longest = max(int((item_ids > 0).sum(dim=1).max()), 1) if item_ids.shape[0] else 1
    return (item_ids[:, :longest], *(tensor[:, :longest] for tensor in aligned))
