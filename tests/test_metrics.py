"""Full-ranking ranks and NDCG/MRR/Hit on hand-made scores whose answers are worked out by hand."""

import math

import numpy as np
import pytest
import torch

from rodpo.metrics import (
    history_exclusion_mask,
    per_user_metrics,
    ranking_metrics,
    target_ranks,
)

NAN = float("nan")


def test_rank_counts_strictly_higher_items():
    # items 1..5; target 4 (score 0.7) is beaten by item 2 (0.9) only -> rank 2
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.3, 0.7, 0.2]])
    assert target_ranks(scores, torch.tensor([4])).tolist() == [2]


def test_ties_count_against_the_target():
    # target 2 tied with items 3 and 4 (all 0.5), item 1 higher -> worst tied position 1 + 1 + 2 = 4
    scores = torch.tensor([[0.0, 0.8, 0.5, 0.5, 0.5, 0.1]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [4]
    # a target tied with 2 others at the top gets rank 3
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1, 0.1]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]


def test_padding_column_never_counts():
    # column 0 scores highest but is padding: target 1 is still first
    scores = torch.tensor([[100.0, 0.9, 0.1, 0.2]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]


def test_batch_of_users_is_ranked_row_by_row():
    scores = torch.tensor(
        [
            [0.0, 0.1, 0.2, 0.3, 0.4],  # target 1 is last of 4 -> 4
            [0.0, 0.4, 0.3, 0.2, 0.1],  # target 1 is first -> 1
            [0.0, 0.4, 0.3, 0.2, 0.1],  # target 3 -> 3
        ]
    )
    assert target_ranks(scores, torch.tensor([1, 1, 3])).tolist() == [4, 1, 3]


def test_exclusion_removes_items_but_never_the_target():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.1]])
    targets = torch.tensor([3])
    assert target_ranks(scores, targets).tolist() == [3]
    # history = items 1 and 3 (the target itself was seen before, e.g. a repeat purchase)
    exclude = history_exclusion_mask(torch.tensor([[0, 1, 3]]), n_items=4)
    assert exclude.tolist() == [[False, True, False, True, False]]
    # item 1 is dropped from the ranking, the target is kept: only item 2 beats it
    assert target_ranks(scores, targets, exclude).tolist() == [2]


def test_history_mask_ignores_padding_and_rejects_out_of_range_ids():
    mask = history_exclusion_mask(torch.tensor([[0, 0, 2], [0, 0, 0]]), n_items=3)
    assert mask.tolist() == [[False, False, True, False], [False, False, False, False]]
    with pytest.raises(ValueError, match="n_items"):
        history_exclusion_mask(torch.tensor([[0, 5]]), n_items=3)


def test_nan_target_score_gets_the_worst_rank():
    scores = torch.tensor([[0.0, NAN, 0.2, 0.3, 0.4]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [4]
    exclude = history_exclusion_mask(torch.tensor([[2]]), n_items=4)
    # 3 candidates left (items 1, 3, 4) -> worst rank is 3
    assert target_ranks(scores, torch.tensor([1]), exclude).tolist() == [3]


def test_nan_competitors_count_against_the_target():
    # the target (0.9) would be first, but item 2 is NaN: it must not be assumed lower
    scores = torch.tensor([[0.0, 0.9, NAN, 0.1]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [2]


def test_collapsed_model_gets_the_worst_rank_and_zero_metrics():
    n_items = 50
    scores = torch.full((3, n_items + 1), 0.25)
    ranks = target_ranks(scores, torch.tensor([1, 17, 50]))
    assert ranks.tolist() == [n_items] * 3
    metrics = ranking_metrics(ranks, ks=(5, 10, 20))
    assert all(value == 0.0 for value in metrics.values())


def test_invalid_targets_and_shapes_are_rejected():
    scores = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="padding"):
        target_ranks(scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="padding"):
        target_ranks(scores, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="one target"):
        target_ranks(scores, torch.tensor([1]))
    with pytest.raises(ValueError, match="history_exclusion_mask"):
        target_ranks(scores, torch.tensor([1, 2]), torch.zeros(2, 4))


def test_hand_computed_metrics():
    metrics = ranking_metrics(np.array([1, 3, 6, 25]), ks=(5, 10, 20))
    inv_log = lambda rank: 1.0 / math.log2(rank + 1)  # noqa: E731
    expected = {
        "ndcg@5": (1.0 + 0.5) / 4,
        "ndcg@10": (1.0 + 0.5 + inv_log(6)) / 4,
        "ndcg@20": (1.0 + 0.5 + inv_log(6)) / 4,
        "mrr@5": (1.0 + 1 / 3) / 4,
        "mrr@10": (1.0 + 1 / 3 + 1 / 6) / 4,
        "mrr@20": (1.0 + 1 / 3 + 1 / 6) / 4,
        "hit@5": 2 / 4,
        "hit@10": 3 / 4,
        "hit@20": 3 / 4,
    }
    assert list(metrics) == list(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(metrics["ndcg@5"], float)


def test_rank_exactly_k_is_counted_and_k_plus_one_is_not():
    per_user = per_user_metrics(torch.tensor([5, 6]), ks=(5,))
    assert per_user["hit@5"].tolist() == [1.0, 0.0]
    assert per_user["mrr@5"].tolist() == [pytest.approx(0.2), 0.0]
    assert per_user["ndcg@5"][0] == pytest.approx(1 / math.log2(6))


def test_per_user_metrics_average_to_ranking_metrics():
    ranks = np.array([2, 7, 1, 30, 11])
    per_user = per_user_metrics(ranks, ks=(10,))
    summary = ranking_metrics(ranks, ks=(10,))
    assert set(per_user) == {"ndcg@10", "mrr@10", "hit@10"}
    for key, values in per_user.items():
        assert values.shape == (5,)
        assert summary[key] == pytest.approx(values.mean())


def test_metrics_reject_bad_ranks_and_ks():
    with pytest.raises(ValueError, match="ranks"):
        ranking_metrics(np.array([0, 1]))
    with pytest.raises(ValueError, match="ranks"):
        ranking_metrics(np.array([]))
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.array([1]), ks=(0,))


def test_end_to_end_ranks_feed_metrics():
    # 2 users, 4 items; user 0's target is 2nd after masking its history, user 1's target is 1st
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.8, 0.1], [0.0, 0.2, 0.1, 0.3, 0.9]])
    histories = torch.tensor([[0, 1], [3, 4]])
    exclude = history_exclusion_mask(histories, n_items=4)
    ranks = target_ranks(scores, torch.tensor([2, 1]), exclude)
    assert ranks.tolist() == [2, 1]
    assert ranking_metrics(ranks, ks=(1,))["hit@1"] == pytest.approx(0.5)
