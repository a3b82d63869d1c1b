"""The scoring core and a training step on CUDA (marker `cuda`: skipped where torch sees no GPU;
benchmarks/gpu_check.sh runs them). Tolerances are stated per precision: fp32 against a float64
dense reference, bf16 (matmuls in bf16, reductions in fp32) against the same bf16-rounded inputs
scored densely in float64; exact-tie integer data must match the CPU bit for bit."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from rodpo.scoring import (
    chunked_cross_entropy,
    cross_entropy_and_top_k,
    resolve_chunk_items,
    target_ranks,
    top_k_items,
)

pytestmark = pytest.mark.cuda

FP32_TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # fp32 chunked on CUDA vs float64 dense
BF16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)  # bf16 logits carry 8 bits of mantissa: ~0.4% per score
KERNEL_TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: BF16_TOLERANCE}
N_ROWS, N_ITEMS, DIM = 96, 5_000, 64
CHUNKS = (1_000, 1_337, N_ITEMS + 1)  # 1,337 (1,280 once aligned) does not divide the catalog


def problem(dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    states = (0.3 * torch.randn(N_ROWS, DIM, generator=generator)).to(dtype)
    table = (0.3 * torch.randn(N_ITEMS + 1, DIM, generator=generator)).to(dtype)
    targets = torch.randint(1, N_ITEMS + 1, (N_ROWS,), generator=generator)
    return states, table, targets


def dense_ce_and_grads(states, table, targets):
    """F.cross_entropy over float64 logits with padding column 0 at -inf, on the CPU."""
    s = states.detach().cpu().double().requires_grad_()
    t = table.detach().cpu().double().requires_grad_()
    logits = (s @ t.T).index_fill(1, torch.tensor([0]), float("-inf"))
    loss = F.cross_entropy(logits, targets.cpu())
    loss.backward()
    return loss.detach(), s.grad, t.grad


def ce_and_grads(states, table, targets, **kwargs):
    s = states.detach().cuda().requires_grad_()
    t = table.detach().cuda().requires_grad_()
    loss = chunked_cross_entropy(s, t, targets.cuda(), **kwargs)
    loss.backward()
    return loss.detach().cpu().double(), s.grad.cpu().double(), t.grad.cpu().double()


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, FP32_TOLERANCE), (torch.bfloat16, BF16_TOLERANCE)])
def test_chunked_cross_entropy_and_its_gradient_equal_dense_on_cuda(chunk, dtype, tolerance):
    states, table, targets = problem(dtype)
    expected = dense_ce_and_grads(states, table, targets)
    got = ce_and_grads(states, table, targets, chunk_items=chunk, backend="chunked")
    for name, actual, reference in zip(("loss", "states", "table"), got, expected):
        torch.testing.assert_close(actual, reference, **tolerance, msg=name)


def test_chunked_cross_entropy_under_bf16_autocast_on_cuda():
    """The training path: fp32 parameters, bf16 autocast around the scores."""
    states, table, targets = problem(torch.float32)
    expected = dense_ce_and_grads(states.bfloat16(), table.bfloat16(), targets)
    s, t = states.cuda().requires_grad_(), table.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(s, t, targets.cuda(), chunk_items=1_337, backend="chunked")
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.float32
    for name, actual, reference in zip(("loss", "states", "table"), (loss.detach(), s.grad, t.grad), expected):
        torch.testing.assert_close(actual.cpu().double(), reference, **BF16_TOLERANCE, msg=name)


@pytest.mark.skipif(importlib.util.find_spec("cut_cross_entropy") is None, reason="cut_cross_entropy not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_cross_entropy_and_its_gradient_equal_the_chunked_path(dtype):
    states, table, targets = problem(dtype)
    kernel = ce_and_grads(states, table, targets, backend="kernel")
    chunked = ce_and_grads(states, table, targets, chunk_items=1_337, backend="chunked")
    for name, actual, reference in zip(("loss", "states", "table"), kernel, chunked):
        torch.testing.assert_close(actual, reference, **KERNEL_TOLERANCE[dtype], msg=name)


def integer_problem(n_rows=64, n_items=3_000, dim=8, seed=0):
    """Small integers: every product and sum is exact, so CUDA and CPU scores are equal bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randint(-2, 3, (n_items + 1, dim), generator=generator).float()
    table[0] = 9.0
    table[2_000] = table[7]  # exact twins: ties broken by the lower id on both devices
    states = torch.randint(-2, 3, (n_rows, dim), generator=generator).float()
    targets = torch.randint(1, n_items + 1, (n_rows,), generator=generator)
    history = torch.randint(0, n_items + 1, (n_rows, 12), generator=generator)
    return states, table, targets, history


@pytest.mark.parametrize("chunk", [700, 1_000, 3_001])
def test_top_k_pools_and_ranks_on_cuda_equal_the_cpu(chunk):
    states, table, targets, history = integer_problem()
    cuda = [x.cuda() for x in (states, table, targets, history)]
    expected = top_k_items(states, table, 50, exclude_targets=targets, exclude_ids=history, chunk_items=chunk)
    got = top_k_items(cuda[0], cuda[1], 50, exclude_targets=cuda[2], exclude_ids=cuda[3], chunk_items=chunk)
    assert torch.equal(got[1].cpu(), expected[1]) and torch.equal(got[0].cpu(), expected[0])
    _, _, fused = cross_entropy_and_top_k(cuda[0], cuda[1], cuda[2], 50, exclude_ids=cuda[3], chunk_items=chunk,
                                          backend="chunked")
    assert torch.equal(fused.cpu(), expected[1])
    ranks = target_ranks(cuda[0], cuda[1], cuda[2], exclude_ids=cuda[3], chunk_items=chunk)
    assert torch.equal(ranks.cpu(), target_ranks(states, table, targets, exclude_ids=history, chunk_items=chunk))


def test_auto_chunk_size_on_cuda_respects_free_memory():
    free_bytes, _ = torch.cuda.mem_get_info()
    width = resolve_chunk_items("auto", 12_800, 10**7, "cuda")
    assert 1 <= width * 12_800 * 4 <= max(free_bytes / 8, 12_800 * 4)
