"""One training step (rodpo.training.stage): a DPO step scores the catalog once (Algorithm 1: the
CE pass also yields the top-K pool) and trains exactly as the earlier two passes did."""

from __future__ import annotations

import pytest
import torch

from rodpo.scoring import chunked_cross_entropy, top_k_items
from rodpo.scoring import chunks as scoring_chunks
from rodpo.scoring import cross_entropy as scoring_cross_entropy
from rodpo.training import stage as stage_module
from rodpo.training.config import DPOConfig, TrainConfig
from rodpo.training.objectives import rodpo_loss
from rodpo.training.stage import Stage

CHUNK = 7  # 20 items: chunks 1-7, 8-14, 15-20


def two_passes(states, table, targets, k, *, exclude_ids, chunk_items, reduction, backend):
    """The step before the fused pass: CE, then a separate top-K pass for the pool."""
    loss = chunked_cross_entropy(states, table, targets, chunk_items=chunk_items, reduction=reduction, backend=backend)
    return (loss, *top_k_items(states.detach(), table.detach(), k, exclude_targets=targets, exclude_ids=exclude_ids,
                               chunk_items=chunk_items))


def dpo_step(planted_data, model, dpo: DPOConfig):
    """Losses, losers and the gradient of every parameter of one DPO step on 48 windows."""
    losers = []
    stage = Stage(model, planted_data, TrainConfig(stage="dpo", device="cpu", progress_bar=False, seed=3, dpo=dpo,
                                                   score_chunk_items=CHUNK), None,
                  pair_monitor=lambda **pairs: losers.append(pairs["losers"]))
    stage_module.set_policy_mode(stage.policy, stochastic=False)
    rows = torch.arange(48)
    losses = stage.step_losses(stage.train_items[rows], stage.train_timestamps[rows], rows)
    losses["loss"].backward()
    grads = {name: parameter.grad.clone() for name, parameter in stage.policy.named_parameters()
             if parameter.grad is not None}
    return losses, losers[0], grads


@pytest.fixture
def count_chunk_scores(monkeypatch):
    """Counts the chunk matmuls (N, D) x (D, chunk) of the CE and top-K passes."""
    calls = []
    original_scores = scoring_chunks._ChunkWork.scores
    monkeypatch.setattr(scoring_chunks._ChunkWork, "scores",
                        lambda self, *args: calls.append(1) or original_scores(self, *args))
    original = scoring_cross_entropy._chunk_scores  # the single-chunk path that keeps its logits
    monkeypatch.setattr(scoring_cross_entropy, "_chunk_scores", lambda *args: calls.append(1) or original(*args))
    return calls


@pytest.mark.parametrize("strategy, exclude", [("topk_uniform", "none"), ("topk_uniform", "earlier_items"),
                                               ("argmax", "window_items"), ("random", "earlier_items")])
def test_a_dpo_step_scores_the_catalog_once_and_trains_as_the_two_passes_did(planted_data, make_model, monkeypatch,
                                                                            count_chunk_scores, strategy, exclude):
    torch.manual_seed(0)
    model = make_model()
    dpo = DPOConfig(k=5, negative_strategy=strategy, exclude_from_pool=exclude,
                    n_negatives=1 if strategy == "argmax" else 2, objective="sdpo")
    n_chunks = 3

    fused = dpo_step(planted_data, model, dpo)
    fused_passes = len(count_chunk_scores)
    count_chunk_scores.clear()
    monkeypatch.setattr(stage_module, "cross_entropy_and_top_k", two_passes)
    separate = dpo_step(planted_data, model, dpo)
    separate_passes = len(count_chunk_scores)

    assert torch.equal(fused[1], separate[1])  # the same losers for the same seed
    assert fused[0].keys() == separate[0].keys()
    for name in fused[0]:
        assert torch.equal(torch.as_tensor(fused[0][name]), torch.as_tensor(separate[0][name])), name
    assert fused[2].keys() == separate[2].keys()
    for name in fused[2]:
        assert torch.equal(fused[2][name], separate[2][name]), name
    # forward + backward recompute: one catalog pass each; the two-pass step adds a top-K pass
    assert fused_passes == 2 * n_chunks
    assert separate_passes == (2 * n_chunks if strategy == "random" else 3 * n_chunks)


def test_a_warmup_step_asks_for_no_pool(planted_data, make_model, monkeypatch):
    monkeypatch.setattr(stage_module, "cross_entropy_and_top_k", lambda *args, **kwargs: pytest.fail("pool asked"))
    stage = Stage(make_model(), planted_data, TrainConfig(device="cpu", progress_bar=False), None)
    losses = stage.step_losses(stage.train_items[:8], stage.train_timestamps[:8])
    assert "dpo_loss" not in losses and torch.isfinite(losses["loss"])


def test_the_optimised_and_the_logged_loss_are_both_rodpo_loss(planted_data, make_model):
    torch.manual_seed(0)
    dpo = DPOConfig(k=5, lambda_dpo=0.5)
    stage = Stage(make_model(), planted_data, TrainConfig(stage="dpo", device="cpu", progress_bar=False, dpo=dpo,
                                                          batch_size=32), None)
    aux_weight = stage.aux_weight
    assert aux_weight > 0  # the sparse MoE's term is in the sum
    step = stage.step_losses(stage.train_items[:32], stage.train_timestamps[:32])
    expected = rodpo_loss(step["ce_loss"], step["dpo_loss"], step["aux_loss"], lambda_dpo=0.5, aux_weight=aux_weight)
    torch.testing.assert_close(step["loss"].detach(), expected, rtol=1e-6, atol=1e-6)  # sums / N vs means
    logged = stage.train_epoch(1, run_dir=None)  # target-weighted means over the epoch
    expected = rodpo_loss(torch.tensor(logged["ce_loss"]), torch.tensor(logged["dpo_loss"]),
                          torch.tensor(logged["aux_loss"]), lambda_dpo=0.5, aux_weight=aux_weight)
    assert logged["loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.cuda
def test_a_dpo_step_on_cuda_in_bf16_and_fp32(planted_data, make_model):
    """The step's autocast path on a GPU: finite losses, and bf16 close to fp32 (same weights, same batch)."""
    torch.manual_seed(0)
    model = make_model()
    losses = {}
    for precision in ("fp32", "bf16"):
        stage = Stage(model, planted_data, TrainConfig(stage="dpo", device="cuda", precision=precision,
                                                       progress_bar=False, dpo=DPOConfig(k=5)), None)
        stage_module.set_policy_mode(stage.policy, stochastic=False)
        step = stage.step_losses(stage.train_items[:48], stage.train_timestamps[:48], torch.arange(48, device="cuda"))
        step["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in stage.policy.parameters() if p.grad is not None)
        losses[precision] = {name: float(step[name]) for name in ("ce_loss", "dpo_loss", "loss")}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=5e-2)
