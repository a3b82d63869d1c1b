"""The default pipeline on the demo dataset, end to end through KedroSession.

One run (a small demo, tiny epoch counts: the session-scoped `demo_results` fixture) is shared by
the suite: it must produce every catalog output, both trained models must beat an untrained one,
and a rerun must reuse the finished warm-up from its checkpoint instead of training again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rodpo.ranking import evaluate_model
from rodpo.model.assembly import build_model
from rodpo.sequences import build_sequence_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_project(demo_results) -> Path:
    """The project copy in which `__default__` (and `case_study`) already ran on a small demo."""
    return demo_results.project


def _latest(path: Path) -> Path:
    """A versioned dataset's newest file (path/<version>/<name>)."""
    return sorted(path.iterdir())[-1] / path.name


def test_every_layer_is_written_under_the_dataset_name(demo_project):
    expected = [
        "data/01_raw/demo/raw_files.json",
        "data/02_intermediate/demo/raw_interactions.parquet",
        "data/03_primary/demo/interactions.parquet",
        "data/03_primary/demo/items.parquet",
        "data/03_primary/demo/user_id_map.parquet",
        "data/03_primary/demo/item_id_map.parquet",
        "data/03_primary/demo/sequences.parquet",
        "data/04_feature/demo/item_text_features.npy",
        "data/04_feature/demo/item_image_features.npy",
        "data/04_feature/demo/item_image_mask.npy",
        "data/04_feature/demo/feature_manifest.json",
        "data/05_model_input/demo/sequence_splits.parquet",
        "data/06_models/demo/warmup_model.safetensors",
        "data/06_models/demo/rodpo_model.safetensors",
        "data/07_model_output/demo/warmup/metrics.json",
        "data/07_model_output/demo/rodpo/user_ranks.parquet",
        "data/08_reporting/demo/dataset_stats.json",
    ]
    for relative in expected:
        assert (demo_project / relative).exists(), relative
    for report in ("dataset_stats.md", "warmup_vs_rodpo.md", "logit_distribution.png"):
        assert (demo_project / "data/08_reporting/demo" / report).stat().st_size > 0


def test_tables_keep_their_contracts(demo_project):
    splits = pl.read_parquet(_latest(demo_project / "data/05_model_input/demo/sequence_splits.parquet"))
    items = pl.read_parquet(_latest(demo_project / "data/03_primary/demo/items.parquet"))
    text = np.load(_latest(demo_project / "data/04_feature/demo/item_text_features.npy"))
    mask = np.load(_latest(demo_project / "data/04_feature/demo/item_image_mask.npy"))
    stats = json.loads(_latest(demo_project / "data/08_reporting/demo/dataset_stats.json").read_text())

    assert items["item_id"].to_list() == list(range(1, items.height + 1))
    assert text.shape[0] == items.height + 1 and not text[0].any()
    assert not mask[0] and 0 < mask.sum() < items.height  # the demo has items without images
    assert splits.height == stats["users"]
    assert (splits["train_item_ids"].list.len() >= 3).all()  # 5-core leaves >= 5 per user


def test_trained_models_beat_an_untrained_one(demo_project):
    splits = pl.read_parquet(_latest(demo_project / "data/05_model_input/demo/sequence_splits.parquet"))
    features = {
        name: np.load(_latest(demo_project / f"data/04_feature/demo/{name}.npy"))
        for name in ("item_text_features", "item_image_features", "item_image_mask")
    }
    data = build_sequence_data(splits, 50)
    untrained = build_model(data, {}, features["item_text_features"], features["item_image_features"],
                            features["item_image_mask"], seed=0)
    untrained_ndcg = evaluate_model(untrained, data.test)["metrics"]["ndcg@10"]
    for model in ("warmup", "rodpo"):
        metrics = json.loads(_latest(demo_project / f"data/07_model_output/demo/{model}/metrics.json").read_text())
        assert metrics["test"]["ndcg@10"] > 2 * untrained_ndcg, (model, metrics["test"], untrained_ndcg)
        assert metrics["protocol"]["mask_history"] is False


def test_rerun_reuses_the_finished_warmup(demo_project, demo_results, kedro_runner, trainer_log):
    with trainer_log() as messages:
        kedro_runner(demo_project, ["warmup"], demo_results.params)
    text = "\n".join(messages)
    assert "finished run found" in text
    assert "warmup epoch 1:" not in text
