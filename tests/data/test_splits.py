"""The global-time split and several targets per user, on a hand-made example worked out by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rodpo.data.preprocess import ID_DTYPE
from rodpo.data.splits import AMAZON2023_T1, AMAZON2023_T2, check_protocol, global_time_split, split_statistics
from rodpo.experiments.aggregate import seed_averaged_user_metrics
from rodpo.pipelines.data_processing.nodes import ProcessingParams, processing_params
from rodpo.pipelines.evaluation.nodes import ranks_table
from rodpo.sequences import build_sequence_data

T1, T2 = 100_000, 200_000  # ms: 100 s and 200 s


def sequences() -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": [1, 2, 3, 4],
         "item_ids": [[1, 2, 3], [4, 5, 6, 7, 8], [9, 1], [2]],
         "timestamps": [[10, 20, 50], [30, 100, 150, 200, 250], [120, 300], [210]]},
        schema={"user_id": ID_DTYPE, "item_ids": pl.List(ID_DTYPE), "timestamps": pl.List(pl.Int64)},
    )  # fmt: skip


EXPECTED = [
    (1, [1, 2, 3], [10, 20, 50], [], [], [], []),  # only in train: trained on, never a target
    (2, [4], [30], [5, 6], [100, 150], [7, 8], [200, 250]),  # 100 s == t1 is valid; two test targets
    (3, [], [], [9], [120], [1], [300]),  # a valid target without train history
    (4, [], [], [], [], [2], [210]),  # a test target with no history at all
]


def test_global_time_split_by_hand_eager_and_lazy():
    assert global_time_split(sequences(), T1, T2).rows() == EXPECTED
    assert global_time_split(sequences().lazy(), T1, T2).collect(engine="streaming").rows() == EXPECTED


def test_split_statistics_count_targets_and_users_without_history():
    stats = split_statistics(global_time_split(sequences(), T1, T2))
    assert stats == {"valid_targets": 3, "test_targets": 4, "valid_users": 2, "test_users": 3,
                     "users_only_in_train": 1, "valid_users_without_history": 1, "valid_targets_without_history": 1,
                     "test_users_without_history": 1, "test_targets_without_history": 1}  # fmt: skip
    loo = pl.DataFrame({"user_id": [1], "train_item_ids": [[1]], "valid_item_id": [2], "test_item_id": [3]})
    assert split_statistics(loo) == {}


def test_several_targets_share_the_history_before_the_cut():
    data = build_sequence_data(global_time_split(sequences(), T1, T2), max_seq_len=3)
    assert data.valid.user_ids.tolist() == [2, 2, 3]
    assert data.valid.targets.tolist() == [5, 6, 9]
    assert data.valid.items.tolist() == [[4, 0, 0], [4, 0, 0], [0, 0, 0]]
    assert data.test.user_ids.tolist() == [2, 2, 3, 4]
    assert data.test.targets.tolist() == [7, 8, 1, 2]
    assert data.test.target_timestamps.tolist() == [200, 250, 300, 210]
    assert data.test.items.tolist() == [[4, 5, 6], [4, 5, 6], [9, 0, 0], [0, 0, 0]]  # everything before t2
    assert data.train.items.tolist() == [[1, 2, 3, 0]]  # training reads only the train parts
    assert data.targets_without_history == {"valid": {"users": 1, "targets": 1}, "test": {"users": 1, "targets": 1}}


def test_ranks_table_and_per_user_means_with_several_targets():
    valid = {"user_ids": np.array([2, 2, 3]), "ranks": np.array([1, 3, 7]), "ranks_history_masked": np.array([1, 2, 5])}
    test = {"user_ids": np.array([2, 2, 3, 4]), "ranks": np.array([2, 1, 9, 4]),
            "ranks_history_masked": np.array([2, 1, 8, 4])}
    table = ranks_table(valid, test, several_targets=True)
    assert table.select("user_id", "target_index", "valid_rank", "test_rank").rows() == [
        (2, 0, 1, 2), (2, 1, 3, 1), (3, 0, 7, 9), (4, 0, None, 4)]
    per_user = seed_averaged_user_metrics([table], ["mrr@10"])
    assert per_user["user_id"].to_list() == [2, 3, 4]
    assert per_user["mrr@10"].to_list() == pytest.approx([(1 / 2 + 1) / 2, 1 / 9, 1 / 4])  # mean over targets


@pytest.mark.parametrize(("t1", "t2", "message"), [
    (5, 5, r"data_processing.t1=5 >= data_processing.t2=5.*t1 < t2"),
    (9, 3, r"data_processing.t1=9 >= data_processing.t2=3"),
    (None, 3, r"data_processing.t1=None: split=global_time needs both cut points"),
])
def test_unusable_cut_points_name_the_parameter_and_the_fix(t1, t2, message):
    with pytest.raises(ValueError, match=message):
        ProcessingParams(split="global_time", t1=t1, t2=t2)
    with pytest.raises(ValueError, match="data_processing.split='random'"):
        check_protocol("random", None, None)


def test_a_preset_sets_the_cut_points_and_unknown_fields_are_refused():
    options = processing_params(ProcessingParams(), {"processing": {"split": "global_time", "t1": AMAZON2023_T1,
                                                                    "t2": AMAZON2023_T2}})
    assert (options.split, options.t1, options.t2, options.k_core) == ("global_time", AMAZON2023_T1, AMAZON2023_T2, 5)
    with pytest.raises(ValueError, match=r"dataset_spec.processing: \['t3'\]"):
        processing_params(ProcessingParams(), {"processing": {"t3": 1}})
    with pytest.raises(ValueError, match="t1="):
        processing_params(ProcessingParams(), {"processing": {"split": "global_time", "t1": 7, "t2": 7}})


def test_case_study_masks_each_test_row_with_its_users_history():
    from rodpo.pipelines.case_study.nodes import histories_of_test_users

    splits = global_time_split(sequences(), T1, T2)
    test = build_sequence_data(splits, max_seq_len=3).test
    assert histories_of_test_users(splits, test.user_ids).to_list() == [[4, 5, 6], [4, 5, 6], [9], []]
