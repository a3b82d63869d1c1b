"""Nodes of ``evaluation``: adapters over ``rodpo.evaluation``."""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.figure
import numpy as np
import polars as pl

from rodpo.metrics import ranking_metrics
from rodpo.ranking import evaluate_model
from rodpo.evaluation.reports import comparison_table_markdown, logit_distribution_figure, metrics_markdown
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import prepared_model


@dataclass
class EvaluationParams:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    mask_history: bool = False   # RecBole's (and the paper's) protocol leaves history items in
    batch_size: int = 2048
    device: str = "auto"
    logit_sample_k: int = 50     # top-K pool of the Figure 4 negatives
    seed: int = 0
    score_chunk_items: int | str = "auto"  # items per scoring chunk (exact ranks for any value)


def evaluate_recommender(
    model: RoDPOModel,
    sequence_splits: pl.DataFrame,
    item_id_map: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    feature_manifest: dict,
    evaluation: EvaluationParams,
) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    """Validation and test metrics, per-user ranks (for CIs and paired tests) and Figure 4 samples."""
    model, data = prepared_model(model, sequence_splits, item_id_map, item_text_features, item_image_features,
                                 item_image_mask, feature_manifest)
    options = dict(ks=evaluation.ks, batch_size=evaluation.batch_size, device=evaluation.device,
                   mask_history=evaluation.mask_history, chunk_items=evaluation.score_chunk_items,
                   with_history_masked=True)  # the masked protocol as a second column, same pass
    valid = evaluate_model(model, data.valid, **options)
    test = evaluate_model(model, data.test, **options, logit_sample_k=evaluation.logit_sample_k,
                          seed=evaluation.seed)  # ranks and Figure 4's samples from one pass
    samples = test["logit_samples"]
    metrics = {
        "valid": valid["metrics"],
        "test": test["metrics"],
        "valid_history_masked": valid["metrics_history_masked"],
        "test_history_masked": test["metrics_history_masked"],
        "users": int(len(np.unique(test["user_ids"]))),
        "protocol": {"full_ranking": True, "ties": "against target", "mask_history": evaluation.mask_history},
        "model": model.config.to_dict(),
    }
    several = (not np.array_equal(valid["user_ids"], test["user_ids"])
               or len(np.unique(test["user_ids"])) < len(test["user_ids"]))
    if several or any(part["targets"] for part in data.targets_without_history.values()):
        metrics["targets"] = {"valid": int(len(valid["ranks"])), "test": int(len(test["ranks"]))}
        metrics["targets_without_history"] = data.targets_without_history
        for split, sequences, result in (("valid", data.valid, valid), ("test", data.test, test)):
            empty = ~(sequences.items > 0).any(axis=1)  # ranked from an empty history: reported apart
            if empty.any():
                metrics[f"{split}_without_history"] = ranking_metrics(result["ranks"][empty], evaluation.ks)
            if empty.any() and not empty.all():
                metrics[f"{split}_with_history"] = ranking_metrics(result["ranks"][~empty], evaluation.ks)
    return metrics, ranks_table(valid, test, several), pl.DataFrame(samples)


def ranks_table(valid: dict, test: dict, several_targets: bool) -> pl.DataFrame:
    """One row per user (leave-one-out); with several targets per user, one row per user and target
    index (the k-th valid and k-th test target of the user side by side, null where one is missing)."""
    columns = ("user_id", "valid_rank", "test_rank", "valid_rank_history_masked", "test_rank_history_masked")
    if not several_targets:
        return pl.DataFrame({"user_id": test["user_ids"], "valid_rank": valid["ranks"], "test_rank": test["ranks"],
                             "valid_rank_history_masked": valid["ranks_history_masked"],
                             "test_rank_history_masked": test["ranks_history_masked"]})
    split_frames = [
        pl.DataFrame({"user_id": result["user_ids"], f"{split}_rank": result["ranks"],
                      f"{split}_rank_history_masked": result["ranks_history_masked"]})
        .with_columns(pl.int_range(pl.len()).over("user_id").alias("target_index"))
        for split, result in (("valid", valid), ("test", test))
    ]
    joined = split_frames[0].join(split_frames[1], on=["user_id", "target_index"], how="full", coalesce=True)
    return joined.select(*columns, "target_index").sort("user_id", "target_index")


def report_warmup_vs_rodpo(
    warmup_metrics: dict,
    rodpo_metrics: dict,
    warmup_logits: pl.DataFrame,
    rodpo_logits: pl.DataFrame,
    dataset: str,
) -> tuple[str, matplotlib.figure.Figure]:
    """The paper's table layout (warm-up vs RoDPO with relative improvement) and its Figure 4."""
    rows = [("Warm-up (SFT)", warmup_metrics["test"]), ("RoDPO", rodpo_metrics["test"])]
    table = comparison_table_markdown(
        rows,
        metrics=("ndcg@5", "ndcg@10", "ndcg@20", "mrr@5", "mrr@10", "mrr@20", "hit@10"),
        baseline="Warm-up (SFT)",
        title=f"Test, full ranking over all items ({dataset}, {rodpo_metrics['users']:,} users)",
    )
    per_split = metrics_markdown(
        {f"{name} {split}": m[split] for name, m in (("warm-up", warmup_metrics), ("RoDPO", rodpo_metrics))
         for split in ("valid", "test")}
    )
    figure = logit_distribution_figure(
        {
            "Warm-up (SFT)": {"positive": warmup_logits["positive"].to_numpy(),
                              "negative": warmup_logits["negative"].to_numpy()},
            "RoDPO": {"positive": rodpo_logits["positive"].to_numpy(),
                      "negative": rodpo_logits["negative"].to_numpy()},
        },
        title=f"Test logits: positives vs top-K sampled negatives ({dataset})",
    )
    return f"{table}\n\n## All metrics\n\n{per_split}\n", figure
