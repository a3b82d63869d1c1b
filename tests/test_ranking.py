import numpy as np
import pytest
import torch
from torch import nn

from rodpo.ranking import collect_logit_samples, evaluate_model
from rodpo.sequences import EvalSequences


class FixedScores(nn.Module):
    """A fixed score row per user, looked up by the first history item: the state is that row's
    one-hot vector and the item table holds the rows as columns, so s(x, i) = rows[x, i] exactly."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.nan_to_num(rows, neginf=0.0).T.contiguous(), requires_grad=False)
        self.seen_training_flags = []

    def scoring_table(self):
        return self.table

    def last_states(self, items, timestamps):
        self.seen_training_flags.append(self.training)
        return torch.eye(self.table.shape[1])[items[:, 0] - 1]


SCORES = torch.tensor([
    [float("-inf"), 5.0, 4.0, 3.0, 2.0, 1.0],  # user 1: history [1, 2], target 3 -> rank 3
    [float("-inf"), 1.0, 1.0, 1.0, 0.0, 0.0],  # user 2: history [2], target 1 ties with 2 items -> rank 3
])
SEQUENCES = EvalSequences(
    user_ids=np.array([10, 20]), items=np.array([[1, 2, 0], [2, 0, 0]]), timestamps=np.zeros((2, 3), dtype=np.int64),
    targets=np.array([3, 1]), target_timestamps=np.zeros(2, dtype=np.int64),
)


def test_full_ranking_counts_ties_against_the_target():
    model = FixedScores(SCORES).train()
    result = evaluate_model(model, SEQUENCES, ks=(1, 5), batch_size=1)
    assert result["ranks"].tolist() == [3, 3]
    assert result["user_ids"].tolist() == [10, 20]
    assert result["metrics"]["mrr@5"] == pytest.approx(1 / 3)
    assert result["metrics"]["hit@1"] == 0.0
    assert model.seen_training_flags == [False, False] and model.training  # eval inside, mode restored


def test_history_masking_is_opt_in():
    result = evaluate_model(FixedScores(SCORES), SEQUENCES, ks=(5,), mask_history=True)
    assert result["ranks"].tolist() == [1, 2]  # user 1 loses items 1, 2; user 2 loses item 2


@pytest.mark.parametrize("mask_history", [False, True])
def test_the_history_masked_protocol_comes_as_a_second_result_of_the_same_pass(mask_history):
    result = evaluate_model(FixedScores(SCORES), SEQUENCES, ks=(5,), batch_size=1, mask_history=mask_history,
                            with_history_masked=True)
    assert result["ranks"].tolist() == ([1, 2] if mask_history else [3, 3])
    assert result["ranks_history_masked"].tolist() == [1, 2]
    assert result["metrics_history_masked"]["mrr@5"] == pytest.approx((1 + 1 / 2) / 2)


def test_logit_samples_pair_the_positive_with_a_topk_negative():
    samples = collect_logit_samples(FixedScores(SCORES), SEQUENCES, k=2, seed=0)
    assert samples["positive"].tolist() == [3.0, 1.0]
    assert samples["negative"][0] in (5.0, 4.0)  # top-2 of user 1 without item 3
    assert samples["negative"][1] == 1.0  # items 2 or 3
