import torch

from rodpo.model.temporal import TemporalExperts, gap_buckets, time_buckets

HOUR = 3600


def test_gap_buckets_log_hours_with_dedicated_bucket_for_first_item_and_padding():
    timestamps = torch.tensor([[0, HOUR, HOUR, 4 * HOUR, 0], [10, 5, 0, 0, 0]])
    is_real = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    buckets = gap_buckets(timestamps, is_real, n_buckets=32)
    # gaps in hours: -, 1, 0, 3, pad -> 1 + floor(log2(1 + h)) = -, 2, 1, 3, 0; a negative gap counts as 0
    assert buckets.tolist() == [[0, 2, 1, 3, 0], [0, 1, 0, 0, 0]]


def test_gap_buckets_clamp_huge_gaps_and_never_nan():
    timestamps = torch.tensor([[0, 10**10]])
    buckets = gap_buckets(timestamps, torch.tensor([[True, True]]), n_buckets=8)
    assert buckets.tolist() == [[0, 7]]


def test_time_buckets_span_training_range_and_padding_is_zero():
    timestamps = torch.tensor([[100, 150, 200, 900, 0]])
    is_real = torch.tensor([[True, True, True, True, False]])
    buckets = time_buckets(timestamps, is_real, n_buckets=6, time_min=100, time_max=200)
    # 1 + floor(4 * fraction): 0 -> 1, 0.5 -> 3, 1 -> 5, beyond max -> 5, padding -> 0
    assert buckets.tolist() == [[1, 3, 5, 5, 0]]
    assert time_buckets(timestamps, is_real, 6, None, None).tolist() == [[1, 1, 1, 1, 0]]


def test_temporal_experts_residual_and_every_expert_trained():
    torch.manual_seed(0)
    module = TemporalExperts(hidden_size=8, n_experts=3, n_gap_buckets=8, n_time_buckets=8, time_min=0, time_max=10**6)
    timestamps = torch.tensor([[0, HOUR, 10 * HOUR], [5, 0, 0]])
    is_real = torch.tensor([[True, True, True], [True, False, False]])
    hidden = torch.randn(2, 3, 8)
    out = module(hidden, module.time_embedding_of(timestamps, is_real))
    assert out.shape == hidden.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert all(expert[0].weight.grad is not None for expert in module.experts)
    assert module.gap_embedding.weight.grad is not None
