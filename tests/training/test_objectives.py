import itertools

import pytest
import torch
from scipy.stats import chisquare

from rodpo.scoring import draw_from_pool
from rodpo.training.objectives import (
    OBJECTIVES,
    REFERENCE_FREE,
    bpr,
    dpo,
    preference_loss,
    rodpo_loss,
    sdpo,
    simpo,
    validate_objective_config,
)


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss.sum(), inputs)


def test_registry_and_reference_free_set():
    assert set(OBJECTIVES) == {"dpo", "sdpo", "simpo", "bpr"}
    assert REFERENCE_FREE == {"simpo", "bpr"}


def test_rodpo_loss_is_eq6_plus_the_moe_term_by_hand():
    ce, preference, aux = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(0.1)
    # L = L_CE + aux_weight * L_aux + lambda * L_DPO = 2 + 0.01 * 0.1 + 0.5 * 0.5
    assert rodpo_loss(ce, preference, aux, lambda_dpo=0.5, aux_weight=0.01).item() == pytest.approx(2.251)
    assert rodpo_loss(ce, None, aux, lambda_dpo=0.5, aux_weight=0.01).item() == pytest.approx(2.001)  # warm-up


def test_dpo_loss_and_gradient_by_hand():
    # Row 0: rewards s - s_ref: winner 2 - 1 = 1, loser 1 - 1 = 0; x = 0.5 * (1 - 0) = 0.5,
    #   loss = log(1 + e^-0.5) = 0.474077; d loss / d s(w) = -beta * sigmoid(-x) = -0.5 * 0.377541 = -0.188770.
    # Row 1: all zero; x = 0, loss = ln 2 = 0.693147; d / d s(w) = -0.5 * 0.5 = -0.25, d / d s(l) = +0.25.
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([[1.0], [0.0]], requires_grad=True)
    loss = preference_loss("dpo", chosen, rejected, torch.tensor([1.0, 0.0]), torch.tensor([[1.0], [0.0]]), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor([0.474077, 0.693147]), atol=1e-6, rtol=0)
    grad_chosen, grad_rejected = _grads(loss, chosen, rejected)
    torch.testing.assert_close(grad_chosen, torch.tensor([-0.188770, -0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_rejected, torch.tensor([[0.188770], [0.25]]), atol=1e-6, rtol=0)


def test_dpo_matches_eq5_on_six_pairs():
    # policy margins [1, 0, -2, 1, -1, 0] minus reference margins [-1, 1, 0, 2, 0, -2], times beta = 0.5
    # -> x = [1, -0.5, -1, -0.5, -0.5, 1]; -log sigmoid(x) = log(1 + e^-x).
    policy_chosen = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    policy_rejected = torch.tensor([1.0, 0.0, 3.0, 0.0, 2.0, 0.0])
    reference_chosen = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0])
    reference_rejected = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 2.0])
    x = torch.tensor([1.0, -0.5, -1.0, -0.5, -0.5, 1.0])
    loss = dpo(policy_chosen, policy_rejected[:, None], reference_chosen, reference_rejected[:, None], beta=0.5)
    torch.testing.assert_close(loss, torch.log1p(torch.exp(-x)))
    assert loss[0].item() == pytest.approx(0.3132617, abs=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([[0.5], [2.0]], requires_grad=True)
    dpo(chosen, rejected, torch.zeros(2), torch.zeros(2, 1), beta=1.0).sum().backward()
    assert (chosen.grad < 0).all()  # descent increases s(y_w)
    assert (rejected.grad > 0).all()  # descent decreases s(y_l)


def test_dpo_with_m_losers_by_hand_differs_from_sdpo_on_the_same_losers():
    # beta = 1; winner reward 1; loser rewards [0, 1]: x = [1, 0]; losses log(1 + e^-1) = 0.313262 and ln 2,
    # mean 0.503204 (S-DPO on the same losers: 0.861995). d / d s(l_j) = sigmoid(-x_j) / M = [0.134471, 0.25];
    # d / d s(w) = -0.384471.
    chosen = torch.tensor([1.0], requires_grad=True)
    rejected = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = preference_loss("dpo", chosen, rejected, torch.zeros(1), torch.zeros(1, 2), beta=1.0)
    torch.testing.assert_close(loss, torch.tensor([0.503204]), atol=1e-6, rtol=0)
    grad_chosen, grad_rejected = _grads(loss, chosen, rejected)
    torch.testing.assert_close(grad_chosen, torch.tensor([-0.384471]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_rejected, torch.tensor([[0.134471, 0.25]]), atol=1e-6, rtol=0)
    softmax = sdpo(chosen, rejected, torch.zeros(1), torch.zeros(1, 2), beta=1.0)
    assert softmax.item() == pytest.approx(0.861995, abs=1e-6)


def test_dpo_with_m_losers_is_the_mean_of_m_single_loser_dpo_losses_gradients_included():
    generator = torch.Generator().manual_seed(5)
    n_rows, m, beta = 7, 4, 0.8
    values = [torch.randn(n_rows, generator=generator), torch.randn(n_rows, m, generator=generator),
              torch.randn(n_rows, generator=generator), torch.randn(n_rows, m, generator=generator)]
    together = [v.clone().requires_grad_(True) for v in values]
    apart = [v.clone().requires_grad_(True) for v in values]
    loss = preference_loss("dpo", *together, beta=beta)
    singles = torch.stack([preference_loss("dpo", apart[0], apart[1][:, j:j + 1], apart[2], apart[3][:, j:j + 1],
                                           beta=beta) for j in range(m)], dim=1)  # (N, M): one DPO loss per loser
    torch.testing.assert_close(loss, singles.mean(dim=1))
    for grad, expected in zip(_grads(loss, *together), _grads(singles.mean(dim=1), *apart)):
        torch.testing.assert_close(grad, expected)


def test_sdpo_loss_and_gradient_by_hand():
    # beta = 1; winner reward 1 - 0 = 1; loser rewards [0 - 0, 1 - 0] = [0, 1];
    # z = beta * (r_l - r_w) = [-1, 0]; -log sigmoid(-logsumexp z) = log(1 + e^-1 + e^0) = log(2.367879) = 0.861995.
    # d / d s(l_j) = e^{z_j} / 2.367879 = [0.155362, 0.422319]; d / d s(w) = -(e^-1 + 1) / 2.367879 = -0.577681.
    chosen = torch.tensor([1.0], requires_grad=True)
    rejected = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = preference_loss("sdpo", chosen, rejected, torch.zeros(1), torch.zeros(1, 2), beta=1.0)
    torch.testing.assert_close(loss, torch.tensor([0.861995]), atol=1e-6, rtol=0)
    grad_chosen, grad_rejected = _grads(loss, chosen, rejected)
    torch.testing.assert_close(grad_chosen, torch.tensor([-0.577681]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_rejected, torch.tensor([[0.155362, 0.422319]]), atol=1e-6, rtol=0)


def test_sdpo_is_stable_for_large_margins():
    loss = sdpo(torch.tensor([0.0]), torch.tensor([[500.0, 400.0]]), torch.zeros(1), torch.zeros(1, 2), beta=1.0)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(500.0, abs=1e-3)


def test_sdpo_with_one_loser_equals_dpo_gradients_included():
    generator = torch.Generator().manual_seed(1)
    values = [torch.randn(9, generator=generator), torch.randn(9, 1, generator=generator),
              torch.randn(9, generator=generator), torch.randn(9, 1, generator=generator)]
    softmax_inputs = [v.clone().requires_grad_(True) for v in values]
    pairwise_inputs = [v.clone().requires_grad_(True) for v in values]
    softmax, pairwise = sdpo(*softmax_inputs, beta=1.3), dpo(*pairwise_inputs, beta=1.3)
    torch.testing.assert_close(softmax, pairwise)
    for grad, expected in zip(_grads(softmax, *softmax_inputs), _grads(pairwise, *pairwise_inputs)):
        torch.testing.assert_close(grad, expected)


def test_simpo_loss_and_gradient_by_hand():
    # beta = 2, gamma = 0.5; s(w) = 1, s(l) = [0.5, 1.25]; margins 2 * 0.5 - 0.5 = 0.5 and 2 * -0.25 - 0.5 = -1;
    # losses log(1 + e^-0.5) = 0.474077 and log(1 + e^1) = 1.313262, mean over M = 2: 0.893669.
    # d / d s(l_j) = (1/M) * beta * sigmoid(-m_j) = sigmoid(-m_j) = [0.377541, 0.731059]; d / d s(w) = -1.108599.
    chosen = torch.tensor([1.0], requires_grad=True)
    rejected = torch.tensor([[0.5, 1.25]], requires_grad=True)
    loss = preference_loss("simpo", chosen, rejected, beta=2.0, gamma=0.5)
    torch.testing.assert_close(loss, torch.tensor([0.893669]), atol=1e-6, rtol=0)
    grad_chosen, grad_rejected = _grads(loss, chosen, rejected)
    torch.testing.assert_close(grad_chosen, torch.tensor([-1.108599]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_rejected, torch.tensor([[0.377541, 0.731059]]), atol=1e-6, rtol=0)


def test_bpr_loss_and_gradient_by_hand():
    # s(w) = 1, s(l) = [1, 3]: differences 0 and -2; losses ln 2 = 0.693147 and log(1 + e^2) = 2.126928, mean 1.410038.
    # d / d s(l_j) = sigmoid(-(s(w) - s(l_j))) / M = [0.5 / 2, 0.880797 / 2] = [0.25, 0.440399]; d / d s(w) = -0.690399.
    chosen = torch.tensor([1.0], requires_grad=True)
    rejected = torch.tensor([[1.0, 3.0]], requires_grad=True)
    loss = preference_loss("bpr", chosen, rejected, beta=1.0)
    torch.testing.assert_close(loss, torch.tensor([1.410038]), atol=1e-6, rtol=0)
    grad_chosen, grad_rejected = _grads(loss, chosen, rejected)
    torch.testing.assert_close(grad_chosen, torch.tensor([-0.690399]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_rejected, torch.tensor([[0.25, 0.440399]]), atol=1e-6, rtol=0)


def test_simpo_at_zero_margin_is_beta_scaled_bpr_and_bpr_at_beta_one():
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(11, generator=generator), torch.randn(11, 3, generator=generator)
    beta_scaled_bpr = -torch.nn.functional.logsigmoid(2.5 * (chosen.unsqueeze(1) - rejected)).mean(dim=1)
    torch.testing.assert_close(simpo(chosen, rejected, beta=2.5, gamma=0.0), beta_scaled_bpr)
    torch.testing.assert_close(simpo(chosen, rejected, beta=1.0), bpr(chosen, rejected))


def test_one_dimensional_losers_read_as_one_loser_per_row():
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])
    torch.testing.assert_close(preference_loss("bpr", chosen, rejected, beta=1.0),
                               preference_loss("bpr", chosen, rejected.unsqueeze(1), beta=1.0))


def test_unknown_objective_names_the_parameter_and_the_choices():
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.objective='ipo'.*\['bpr', 'dpo', 'sdpo', 'simpo'\]"):
        preference_loss("ipo", torch.zeros(2), torch.zeros(2, 1), beta=1.0)


@pytest.mark.parametrize("objective", sorted(REFERENCE_FREE))
def test_reference_free_objective_refuses_reference_scores(objective):
    with pytest.raises(ValueError, match="reference-free.*reference_rejected"):
        preference_loss(objective, torch.zeros(2), torch.zeros(2, 1), None, torch.zeros(2, 1), beta=1.0)


@pytest.mark.parametrize("objective", ["dpo", "sdpo"])
def test_reference_based_objective_needs_reference_scores(objective):
    with pytest.raises(ValueError, match=r"frozen reference.*\['reference_chosen', 'reference_rejected'\]"):
        preference_loss(objective, torch.zeros(2), torch.zeros(2, 1), beta=1.0)


def test_mismatched_shapes_name_the_input():
    with pytest.raises(ValueError, match=r"reference_rejected: expected shape \(2, 3\)"):
        preference_loss("sdpo", torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 2), beta=1.0)
    with pytest.raises(ValueError, match=r"policy_rejected: expected shape \(2, M\)"):
        preference_loss("bpr", torch.zeros(2), torch.zeros(3, 1), beta=1.0)


def test_parameters_an_objective_would_ignore_are_refused():
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.beta=2\.0.*'bpr'"):
        preference_loss("bpr", torch.zeros(1), torch.zeros(1, 1), beta=2.0)
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.gamma=0\.3.*'sdpo'"):
        preference_loss("sdpo", torch.zeros(1), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1),
                        beta=1.0, gamma=0.3)
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.beta=0"):
        preference_loss("simpo", torch.zeros(1), torch.zeros(1, 1), beta=0)


def test_validate_objective_config_accepts_sound_combinations():
    validate_objective_config("dpo", 1, 50, "topk_uniform")
    validate_objective_config("dpo", 4, 50, "topk_uniform")  # the mean of 4 pairwise terms
    validate_objective_config("sdpo", 50, 50, "topk_uniform")
    validate_objective_config("bpr", 1, 50, "argmax")
    validate_objective_config("simpo", 500, 50, "random", beta=2.0, gamma=0.5)  # no pool: whole catalog


@pytest.mark.parametrize(("objective", "n_negatives", "k", "strategy", "message"), [
    ("sdpo", 0, 50, "topk_uniform", r"rodpo\.dpo\.n_negatives=0: need at least one"),
    ("sdpo", 6, 5, "topk_uniform", r"rodpo\.dpo\.n_negatives=6 > pool size 5.*raise rodpo\.dpo\.k"),
    ("sdpo", 2, 50, "argmax", r"rodpo\.dpo\.n_negatives=2 > pool size 1.*argmax has a pool of one"),
    ("dpo", 6, 5, "topk_uniform", r"rodpo\.dpo\.n_negatives=6 > pool size 5.*raise rodpo\.dpo\.k"),
    ("dpo", 2, 50, "argmax", r"rodpo\.dpo\.n_negatives=2 > pool size 1"),
    ("bpr", 1, 50, "softmax", r"rodpo\.dpo\.negative_strategy='softmax'"),
    ("ipo", 1, 50, "topk_uniform", r"rodpo\.dpo\.objective='ipo'"),
])
def test_validate_objective_config_names_the_parameter(objective, n_negatives, k, strategy, message):
    with pytest.raises(ValueError, match=message):
        validate_objective_config(objective, n_negatives, k, strategy)


def test_draw_from_pool_draws_distinct_valid_items():
    generator = torch.Generator().manual_seed(3)
    n_rows, k, m = 300, 7, 3
    pool = torch.stack([torch.randperm(40, generator=generator)[:k] + 1 for _ in range(n_rows)])  # (N, K) distinct
    valid = torch.rand(n_rows, k, generator=generator) < 0.7
    valid[:, :m] = True  # every row keeps at least m valid entries
    drawn = draw_from_pool(pool, valid, m, generator)
    assert drawn.shape == (n_rows, m) and drawn.dtype == torch.int64
    for row in range(n_rows):
        allowed = set(pool[row][valid[row]].tolist())
        assert len(set(drawn[row].tolist())) == m
        assert set(drawn[row].tolist()) <= allowed


def test_draw_from_pool_is_reproducible_with_a_seeded_generator():
    pool = torch.arange(1, 61).view(6, 10)
    valid = torch.ones(6, 10, dtype=torch.bool)
    first = draw_from_pool(pool, valid, 4, torch.Generator().manual_seed(7))
    again = draw_from_pool(pool, valid, 4, torch.Generator().manual_seed(7))
    other = draw_from_pool(pool, valid, 4, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_draw_from_pool_is_uniform_over_subsets():
    # Pool [10, 11, 12, 13, 14] with 12 invalid: 4 valid items, C(4, 2) = 6 unordered pairs, each 1/6;
    # the first drawn item is each valid item with probability 1/4. Fixed seed: deterministic, never flaky.
    n_rows = 6000
    pool = torch.tensor([10, 11, 12, 13, 14]).repeat(n_rows, 1)
    valid = (pool != 12)
    drawn = draw_from_pool(pool, valid, 2, torch.Generator().manual_seed(0))
    pairs = list(itertools.combinations([10, 11, 13, 14], 2))
    as_pairs = [tuple(sorted(row)) for row in drawn.tolist()]
    assert set(as_pairs) == set(pairs)
    pair_counts = [as_pairs.count(pair) for pair in pairs]
    first_counts = [(drawn[:, 0] == item).sum().item() for item in (10, 11, 13, 14)]
    assert chisquare(pair_counts).pvalue > 1e-3
    assert chisquare(first_counts).pvalue > 1e-3
    assert max(abs(c / n_rows - 1 / 6) for c in pair_counts) < 0.03  # a 5-sigma band is about 0.024


def test_draw_from_pool_with_too_few_valid_items_says_what_to_change():
    pool = torch.tensor([[1, 2, 3], [4, 5, 6]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    with pytest.raises(ValueError, match=r"1 row\(s\) have fewer than m=2.*rodpo\.dpo\.n_negatives.*rodpo\.dpo\.k"
                                         r".*rodpo\.dpo\.exclude_from_pool=none"):
        draw_from_pool(pool, valid, 2)
    with pytest.raises(ValueError, match=r"m=0"):
        draw_from_pool(pool, valid, 0)

