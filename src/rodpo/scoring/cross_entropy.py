"""Softmax cross-entropy over the whole catalog in item chunks (Eq. 6's L_CE), optionally with each
row's top-K pool (Eq. 4) from the same chunk scores."""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from rodpo.scoring.chunks import (
    _autocast_off,
    _check_ids,
    _check_scoring_inputs,
    _chunk_scores,
    _chunks,
    _ChunkWork,
    _local,
    _matmul_dtype,
    resolve_chunk_items,
)
from rodpo.scoring.top_k import TopKPool, top_k_items

KERNEL_IMPL = "cce_exact"  # cut-cross-entropy without gradient filtering: the exact gradient
REDUCTIONS = ("mean", "none")
BACKENDS = ("auto", "chunked", "kernel")


@functools.cache
def _kernel_cross_entropy():
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return linear_cross_entropy


def cross_entropy_backend(device: str | torch.device) -> str:
    """'kernel' (Apple's cut-cross-entropy, CUDA only, when installed) or 'chunked' (pure torch)."""
    return "kernel" if torch.device(device).type == "cuda" and _kernel_cross_entropy() is not None else "chunked"


def chunked_cross_entropy(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, *,
                          chunk_items: int | str = "auto", reduction: str = "mean",
                          backend: str = "auto") -> torch.Tensor:
    """Softmax cross-entropy of the target over all real items 1..n_items, never the dense logits.

    Equals F.cross_entropy(states @ table.T with column 0 = -inf, targets) in value and in gradient
    (wrt states and table, both may require grad), in fp32 for half inputs. reduction 'mean' gives
    a scalar, 'none' the (N,) per-row losses. backend 'auto' takes the cut-cross-entropy kernel on
    CUDA when installed (untested on hardware here), else the chunked autograd Function below.
    """
    return _cross_entropy(states, table, targets, chunk_items, reduction, backend, None, None)[0]


