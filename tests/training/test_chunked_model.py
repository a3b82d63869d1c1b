"""The chunked scoring core on the real model: every modality's score term (Eq. 3), the sparse MoE
and the temporal module, against the dense reference path the model keeps (`all_item_logits`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rodpo.ranking import evaluate_model
from rodpo.metrics import target_ranks as dense_target_ranks
from rodpo.scoring import chunked_cross_entropy
from rodpo.training.stage import PolicyForward

FEATURE_DIM = 6


@pytest.fixture
def multimodal_model(planted_data, make_model):
    torch.manual_seed(0)
    model = make_model(modalities=("id", "text", "image"), text_dim=FEATURE_DIM, image_dim=FEATURE_DIM,
                       moe_mode="sparse", temporal=True)
    mask = torch.rand(planted_data.n_items + 1) > 0.3  # some items without an image
    model.set_item_features(text=torch.randn(planted_data.n_items + 1, FEATURE_DIM),
                            image=torch.randn(planted_data.n_items + 1, FEATURE_DIM), image_mask=mask)
    return model.eval()  # no dropout or router noise: both paths see the same states


@pytest.mark.parametrize("chunk", [1, 7, 20, 64])  # 7 does not divide the 20 items
def test_chunked_ce_and_every_gradient_equal_the_dense_path(planted_data, multimodal_model, chunk):
    items = torch.from_numpy(planted_data.train.items[:24])
    times = torch.from_numpy(planted_data.train.timestamps[:24])
    inputs, targets, input_times = items[:, :-1], items[:, 1:], times[:, :-1]
    is_target = targets > 0
    forward = PolicyForward(multimodal_model, encoder_chunks=2)
    gradients = {}
    for path in ("dense", "chunked"):
        multimodal_model.zero_grad()
        states, aux_loss, table = forward(inputs, input_times, is_target)
        if path == "dense":
            loss = F.cross_entropy(multimodal_model.all_item_logits(states), targets[is_target])
        else:
            loss = chunked_cross_entropy(states, table, targets[is_target], chunk_items=chunk)
        (loss + 0.01 * aux_loss).backward()
        gradients[path] = (loss.detach(), {name: p.grad.clone() for name, p in multimodal_model.named_parameters()
                                           if p.grad is not None})
    (dense_loss, dense_grads), (chunked_loss, chunked_grads) = gradients["dense"], gradients["chunked"]
    torch.testing.assert_close(chunked_loss, dense_loss, rtol=1e-5, atol=1e-6)
    assert set(chunked_grads) == set(dense_grads)
    assert {"modality_weights.text", "modality_weights.image", "projections.image.weight", "missing_image"} <= set(
        dense_grads)  # every score term of Eq. 3 is in the comparison
    for name, gradient in dense_grads.items():
        torch.testing.assert_close(chunked_grads[name], gradient, rtol=1e-5, atol=1e-6, msg=name)


def test_ranks_are_the_same_for_every_batch_and_chunk_size_and_match_dense(planted_data, multimodal_model):
    results = {(batch, chunk): evaluate_model(multimodal_model, planted_data.test, batch_size=batch,
                                              chunk_items=chunk)
               for batch in (1, 7, 2048) for chunk in (3, 7, 64)}
    first = results[(1, 3)]
    for result in results.values():
        np.testing.assert_array_equal(result["ranks"], first["ranks"])
        assert result["metrics"] == first["metrics"]
    # the dense reference ranks where no competitor is within the float tolerance of the target
    with torch.inference_mode():
        test = planted_data.test
        scores = multimodal_model.score_next(torch.from_numpy(test.items), torch.from_numpy(test.timestamps))
        dense = dense_target_ranks(scores, torch.from_numpy(test.targets)).numpy()
        own = scores.gather(1, torch.from_numpy(test.targets)[:, None])
        close = ((scores[:, 1:] - own).abs() < 1e-5).sum(dim=1) > 1  # another item within 1e-5
    np.testing.assert_array_equal(first["ranks"][~close.numpy()], dense[~close.numpy()])
    assert (~close).sum() > len(close) // 2  # the comparison covers most users
