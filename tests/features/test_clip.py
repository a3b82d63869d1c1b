import numpy as np
import polars as pl
import pytest
from PIL import Image

from rodpo.features.clip import (
    DEMO_ARCH,
    build_random_clip_checkpoint,
    encode_images,
    extract_image_features,
    load_clip_image_encoder,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_random_clip_checkpoint(tmp_path_factory.mktemp("clip") / "demo.safetensors", DEMO_ARCH, seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, color in [("red", (220, 20, 20)), ("blue", (20, 20, 220))]:
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (100, 80), color).save(paths[name])
    paths["corrupt"] = folder / "corrupt.jpg"
    paths["corrupt"].write_bytes(b"\xff\xd8\xff not really a jpeg")
    return paths


def test_random_checkpoint_is_deterministic(checkpoint, tmp_path):
    same = build_random_clip_checkpoint(tmp_path / "same.safetensors", DEMO_ARCH, seed=0)
    other = build_random_clip_checkpoint(tmp_path / "other.safetensors", DEMO_ARCH, seed=1)
    assert same.read_bytes() == checkpoint.read_bytes()
    assert other.read_bytes() != checkpoint.read_bytes()


def test_local_checkpoint_reloads_to_identical_features(checkpoint, images):
    paths = [images["red"], None, images["corrupt"], images["blue"]]
    first_model, preprocess = load_clip_image_encoder(DEMO_ARCH, pretrained=checkpoint, device="cpu")
    features, ok = encode_images(paths, first_model, preprocess, batch_size=2, show_progress=False)
    second_model, preprocess = load_clip_image_encoder(DEMO_ARCH, pretrained=str(checkpoint), device="cpu")
    again, ok_again = encode_images(paths, second_model, preprocess, batch_size=3, show_progress=False)

    assert features.shape == (4, 64) and features.dtype == np.float32
    assert ok.tolist() == [True, False, False, True]  # missing and corrupt are masked, not fatal
    # Batch size 2 against 3: another GEMM shape may round the last bits differently, so compare
    # the unit-norm vectors with a tolerance (1e-5), not bit for bit.
    np.testing.assert_allclose(again, features, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ok_again, ok)
    np.testing.assert_allclose(np.linalg.norm(features[ok], axis=1), 1.0, atol=1e-5)  # L2-normalised
    assert not features[~ok].any()
    assert not np.allclose(features[0], features[3])  # different pictures, different vectors


def test_unknown_arch_and_missing_checkpoint_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="list_models"):
        load_clip_image_encoder("No-Such-ViT", pretrained=None)
    with pytest.raises(RuntimeError, match="local file path"):
        load_clip_image_encoder(DEMO_ARCH, pretrained=str(tmp_path / "absent.safetensors"))


def test_extract_lines_rows_up_with_item_ids(checkpoint, images, tmp_path):
    items = pl.DataFrame({
        "item_id": pl.Series([1, 2, 3], dtype=pl.Int32),
        "image_url": pl.Series([images["red"].as_uri(), None, str(images["blue"])], dtype=pl.String),
    })
    features, mask, manifest = extract_image_features(items, arch=DEMO_ARCH, pretrained=checkpoint,
                                                      cache_dir=tmp_path / "cache", device="cpu",
                                                      show_progress=False)
    model, preprocess = load_clip_image_encoder(DEMO_ARCH, pretrained=checkpoint)
    expected, _ = encode_images([images["red"], images["blue"]], model, preprocess, show_progress=False)

    assert features.shape == (4, 64) and mask.dtype == bool
    assert mask.tolist() == [False, True, False, True]  # row 0 padding, item 2 has no image
    assert not features[0].any() and not features[2].any()
    np.testing.assert_allclose(features[[1, 3]], expected, atol=1e-6)
    assert manifest["items_with_image"] == 2 and manifest["image_failures"] == {"no_url": 1}
    assert manifest["image_dim"] == 64 and manifest["image_checkpoint"] == str(checkpoint)


def test_building_the_demo_random_checkpoint_warns_of_nothing(tmp_path, caplog):
    """open_clip's "initialized randomly" warning is the demo's purpose, not news: it is dropped there only."""
    import logging

    with caplog.at_level(logging.WARNING):
        build_random_clip_checkpoint(tmp_path / "quiet.safetensors", DEMO_ARCH, seed=0)
        load_clip_image_encoder(DEMO_ARCH, pretrained=None)
        logging.getLogger().warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    assert [record.getMessage()[:38] for record in caplog.records] == ["No pretrained weights loaded for model"]
