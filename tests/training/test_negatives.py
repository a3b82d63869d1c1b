"""The losers of stage 2 (Eq. 4 and the ablations) and what each pool leaves out."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from rodpo.scoring import cross_entropy_and_top_k
from rodpo.training.negatives import draw_negatives, pool_exclusions, pool_size, sample_negatives


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


def test_excluded_ids_leave_every_strategys_pool():
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


@pytest.mark.parametrize("strategy", ["topk_uniform", "argmax", "random"])
@pytest.mark.parametrize("chunk", [7, 64, 300])  # 7 and 64 do not divide the 300 items
def test_losers_from_the_ce_pass_pool_equal_the_separate_sampler_for_the_same_seed(strategy, chunk):
    torch.manual_seed(0)
    states, table = torch.randn(64, 8), torch.randn(301, 8)
    positives = torch.randint(1, 301, (64,))
    history = torch.randint(0, 301, (64, 6))
    m = 1 if strategy == "argmax" else 3
    separate = sample_negatives(states, table, positives, strategy, k=20, chunk_items=chunk, exclude_ids=history,
                                n_negatives=m, generator=torch.Generator().manual_seed(7))
    pool = None
    if pool_size(strategy, 20) is not None:
        _, _, pool = cross_entropy_and_top_k(states, table, positives, pool_size(strategy, 20), exclude_ids=history,
                                             chunk_items=chunk)
    assert (pool is None) == (strategy == "random")  # random needs no scores
    fused = draw_negatives(strategy, pool, positives, 300, torch.Generator().manual_seed(7), exclude_ids=history,
                           n_negatives=m)
    assert torch.equal(fused, separate)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        sample_negatives(*_ranked(1, 5), torch.tensor([1]), "hardest")


def _windows_and_targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded windows; targets 6, 7 (window 0) and 9 (window 1), in that row-major order."""
    windows = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    return windows, windows[:, 1:] > 0


def test_pool_exclusions_say_exactly_which_items_each_target_leaves_out():
    windows, is_target = _windows_and_targets()
    assert pool_exclusions(windows, is_target, "none") is None
    # earlier_items: the items before each target (what the model saw when predicting it)
    assert pool_exclusions(windows, is_target, "earlier_items").tolist() == [[5, 0, 0, 0], [5, 6, 0, 0], [8, 0, 0, 0]]
    # window_items: the whole window, the later target 7 included for target 6
    assert pool_exclusions(windows, is_target, "window_items").tolist() == [[5, 6, 7, 0], [5, 6, 7, 0], [8, 9, 0, 0]]
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.exclude_from_pool='history'.*earlier_items"):
        pool_exclusions(windows, is_target, "history")


def test_every_strategy_honours_earlier_items_and_window_items():
    # One window 1 -> 2 -> 3 -> 4; item i scores -i (item 1 best). Targets 2, 3, 4.
    windows = torch.tensor([[1, 2, 3, 4]])
    is_target = windows[:, 1:] > 0
    positives = windows[:, 1:][is_target]
    states, table = _ranked(3, 12)
    argmax = {mode: sample_negatives(states, table, positives, "argmax",
                                     exclude_ids=pool_exclusions(windows, is_target, mode)).flatten().tolist()
              for mode in ("none", "earlier_items", "window_items")}
    assert argmax == {"none": [1, 1, 1], "earlier_items": [3, 4, 5], "window_items": [5, 5, 5]}
    top_k = sample_negatives(states, table, positives, "topk_uniform", k=2, n_negatives=2,
                             exclude_ids=pool_exclusions(windows, is_target, "earlier_items"))
    assert [sorted(row) for row in top_k.tolist()] == [[3, 4], [4, 5], [5, 6]]


def test_random_losers_avoid_the_users_earlier_items_only_when_asked():
    # Target 3 of window 1 -> 2 -> 3 -> 4 in a catalog of 6 items: earlier items {1, 2}, later target 4.
    n_rows = 3000
    windows = torch.tensor([[1, 2, 3, 4]]).repeat(n_rows, 1)
    is_target = torch.zeros(n_rows, 3, dtype=torch.bool)
    is_target[:, 1] = True  # the target 3 at window position 2
    positives = torch.full((n_rows,), 3)
    drawn = {}
    for mode in ("none", "earlier_items", "window_items"):
        drawn[mode] = set(sample_negatives(*_ranked(n_rows, 6), positives, "random",
                                           exclude_ids=pool_exclusions(windows, is_target, mode),
                                           generator=torch.Generator().manual_seed(0)).flatten().tolist())
    assert drawn["none"] == {1, 2, 4, 5, 6}  # the user's own earlier items are drawn without exclusion
    assert drawn["earlier_items"] == {4, 5, 6}  # never an earlier item; the later target 4 stays
    assert drawn["window_items"] == {5, 6}


def test_exclude_history_is_a_deprecated_alias_of_window_items_with_the_same_run_key():
    from rodpo.training.config import DPOConfig, TrainConfig

    with pytest.warns(FutureWarning, match=r"exclude_history is deprecated.*window_items"):
        legacy = DPOConfig(exclude_history=True)
    assert legacy.exclude_from_pool == "window_items" and legacy.exclude_history is False
    assert DPOConfig(**legacy.__dict__) == legacy  # rebuilt from its fields (as the plan does): no second mapping
    keys = {mode: TrainConfig(stage="dpo", dpo=DPOConfig(exclude_from_pool=mode)).run_key_fields()["dpo"]
            for mode in ("none", "earlier_items", "window_items")}
    # runs from before the rename keep their checkpoint key: none / window_items in the old spelling
    assert keys["none"]["exclude_history"] is False and "exclude_from_pool" not in keys["none"]
    assert keys["window_items"]["exclude_history"] is True and "exclude_from_pool" not in keys["window_items"]
    assert keys["earlier_items"]["exclude_from_pool"] == "earlier_items"
    assert TrainConfig(stage="dpo", dpo=legacy).run_key_fields() == TrainConfig(
        stage="dpo", dpo=DPOConfig(exclude_from_pool="window_items")).run_key_fields()
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.exclude_from_pool='everything'"):
        DPOConfig(exclude_from_pool="everything")
    with pytest.raises(ValueError, match=r"exclude_history=true with rodpo\.dpo\.exclude_from_pool='earlier_items'"):
        DPOConfig(exclude_history=True, exclude_from_pool="earlier_items")
