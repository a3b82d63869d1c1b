import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from rodpo.training.dpo import dpo_loss, frozen_reference, implicit_reward_stats, sample_negatives


def test_dpo_loss_matches_hand_computation():
    policy_chosen = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    policy_rejected = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    reference_chosen = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    reference_rejected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    # policy margins [[1, 0, -2], [1, -1, 0]] minus reference margins [[-1, 1, 0], [2, 0, -2]],
    # times beta = 0.5 -> [[1, -0.5, -1], [-0.5, -0.5, 1]]; -log sigmoid(x) = log(1 + e^-x).
    x = [[1.0, -0.5, -1.0], [-0.5, -0.5, 1.0]]
    expected = torch.tensor([[math.log1p(math.exp(-v)) for v in row] for row in x])
    loss = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    torch.testing.assert_close(loss, expected)
    assert loss[0, 0].item() == pytest.approx(0.3132617, abs=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.5, 2.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.zeros(2), torch.zeros(2), beta=1.0).sum().backward()
    assert (chosen.grad < 0).all()  # descent increases s(y_w)
    assert (rejected.grad > 0).all()  # descent decreases s(y_l)


def test_implicit_reward_stats_are_sums_over_pairs():
    stats = implicit_reward_stats(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]),
                                  torch.zeros(2), torch.zeros(2), beta=2.0)
    assert stats["rewards_chosen"].item() == 2.0
    assert stats["rewards_margin"].item() == 0.0  # (2 - 0) + (0 - 2)
    assert stats["rewards_accuracy"].item() == 1.0


def _ranked(n_rows: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States and item table whose scores rank items 1, 2, 3, ... (item i scores -i); the padding row
    scores highest on purpose, so a sampler that let it in would be caught."""
    table = -torch.arange(n_items + 1, dtype=torch.float32)[:, None]
    table[0] = 100.0
    return torch.ones(n_rows, 1), table


def test_topk_uniform_never_returns_positive_only_topk_and_is_uniform():
    n_rows, n_items, k = 5000, 30, 5
    positives = torch.full((n_rows,), 2)  # the positive is the 2nd best item
    generator = torch.Generator().manual_seed(0)
    negatives = sample_negatives(*_ranked(n_rows, n_items), positives, "topk_uniform", k=k, generator=generator)
    assert negatives.shape == (n_rows, 1)
    pool = [1, 3, 4, 5, 6]  # top-5 of all items except the positive (and never padding)
    assert set(negatives.flatten().tolist()) == set(pool)
    counts = np.array([(negatives == item).sum().item() for item in pool])
    assert chisquare(counts).pvalue > 0.01


def test_topk_uniform_pool_when_positive_is_outside_topk():
    negatives = sample_negatives(*_ranked(2000, 30), torch.full((2000,), 25), "topk_uniform", k=3,
                                 generator=torch.Generator().manual_seed(1))
    assert set(negatives.flatten().tolist()) == {1, 2, 3}


def test_several_negatives_are_distinct_members_of_the_pool():
    negatives = sample_negatives(*_ranked(400, 30), torch.full((400,), 2), "topk_uniform", k=5, n_negatives=3,
                                 generator=torch.Generator().manual_seed(4))
    assert negatives.shape == (400, 3)
    assert set(negatives.flatten().tolist()) == {1, 3, 4, 5, 6}
    assert all(len(set(row)) == 3 for row in negatives.tolist())


def test_argmax_returns_best_non_positive_item():
    negatives = sample_negatives(*_ranked(2, 10), torch.tensor([1, 4]), "argmax")
    assert negatives.flatten().tolist() == [2, 1]


def test_random_never_returns_positive_or_padding_and_covers_the_rest():
    n_items = 8
    positives = torch.full((4000,), 3)
    negatives = sample_negatives(*_ranked(4000, n_items), positives, "random",
                                 generator=torch.Generator().manual_seed(2))
    assert set(negatives.flatten().tolist()) == set(range(1, n_items + 1)) - {3}
    counts = np.array([(negatives == item).sum().item() for item in set(range(1, n_items + 1)) - {3}])
    assert chisquare(counts).pvalue > 0.01


def test_random_negatives_are_distinct_and_avoid_the_history():
    history = torch.tensor([[1, 4, 0]]).repeat(300, 1)
    negatives = sample_negatives(*_ranked(300, 8), torch.full((300,), 3), "random", n_negatives=4,
                                 exclude_ids=history, generator=torch.Generator().manual_seed(5))
    assert all(len(set(row)) == 4 for row in negatives.tolist())
    assert set(negatives.flatten().tolist()) == {2, 5, 6, 7, 8}


def test_random_negatives_from_a_pool_too_small_say_which_parameter_to_change():
    with pytest.raises(ValueError, match="n_negatives"):
        sample_negatives(*_ranked(2, 4), torch.tensor([1, 2]), "random", n_negatives=4,
                         generator=torch.Generator().manual_seed(0))


def test_exclusion_removes_items_from_every_strategy():
    exclude = torch.tensor([[1, 3, 0]]).repeat(500, 1)
    for strategy in ("topk_uniform", "argmax", "random"):
        negatives = sample_negatives(*_ranked(500, 10), torch.full((500,), 2), strategy, k=3, exclude_ids=exclude,
                                     generator=torch.Generator().manual_seed(3))
        assert not set(negatives.flatten().tolist()) & {0, 1, 2, 3}, strategy
        if strategy == "topk_uniform":
            assert set(negatives.flatten().tolist()) == {4, 5, 6}


def test_chunked_pools_do_not_depend_on_the_chunk_size():
    torch.manual_seed(0)
    states, table = torch.randn(64, 8), torch.randn(301, 8)
    positives = torch.randint(1, 301, (64,))
    draws = [sample_negatives(states, table, positives, "topk_uniform", k=20, chunk_items=chunk,
                              generator=torch.Generator().manual_seed(7)) for chunk in (7, 64, 300)]
    assert all(torch.equal(draws[0], other) for other in draws[1:])


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        sample_negatives(*_ranked(1, 5), torch.tensor([1]), "hardest")


def test_frozen_reference_is_eval_mode_without_gradients_and_shares_buffers():
    policy = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    policy.register_buffer("features", torch.ones(3), persistent=False)
    reference = frozen_reference(policy)
    assert not reference.training
    assert all(not p.requires_grad for p in reference.parameters())
    assert reference.features is policy.features
    assert reference[0].weight is not policy[0].weight
