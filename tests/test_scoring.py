"""The chunked scoring core against dense references: CE (value and gradient), top-K, target ranks.

Exact-tie data uses small integers, so every summation order gives the same float and chunked
results must equal dense ones bit for bit; random data is compared where no two scores are within
TOLERANCE of each other.
"""

import ast
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rodpo import scoring
from rodpo.scoring import cross_entropy as scoring_cross_entropy
from rodpo.scoring import ranks as scoring_ranks
from rodpo.metrics import history_exclusion_mask
from rodpo.metrics import target_ranks as dense_metric_ranks
from rodpo.scoring import (
    chunked_cross_entropy,
    cross_entropy_and_top_k,
    cross_entropy_backend,
    ranks_and_top_k,
    resolve_chunk_items,
    target_ranks,
    target_ranks_unmasked_and_masked,
    top_k_items,
)

NEG_INF = float("-inf")
TOLERANCE = 1e-5  # random data: results must match where no competing scores are closer than this
N_ITEMS = 23
CHUNKS = (1, 3, 7, N_ITEMS, N_ITEMS + 4)  # 3 and 7 do not divide 23


# -------------------------------------------------------------------------------- dense references
def dense_logits(states, table):
    """(N, n_items + 1) scores with column 0 = -inf, as RoDPOModel.all_item_logits."""
    return (states @ table.T).index_fill(1, torch.tensor([0]), NEG_INF)


def dense_top_k(states, table, k, exclude=None):
    """Stable descending sort: ties -> lower id first, NaN first; -inf slots -> item 0."""
    scores = dense_logits(states, table)
    if exclude is not None:
        scores = scores.masked_fill(exclude, NEG_INF)
    values, items = scores.sort(dim=1, descending=True, stable=True)
    values, items = values[:, :k], items[:, :k]
    if k > values.shape[1]:
        pad = k - values.shape[1]
        values = torch.cat([values, torch.full((len(values), pad), NEG_INF)], dim=1)
        items = torch.cat([items, torch.zeros(len(items), pad, dtype=torch.long)], dim=1)
    return values, items.masked_fill(values == NEG_INF, 0)


def exclusion_mask(n_items, histories=None, targets=None):
    mask = history_exclusion_mask(histories, n_items) if histories is not None else None
    if targets is not None:
        target_mask = torch.zeros(len(targets), n_items + 1, dtype=torch.bool)
        target_mask.scatter_(1, targets[:, None], True)
        mask = target_mask if mask is None else mask | target_mask
    return mask


