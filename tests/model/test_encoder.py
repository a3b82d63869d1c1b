import json

import pytest
import torch
import torch.nn.functional as F

from rodpo.model import ModelConfig, RoDPOModel

N_ITEMS, TEXT_DIM, IMAGE_DIM = 12, 5, 4


def _model(**overrides) -> RoDPOModel:
    torch.manual_seed(0)
    values = dict(n_items=N_ITEMS, hidden_size=8, max_seq_len=6, inner_size=16, text_dim=TEXT_DIM,
                  image_dim=IMAGE_DIM, time_min=0, time_max=10**6)
    values.update(overrides)
    model = RoDPOModel(ModelConfig(**values))
    image_mask = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    image_mask[[3, 7]] = False
    model.set_item_features(torch.randn(N_ITEMS + 1, TEXT_DIM), torch.randn(N_ITEMS + 1, IMAGE_DIM), image_mask)
    return model


ITEMS = torch.tensor([[1, 3, 5, 2, 0, 0], [4, 7, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
TIMES = torch.tensor([[10, 4000, 90000, 90000, 0, 0], [5, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_changing_a_future_item_leaves_earlier_positions_unchanged():
    model = _model().eval()
    states, _ = model.encode(ITEMS, TIMES)
    changed = ITEMS.clone()
    changed[0, 2] = 9
    changed_states, _ = model.encode(changed, TIMES)
    torch.testing.assert_close(changed_states[0, :2], states[0, :2])
    assert not torch.allclose(changed_states[0, 2], states[0, 2])


def test_padding_only_rows_and_missing_images_produce_no_nan():
    model = _model().train()
    states, aux_loss = model.encode(ITEMS, TIMES)
    scores = model.score_next(ITEMS, TIMES)
    assert torch.isfinite(states).all() and torch.isfinite(aux_loss)
    assert torch.isfinite(scores[:, 1:]).all()
    assert torch.isneginf(scores[:, 0]).all()  # padding never wins


def test_features_of_an_item_without_image_change_nothing():
    model = _model().eval()
    before = model.score_next(ITEMS, TIMES)
    model.image_features[3] = 1000.0  # item 3 is in a history and is a candidate, but has no image
    after = model.score_next(ITEMS, TIMES)
    torch.testing.assert_close(after, before)
    model.image_features[5] = 1000.0  # item 5 has an image: now scores must move
    assert not torch.allclose(model.score_next(ITEMS, TIMES), before)


def test_item_logits_match_the_full_score_row():
    model = _model().eval()
    states, _ = model.encode(ITEMS, TIMES)
    last = states[:, 1]
    full = model.all_item_logits(last)
    chosen = torch.tensor([[1, 4], [12, 3], [7, 7]])
    torch.testing.assert_close(model.item_logits(last, chosen), full.gather(1, chosen))


def test_every_parameter_is_registered_and_trained():
    model = _model().train()
    states, aux_loss = model.encode(ITEMS, TIMES)
    is_real = ITEMS > 0
    targets = torch.tensor([2, 6, 8, 9, 4, 11])[: int(is_real.sum())]
    loss = F.cross_entropy(model.all_item_logits(states[is_real]), targets) + aux_loss
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    names = set(model.state_dict())
    assert "refinement.block.experts.3.fc_out.weight" in names and "temporal.experts.3.0.weight" in names
    assert "text_features" not in names  # frozen features stay out of checkpoints


def test_state_dict_round_trip_through_json_config():
    model = _model().eval()
    config = ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    rebuilt = RoDPOModel(config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.set_item_features(model.text_features, model.image_features, model.image_mask)
    torch.testing.assert_close(rebuilt.eval().score_next(ITEMS, TIMES), model.score_next(ITEMS, TIMES))


@pytest.mark.parametrize("moe_mode,temporal", [("none", False), ("mlp", True)])
def test_id_only_variants_run_without_features(moe_mode, temporal):
    model = RoDPOModel(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_seq_len=6, inner_size=16,
                                   modalities=("id",), moe_mode=moe_mode, temporal=temporal))
    scores = model.eval().score_next(ITEMS, TIMES)
    assert scores.shape == (3, N_ITEMS + 1) and torch.isfinite(scores[:, 1:]).all()


def test_an_id_only_scoring_table_is_the_embedding_itself_not_a_copy():
    model = RoDPOModel(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_seq_len=6, inner_size=16, modalities=("id",)))
    assert model.scoring_table() is model.item_embedding.weight  # no (I+1, d) copy per call
    several = _model()
    assert several.scoring_table().shape == (N_ITEMS + 1, 8 * len(several.modalities))


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="text_dim"):
        ModelConfig(n_items=5, modalities=("id", "text"))
    with pytest.raises(ValueError, match="one or more of"):
        ModelConfig(n_items=5, modalities=())
    model = RoDPOModel(ModelConfig(n_items=5, modalities=("id", "text"), text_dim=3, hidden_size=8, n_heads=2))
    with pytest.raises(RuntimeError, match="set_item_features"):
        model.score_next(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]))


@pytest.mark.parametrize("modalities", [("text",), ("id", "text")])
def test_models_without_images_carry_no_image_parameters(modalities):
    model = _model(modalities=modalities, image_dim=None)
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if "image" in name]
    assert "projections.text.weight" in names and "modality_weights.text" in names
    assert any(name.startswith("refinement.") for name in names)  # the sparse MoE is there
    assert ("item_embedding.weight" in names) == ("id" in modalities)
    assert set(model.encoders) == set(modalities)
    assert model.image_features is None and model.image_mask is None


def test_a_text_only_model_scores_and_round_trips_through_safetensors(tmp_path):
    from rodpo.datasets import TorchModelDataset

    model = _model(modalities=("text",), image_dim=None).eval()
    scores = model.score_next(ITEMS, TIMES)
    assert scores.shape == (3, N_ITEMS + 1) and torch.isfinite(scores[:, 1:]).all()
    dataset = TorchModelDataset(filepath=str(tmp_path / "m.safetensors"))
    dataset.save(model)
    loaded = dataset.load()
    assert loaded.config.modalities == ("text",) and loaded.item_embedding is None
    assert set(loaded.state_dict()) == set(model.state_dict())
    loaded.set_item_features(text=model.text_features)
    torch.testing.assert_close(loaded.eval().score_next(ITEMS, TIMES), scores)
