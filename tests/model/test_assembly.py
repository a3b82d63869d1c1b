"""build_model sizes the model by the features it gets: no dead branch for an absent modality."""

import math

import numpy as np
import pytest
import torch

from rodpo.model.assembly import build_model
from rodpo.training.trainer import TrainConfig, train

MODEL = dict(hidden_size=16, inner_size=32, n_heads=2, moe_mode="sparse", temporal=True)


def _features(data, text_dim=4):
    rng = np.random.default_rng(0)
    text = rng.standard_normal((data.n_items + 1, text_dim)).astype(np.float32)
    text[0] = 0
    no_image = np.zeros((data.n_items + 1, 0), dtype=np.float32)  # image modality off
    return text, no_image, np.zeros(data.n_items + 1, dtype=bool)


@pytest.mark.parametrize("requested, expected", [(["id", "text", "image"], ("id", "text")),
                                                 (["text"], ("text",)), (["text", "image"], ("text",))])
def test_absent_images_and_a_left_out_id_leave_no_parameters_behind(planted_data, requested, expected):
    text, image, mask = _features(planted_data)
    model = build_model(planted_data, {**MODEL, "modalities": requested}, text, image, mask, seed=0)
    assert model.config.modalities == expected and model.config.image_dim is None
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if "image" in name]
    assert ("item_embedding.weight" in names) == ("id" in expected)


def test_no_usable_modality_is_an_error_that_says_what_to_do(planted_data):
    text, image, mask = _features(planted_data)
    with pytest.raises(ValueError, match=r"model\.modalities=\['image'\].*Add id to model\.modalities"):
        build_model(planted_data, {**MODEL, "modalities": ["image"]}, text, image, mask)


def test_a_text_only_model_trains_with_a_finite_loss(planted_data):
    text, image, mask = _features(planted_data)
    model = build_model(planted_data, {**MODEL, "modalities": ["text"], "max_seq_len": planted_data.max_seq_len},
                        text, image, mask, seed=0)
    before = model.projections["text"].weight.detach().clone()
    trained, history = train(model, planted_data, TrainConfig(epochs=1, batch_size=64, progress_bar=False,
                                                              eval_batch_size=256, device="cpu"))
    assert math.isfinite(history[-1]["loss"]) and history[-1]["loss"] > 0
    assert not torch.equal(trained.projections["text"].weight, before)  # it learned through the text branch
    assert trained.item_embedding is None