# -------------------------------------------------------------------------------- test data
def integer_data(n_rows=11, n_items=N_ITEMS, dim=4, seed=0):
    """Small-integer states and table with duplicated item rows: many exact ties, exact floats."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randint(-2, 3, (n_items + 1, dim), generator=generator).float()
    table[0] = 9.0  # padding scores highest wherever states are positive: it must still never show up
    table[17] = table[5]
    table[12] = table[3]
    table[n_items] = table[1]
    states = torch.randint(-2, 3, (n_rows, dim), generator=generator).float()
    states[0] = 0.0  # a collapsed row: every item ties
    targets = torch.randint(1, n_items + 1, (n_rows,), generator=generator)
    targets[1], targets[2] = 5, 17  # targets with an identical twin
    histories = torch.randint(0, n_items + 1, (n_rows, 6), generator=generator)
    histories[3, :2] = targets[3]  # the target itself inside the history (it stays ranked)
    histories[4] = 0  # an empty history
    return states, table, targets, histories


def random_data(n_rows=40, n_items=300, dim=16, seed=1):
    torch.manual_seed(seed)
    table = torch.randn(n_items + 1, dim)
    states = torch.randn(n_rows, dim)
    targets = torch.randint(1, n_items + 1, (n_rows,))
    histories = torch.randint(0, n_items + 1, (n_rows, 10))
    return states, table, targets, histories


def in_batches(function, batch, *tensors, **kwargs):
    """Call `function` on row batches of `tensors` and concatenate its output(s)."""
    pieces = [function(*(t[i:i + batch] for t in tensors), **kwargs) for i in range(0, len(tensors[0]), batch)]
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*pieces))
    return torch.cat(pieces)


# -------------------------------------------------------------------------------- cross-entropy
def projected_problem(n_rows=12, n_items=150, dim=8, feature_dim=5, seed=0):
    """States and a table built from a parameter (Linear projection of item features), like scoring_table()."""
    torch.manual_seed(seed)
    projection = nn.Linear(feature_dim, dim, bias=False)  # as RoDPOModel.projections
    features = torch.randn(n_items + 1, feature_dim)
    states = torch.randn(n_rows, dim, requires_grad=True)
    targets = torch.randint(1, n_items + 1, (n_rows,))
    return projection, features, states, targets


def ce_and_grads(loss_fn, projection, features, states, reduction, weights=None):
    projection.zero_grad()
    states.grad = None
    table = projection(features)
    table.retain_grad()
    loss = loss_fn(states, table, reduction)
    (loss if reduction == "mean" else (loss * weights).sum()).backward()
    return loss.detach(), states.grad.clone(), table.grad.clone(), projection.weight.grad.clone()


@pytest.mark.parametrize("chunk", [1, 7, 100, 150, 200])  # 7 and 100 do not divide n_items = 150; 200 > n_items
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_cross_entropy_value_and_gradients_equal_dense(chunk, reduction):
    projection, features, states, targets = projected_problem()
    weights = torch.rand(len(targets)) / len(targets)  # d loss / d loss_row for 'none', on the scale of 'mean'

    def dense(s, t, r):
        return F.cross_entropy(dense_logits(s, t), targets, reduction=r)

    def chunked(s, t, r):
        return chunked_cross_entropy(s, t, targets, chunk_items=chunk, reduction=r, backend="chunked")

    expected = ce_and_grads(dense, projection, features, states, reduction, weights)
    got = ce_and_grads(chunked, projection, features, states, reduction, weights)
    assert got[0].shape == expected[0].shape
    for name, actual, reference in zip(("loss", "states", "table", "weight"), got, expected):
        torch.testing.assert_close(actual, reference, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.all(got[2][0] == 0)  # padding row gets no gradient


def test_chunked_cross_entropy_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    states = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    table = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 5, 3])
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda s, t: chunked_cross_entropy(s, t, targets, chunk_items=2, reduction=reduction, backend="chunked"),
            (states, table))


def test_half_precision_inputs_reduce_in_fp32():
    projection, features, states, targets = projected_problem()
    states16, table16 = states.detach().bfloat16(), projection(features).detach().bfloat16()
    loss = chunked_cross_entropy(states16, table16, targets, chunk_items=7, backend="chunked")
    assert loss.dtype == torch.float32
    reference = F.cross_entropy(dense_logits(states16, table16).float(), targets)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_cross_entropy_grads_flow_under_autocast():
    projection, features, states, targets = projected_problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(states, projection(features), targets, chunk_items=7, backend="chunked")
    loss.backward()
    assert loss.dtype == torch.float32 and states.grad.dtype == torch.float32
    assert projection.weight.grad is not None and torch.isfinite(projection.weight.grad).all()


def test_backend_is_chunked_without_cuda_and_kernel_maps_padding_away():
    assert cross_entropy_backend("cpu") == "chunked"
    projection, features, states, targets = projected_problem()
    table = projection(features)
    with pytest.raises(ValueError, match="backend='kernel'"):
        chunked_cross_entropy(states, table, targets, backend="kernel")

    def fake_kernel(e, c, kernel_targets, reduction, impl):  # linear_cross_entropy's contract: CE of e @ c.T
        return F.cross_entropy(e @ c.T, kernel_targets, reduction=reduction)

    torch.testing.assert_close(scoring_cross_entropy._kernel_loss(fake_kernel, states, table, targets, "mean"),
                               F.cross_entropy(dense_logits(states, table), targets))


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [leaf.numel() for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


class FreshLargeTensors(TorchDispatchMode):
    """Counts the tensors of at least `cells` elements that ops allocate anew (not views, not
    in-place or out= results): what a pass that reuses its work memory does once, not per chunk."""

    def __init__(self, cells):
        super().__init__()
        self.cells, self.count = cells, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            self.count += sum(1 for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)
                              and leaf.numel() >= self.cells)
        return out


def test_chunk_passes_allocate_their_chunk_sized_memory_once_not_per_chunk():
    n_rows, n_items, chunk = 64, 2_000, 128  # 16 chunks
    torch.manual_seed(0)
    states, table = torch.randn(n_rows, 8, requires_grad=True), torch.randn(n_items + 1, 8, requires_grad=True)
    targets, history = torch.randint(1, n_items + 1, (n_rows,)), torch.randint(0, n_items + 1, (n_rows, 5))
    passes = {
        "ranks": lambda: target_ranks_unmasked_and_masked(states.detach(), table.detach(), targets, history,
                                                          chunk_items=chunk),
        "ranks_and_pool": lambda: ranks_and_top_k(states.detach(), table.detach(), targets, [None, history],
                                                  top_k=10, chunk_items=chunk),
        "top_k": lambda: top_k_items(states.detach(), table.detach(), 10, exclude_targets=targets,
                                     exclude_ids=history, chunk_items=chunk),
        "ce_and_pool": lambda: cross_entropy_and_top_k(states, table, targets, 10, exclude_ids=history,
                                                       chunk_items=chunk)[0].backward(),
    }
    for name, run in passes.items():
        with FreshLargeTensors(n_rows * chunk) as fresh:
            run()
        assert fresh.count <= 4, name  # work memory (forward, backward, flags), never one per chunk


def test_chunked_cross_entropy_never_materialises_dense_logits():
    n_rows, n_items, dim, chunk = 64, 200_000, 8, 4096
    torch.manual_seed(0)
    states = torch.randn(n_rows, dim, requires_grad=True)
    table = torch.randn(n_items + 1, dim, requires_grad=True)
    targets = torch.randint(1, n_items + 1, (n_rows,))
    with LargestOutput() as chunked:
        loss = chunked_cross_entropy(states, table, targets, chunk_items=chunk, backend="chunked")
        # kept for backward: the inputs themselves plus the (N,) log-sum-exp, no chunk logits
        assert sum(saved.numel() for saved in loss.grad_fn.saved_tensors) == states.numel() + table.numel() + 2 * n_rows
        loss.backward()
    # table-sized tensors (its gradient) are fine; nothing else may exceed one chunk of logits
    assert chunked.largest <= max(table.numel(), n_rows * chunk)
    assert chunked.largest < n_rows * n_items / 4
    with LargestOutput() as dense:  # the detector sees the dense logits when they exist
        F.cross_entropy(dense_logits(states, table), targets).backward()
    assert dense.largest >= n_rows * (n_items + 1)


# -------------------------------------------------------------------------------- CE with the pool
@pytest.mark.parametrize("chunk", CHUNKS)  # 3 and 7 do not divide 23
@pytest.mark.parametrize("k", [1, 5, N_ITEMS + 3])
def test_cross_entropy_and_top_k_equals_the_two_separate_passes_with_exact_ties(chunk, k):
    states, table, targets, histories = integer_data()
    for exclude_ids in (None, histories):
        loss, pool_scores, pool_items = cross_entropy_and_top_k(states, table, targets, k, exclude_ids=exclude_ids,
                                                                chunk_items=chunk, reduction="none")
        separate = top_k_items(states, table, k, exclude_targets=targets, exclude_ids=exclude_ids, chunk_items=chunk)
        assert torch.equal(pool_items, separate[1]) and torch.equal(pool_scores, separate[0])  # ids and tie order
        expected = dense_top_k(states, table, k, exclusion_mask(N_ITEMS, exclude_ids, targets))
        assert torch.equal(pool_items, expected[1])
        assert torch.equal(loss, chunked_cross_entropy(states, table, targets, chunk_items=chunk, reduction="none"))
        assert not (pool_items == targets[:, None]).any() and not (pool_items[pool_scores > NEG_INF] == 0).any()


def test_cross_entropy_and_top_k_by_hand():
    # one row, items 1..5 score 2, 3, 3, 1, 3; y_w = 3; item 2 excluded: pool = [5, 1, 4], argmax 5
    table = torch.tensor([[10.0], [2.0], [3.0], [3.0], [1.0], [3.0]])
    loss, scores, items = cross_entropy_and_top_k(torch.ones(1, 1), table, torch.tensor([3]), 4,
                                                  exclude_ids=torch.tensor([[2, 0]]), chunk_items=2)
    assert items.tolist() == [[5, 1, 4, 0]] and scores.tolist() == [[3.0, 2.0, 1.0, NEG_INF]]
    expected = torch.logsumexp(table[1:, 0], 0) - 3.0
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("chunk", [1, 7, 130, 300, 400])  # 130 (128 after alignment) does not divide 300
def test_cross_entropy_and_top_k_keeps_value_and_gradients_of_the_plain_ce(chunk):
    states, table, targets, histories = random_data()
    got, expected = [], []
    for fused, out in ((True, got), (False, expected)):
        s, t = states.clone().requires_grad_(), table.clone().requires_grad_()
        if fused:
            loss, _, pool = cross_entropy_and_top_k(s, t, targets, 20, exclude_ids=histories, chunk_items=chunk)
            separate = top_k_items(states, table, 20, exclude_targets=targets, exclude_ids=histories,
                                   chunk_items=chunk)
            assert torch.equal(pool, separate[1])
        else:
            loss = chunked_cross_entropy(s, t, targets, chunk_items=chunk)
        loss.backward()
        out.extend([loss.detach(), s.grad, t.grad])
    for name, actual, reference in zip(("loss", "states", "table"), got, expected):
        assert torch.equal(actual, reference), name


def test_cross_entropy_and_top_k_refuses_a_bad_k():
    states, table, targets, _ = integer_data()
    with pytest.raises(ValueError, match="k=0: expected an integer >= 1"):
        cross_entropy_and_top_k(states, table, targets, 0)


# -------------------------------------------------------------------------------- top-K
def test_top_k_breaks_ties_by_lower_item_id_worked_by_hand():
    # items 1..5 score 2, 3, 3, 1, 3 for the single row; padding row 0 would score 10
    table = torch.tensor([[10.0], [2.0], [3.0], [3.0], [1.0], [3.0]])
    states = torch.ones(1, 1)
    scores, items = top_k_items(states, table, 4, chunk_items=2)
    assert items.tolist() == [[2, 3, 5, 1]] and scores.tolist() == [[3.0, 3.0, 3.0, 2.0]]
    scores, items = top_k_items(states, table, 2, exclude_targets=torch.tensor([3]),
                                exclude_ids=torch.tensor([[2, 0]]), chunk_items=1)
    assert items.tolist() == [[5, 1]]
    scores, items = top_k_items(states, table, 7, exclude_ids=torch.tensor([[4, 4]]), chunk_items=3)
    assert items.tolist() == [[2, 3, 5, 1, 0, 0, 0]] and scores[0, 4:].tolist() == [NEG_INF] * 3


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("k", [1, 5, N_ITEMS + 3])
def test_top_k_equals_dense_with_exact_ties_and_exclusions(chunk, k):
    states, table, targets, histories = integer_data()
    cases = [  # (exclude_targets, exclude_ids): negatives pool, top-N with history, both, neither
        (targets, None), (None, histories), (targets, histories), (None, None)]
    for exclude_targets, exclude_ids in cases:
        expected = dense_top_k(states, table, k, exclusion_mask(N_ITEMS, exclude_ids, exclude_targets))
        got = top_k_items(states, table, k, exclude_targets=exclude_targets, exclude_ids=exclude_ids,
                          chunk_items=chunk)
        assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
        assert not (got[1] == 0).logical_and(got[0] > NEG_INF).any()  # never padding


@pytest.mark.parametrize("batch", [1, 7, 11])
def test_top_k_is_the_same_for_any_row_batching(batch):
    states, table, targets, histories = integer_data()
    whole = top_k_items(states, table, 6, exclude_targets=targets, exclude_ids=histories, chunk_items=3)

    def call(s, t, h):
        return top_k_items(s, table, 6, exclude_targets=t, exclude_ids=h, chunk_items=3)

    got = in_batches(call, batch, states, targets, histories)
    assert torch.equal(got[0], whole[0]) and torch.equal(got[1], whole[1])


def test_top_k_ranks_nan_first_like_torch_topk():
    states, table, _, _ = integer_data()
    table[9] = float("nan")
    table[14] = float("nan")
    got = top_k_items(states, table, 4, chunk_items=3)
    expected = dense_top_k(states, table, 4)
    assert torch.equal(got[1], expected[1]) and got[1][:, :2].tolist() == [[9, 14]] * len(states)


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
def test_top_k_equals_dense_on_random_data(chunk):
    states, table, targets, histories = random_data()
    k = 20
    exclude = exclusion_mask(table.shape[0] - 1, histories, targets)
    expected = dense_top_k(states, table, k, exclude)
    got = top_k_items(states, table, k, exclude_targets=targets, exclude_ids=histories, chunk_items=chunk)
    torch.testing.assert_close(got[0], expected[0], rtol=TOLERANCE, atol=TOLERANCE)
    precise = dense_top_k(states.double(), table.double(), k + 1, exclude)[0]
    separated = (precise[:, :-1] - precise[:, 1:]).abs().min(dim=1).values > TOLERANCE
    assert separated.sum() > len(states) // 2  # the check below covers most rows
    assert torch.equal(got[1][separated], expected[1][separated])


# -------------------------------------------------------------------------------- target ranks
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("mask_history", [False, True])
def test_target_ranks_equal_dense_with_exact_ties(chunk, mask_history):
    states, table, targets, histories = integer_data()
    exclude_ids = histories if mask_history else None
    expected = dense_metric_ranks(dense_logits(states, table), targets,
                                  history_exclusion_mask(histories, N_ITEMS) if mask_history else None)
    got = target_ranks(states, table, targets, exclude_ids=exclude_ids, chunk_items=chunk)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert got[0] == N_ITEMS - (len(set(histories[0].tolist()) - {0, int(targets[0])}) if mask_history else 0)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_unmasked_and_masked_ranks_from_one_pass_equal_dense_ranks_of_both_protocols(chunk):
    states, table, targets, histories = integer_data()
    logits = dense_logits(states, table)
    unmasked, masked = target_ranks_unmasked_and_masked(states, table, targets, histories, chunk_items=chunk)
    assert torch.equal(unmasked, dense_metric_ranks(logits, targets))
    assert torch.equal(masked, dense_metric_ranks(logits, targets, history_exclusion_mask(histories, N_ITEMS)))
    assert bool((masked < unmasked).any())  # the data has history items above the target


@pytest.mark.parametrize("chunk", CHUNKS)  # 3 and 7 do not divide 23
@pytest.mark.parametrize("k", [1, 5, N_ITEMS + 3])
def test_ranks_and_top_k_equal_the_separate_rank_and_top_k_passes_with_exact_ties(chunk, k):
    states, table, targets, histories = integer_data()
    (unmasked, masked), (pool_scores, pool_items) = ranks_and_top_k(states, table, targets, [None, histories],
                                                                    top_k=k, chunk_items=chunk)
    separate = top_k_items(states, table, k, exclude_targets=targets, chunk_items=chunk)
    assert torch.equal(pool_items, separate[1]) and torch.equal(pool_scores, separate[0])  # ids and tie order
    assert torch.equal(pool_items, dense_top_k(states, table, k, exclusion_mask(N_ITEMS, None, targets))[1])
    expected = target_ranks_unmasked_and_masked(states, table, targets, histories, chunk_items=chunk)
    assert torch.equal(unmasked, expected[0]) and torch.equal(masked, expected[1])
    assert ranks_and_top_k(states, table, targets, [None], chunk_items=chunk)[1] is None


@pytest.mark.parametrize("batch", [1, 7, 11])
def test_target_ranks_are_the_same_for_any_row_batching(batch):
    states, table, targets, histories = integer_data()
    whole = target_ranks(states, table, targets, exclude_ids=histories, chunk_items=7)
    got = in_batches(lambda s, t, h: target_ranks(s, table, t, exclude_ids=h, chunk_items=7), batch,
                     states, targets, histories)
    assert torch.equal(got, whole)


def test_target_ranks_count_nan_against_the_target():
    states, table, targets, _ = integer_data()
    table[9] = float("nan")  # a NaN competitor beats every target
    targets[5] = 9  # ... and a NaN target gets the worst rank, N_ITEMS
    expected = dense_metric_ranks(dense_logits(states, table), targets)
    got = target_ranks(states, table, targets, chunk_items=4)
    assert torch.equal(got, expected) and got[5] == N_ITEMS


def test_target_ranks_redo_the_count_when_the_target_score_differs_from_its_chunk(monkeypatch):
    states, table, targets, histories = integer_data()
    passes = []
    count_beating, target_scores = scoring_ranks._count_beating, scoring_ranks._target_scores
    monkeypatch.setattr(scoring_ranks, "_target_scores",  # off by one ulp: ties would be lost without the redo
                        lambda *args: torch.nextafter(target_scores(*args), torch.tensor(float("inf"))))
    monkeypatch.setattr(scoring_ranks, "_count_beating", lambda *args: passes.append(1) or count_beating(*args))
    expected = dense_metric_ranks(dense_logits(states, table), targets, history_exclusion_mask(histories, N_ITEMS))
    assert torch.equal(target_ranks(states, table, targets, exclude_ids=histories, chunk_items=5), expected)
    assert len(passes) == 2


@pytest.mark.parametrize("chunk", [1, 7, 64, 300])
def test_target_ranks_equal_dense_on_random_data(chunk):
    states, table, targets, histories = random_data()
    expected = dense_metric_ranks(dense_logits(states, table), targets)
    got = target_ranks(states, table, targets, chunk_items=chunk)
    precise = dense_logits(states.double(), table.double())
    gap = (precise - precise.gather(1, targets[:, None])).abs()
    gap.scatter_(1, targets[:, None], float("inf"))
    separated = gap[:, 1:].min(dim=1).values > TOLERANCE
    assert separated.sum() > len(states) // 2
    assert torch.equal(got[separated], expected[separated])
    assert (got - expected).abs().max() <= 1  # elsewhere at most a near-tie flips


def test_identical_item_rows_tie_with_the_target_on_random_floats():
    states, table, targets, _ = random_data(n_items=300)
    targets = (targets - 1) % 150 + 1
    twins = targets + 150  # each target's identical twin, in another chunk
    table[151:] = table[1:151]
    for chunk in (7, 64, 300):
        got = target_ranks(states, table, targets, chunk_items=chunk)
        alone = target_ranks(states, table, targets, exclude_ids=twins[:, None], chunk_items=chunk)
        assert torch.equal(got, alone + 1)  # the twin always counts against the target


# -------------------------------------------------------------------------------- chunk sizes, layering
@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", "AUTO", True, None])
def test_resolve_chunk_items_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="score_chunk_items"):
        resolve_chunk_items(bad, 64, 1000, "cpu")


def test_resolve_chunk_items_clamps_and_sizes_auto_from_the_budget():
    assert resolve_chunk_items(7, 64, 1000, "cpu") == 7
    assert resolve_chunk_items(10**9, 64, 1000, "cpu") == 1000
    assert resolve_chunk_items("auto", 64, 1000, "cpu") == 1000
    auto = resolve_chunk_items("auto", 1400, 10**6, torch.device("cpu"))
    assert auto == scoring.AUTO_CHUNK_BYTES // (1400 * scoring.LOGIT_BYTES)
    assert resolve_chunk_items("auto", 0, 10, "cpu") == 10
    assert resolve_chunk_items("auto", 10**9, 10, "cpu") == 1


def test_scoring_core_imports_only_torch():
    imported = set()
    for path in Path(scoring.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {name for name in imported if not name.startswith("rodpo.scoring")}  # its own modules only
    top_level = {name.split(".")[0] for name in outside}
    assert top_level - set(sys.stdlib_module_names) <= {"torch", "cut_cross_entropy"}  # no other rodpo.*


def test_bad_ids_and_shapes_are_named():
    states, table, targets, histories = integer_data()
    with pytest.raises(ValueError, match="targets: item ids must be in 1..23"):
        target_ranks(states, table, torch.zeros_like(targets))
    with pytest.raises(ValueError, match="exclude_ids: item ids must be in 0..23"):
        top_k_items(states, table, 3, exclude_ids=histories + 30)
    with pytest.raises(ValueError, match=r"exclude_targets: expected integer item ids of shape \(11,\)"):
        top_k_items(states, table, 3, exclude_targets=targets[:3])
    with pytest.raises(ValueError, match="same D"):
        chunked_cross_entropy(states[:, :2], table, targets)


def test_empty_batches_score_to_empty_results():
    states, table, _, _ = integer_data()
    empty = states[:0]
    assert target_ranks(empty, table, torch.zeros(0, dtype=torch.long)).shape == (0,)
    scores, items = top_k_items(empty, table, 4)
    assert scores.shape == items.shape == (0, 4)