def cross_entropy_and_top_k(states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, k: int, *,
                            exclude_ids: torch.Tensor | None = None, chunk_items: int | str = "auto",
                            reduction: str = "mean", backend: str = "auto"
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`chunked_cross_entropy` and, from the same chunk scores, each row's top-k pool: (loss, pool
    scores (N, k), pool items (N, k)), the pool equal to `top_k_items(states, table, k,
    exclude_targets=targets, exclude_ids=exclude_ids, chunk_items=chunk_items)` (ids, scores and tie
    order; its column 0 is the argmax). One pass over the catalog where two were (Algorithm 1: CE
    and the negative pool of Eq. 4). The kernel backend has no top-K: it scores the catalog a second
    time with `top_k_items`. The pool carries no gradient.
    """
    return _cross_entropy(states, table, targets, chunk_items, reduction, backend, k, exclude_ids)


def _cross_entropy(states, table, targets, chunk_items, reduction, backend, pool_k, exclude_ids):
    """(loss, pool scores, pool items); the pool is (None, None) when pool_k is None."""
    n_rows, n_items = _check_scoring_inputs(states, table)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.")
    targets = _check_ids("targets", targets, n_rows, 1, 1, n_items, states.device)
    if backend == "auto":
        backend = cross_entropy_backend(states.device)
    if backend == "kernel":
        kernel = _kernel_cross_entropy()
        if kernel is None or states.device.type != "cuda":
            raise ValueError("backend='kernel' needs the cut_cross_entropy package and CUDA tensors; "
                             "use backend='auto' or 'chunked'.")
        loss = _kernel_loss(kernel, states, table, targets, reduction)
        if pool_k is None:
            return loss, None, None
        return (loss, *top_k_items(states.detach(), table.detach(), pool_k, exclude_targets=targets,
                                   exclude_ids=exclude_ids, chunk_items=chunk_items))  # the second pass
    pool = None
    if pool_k is not None:
        pool = TopKPool(n_rows, n_items, pool_k, _matmul_dtype(states, table), states.device,
                        exclude_ids=exclude_ids, exclude_targets=targets)
    width = resolve_chunk_items(chunk_items, n_rows, n_items, states.device)
    loss = _ChunkedCrossEntropy.apply(states, table, targets, width, reduction, pool)
    return (loss, None, None) if pool is None else (loss, *pool.result())


def _kernel_loss(kernel, states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                 reduction: str) -> torch.Tensor:
    """Row 0 (padding) is left out of the kernel's classifier, so its class c is item c + 1."""
    dtype = _matmul_dtype(states, table)
    return kernel(states.to(dtype), table[1:].to(dtype), targets - 1, reduction=reduction, impl=KERNEL_IMPL)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """CE over item chunks. Forward keeps per-row log-sum-exp and target logit only; backward
    recomputes each chunk's logits: d loss / d logits = (softmax - onehot(target)) * grad_out (/ N).
    When the whole catalog fits in one chunk (width >= n_items), forward keeps its logits instead
    (the same memory bound; SCORE_ALIGN rounding may split it in two), no recompute."""

    @staticmethod
    def forward(ctx, states, table, targets, width, reduction, pool):
        n_rows, n_items = states.shape[0], table.shape[0] - 1
        dtype = _matmul_dtype(states, table)
        reduce_dtype = torch.promote_types(dtype, torch.float32)
        keep_logits = width >= n_items and any(ctx.needs_input_grad[:2])
        lse = torch.full((n_rows,), float("-inf"), dtype=reduce_dtype, device=states.device)
        target_logit = torch.zeros_like(lse)
        kept = []
        work = None if keep_logits else _ChunkWork(n_rows, width, dtype, states.device)
        with _autocast_off(states.device):
            states_c = states.to(dtype)
            for chunk in _chunks(n_items, width):
                logits = (_chunk_scores(states_c, table, chunk, dtype) if keep_logits
                          else work.scores(states_c, table, chunk))  # (N, stop - fresh)
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
                local, inside = _local(targets, chunk.fresh, chunk.stop)
                target_logit = torch.where(inside, logits.gather(1, local[:, None]).squeeze(1), target_logit)
                if pool is not None:  # a TopKPool: the negative pool from the same scores
                    pool.add(logits, chunk, overwrite=not keep_logits)
                if keep_logits:
                    kept.append(logits)
        ctx.save_for_backward(states, table, targets, lse, *kept)
        ctx.width, ctx.reduction, ctx.dtype = width, reduction, dtype
        losses = lse - target_logit
        return losses.mean() if reduction == "mean" else losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        states, table, targets, lse, *kept = ctx.saved_tensors
        n_rows, n_items = states.shape[0], table.shape[0] - 1
        need_states, need_table = ctx.needs_input_grad[:2]
        row_scale = grad_output.to(lse.dtype).expand(n_rows)  # (N,) d loss / d loss_row
        if ctx.reduction == "mean":
            row_scale = row_scale / n_rows
        grad_states = torch.zeros(states.shape, dtype=lse.dtype, device=states.device) if need_states else None
        grad_table = torch.zeros_like(table) if need_table else None  # row 0 (padding) keeps 0
        work = None if kept else _ChunkWork(n_rows, ctx.width, ctx.dtype, states.device)
        with _autocast_off(states.device):
            states_c = states.to(ctx.dtype)
            for index, chunk in enumerate(_chunks(n_items, ctx.width)):
                fresh, stop = chunk.fresh, chunk.stop
                if kept:  # saved for backward: left as it is
                    grad_logits = (kept[index] - lse[:, None]).exp_().mul_(row_scale[:, None])  # softmax * scale
                else:  # recomputed into the work memory, turned into its gradient in place
                    grad_logits = work.scores(states_c, table, chunk).sub_(lse[:, None]).exp_().mul_(row_scale[:, None])
                local, inside = _local(targets, fresh, stop)
                grad_logits.scatter_add_(1, local[:, None], (-row_scale * inside)[:, None])  # - onehot * scale
                grad_logits = grad_logits.to(ctx.dtype)
                if need_states:
                    grad_states.add_(grad_logits @ table[fresh:stop].to(ctx.dtype))
                if need_table:
                    grad_table[fresh:stop] = grad_logits.T @ states_c
        grad_states = grad_states.to(states.dtype) if need_states else None
        return grad_states, grad_table, None, None, None, None
