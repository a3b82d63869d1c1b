"""Nodes of ``case_study``: an adapter over ``rodpo.evaluation.case_study``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from rodpo.evaluation.case_study import build_case_study, case_study_markdown
from rodpo.evaluation.recommend import DEFAULT_BATCH_SIZE, top_n_items
from rodpo.model.encoder import RoDPOModel
from rodpo.model.assembly import prepared_model


@dataclass
class CaseStudyParams:
    top_k: int = 5                  # length of each model's list (Figure 5 shows a top-5)
    history_len: int = 5            # most recent history items shown
    n_rodpo_wins: int = 3           # users with the target in RoDPO's top-k but not the warm-up's
    n_counter_examples: int = 1     # and the other way round
    seed: int = 0
    mask_history: bool = False      # as in evaluation: the paper's protocol keeps history items rankable
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"


def report_case_study(
    warmup_model: RoDPOModel,
    rodpo_model: RoDPOModel,
    sequence_splits: pl.DataFrame,
    items: pl.DataFrame,
    user_id_map: pl.DataFrame,
    item_text_features: np.ndarray,
    item_image_features: np.ndarray,
    item_image_mask: np.ndarray,
    case_study: CaseStudyParams,
    dataset: str,
) -> str:
    """Top-k of both models for every test user, then a markdown report on a few seeded picks."""
    top_lists, exclude = {}, None
    for name, model in (("warmup", warmup_model), ("rodpo", rodpo_model)):
        model, data = prepared_model(model, sequence_splits, items, item_text_features, item_image_features,
                                     item_image_mask, model_name=f"the {name} model")
        test = data.test
        if case_study.mask_history and exclude is None:
            exclude = histories_of_test_users(sequence_splits, test.user_ids)
        top_lists[name], _ = top_n_items(model, test.items, test.timestamps, top_n=case_study.top_k,
                                         exclude=exclude, batch_size=case_study.batch_size,
                                         device=case_study.device)
    target = test.targets
    warmup_hit = (top_lists["warmup"] == target[:, None]).any(axis=1)
    rodpo_hit = (top_lists["rodpo"] == target[:, None]).any(axis=1)
    users = build_case_study(
        test.user_ids, test.items, target, top_lists["warmup"], top_lists["rodpo"],
        history_len=case_study.history_len, n_rodpo_wins=case_study.n_rodpo_wins,
        n_counter_examples=case_study.n_counter_examples, seed=case_study.seed,
    )
    return case_study_markdown(
        users,
        item_titles=_display_titles(items),
        original_user_ids=dict(zip(user_id_map["user_id"].to_list(), user_id_map["original_user_id"].to_list())),
        dataset=dataset,
        total_users=len(target),
        rodpo_only_hits=int((rodpo_hit & ~warmup_hit).sum()),
        warmup_only_hits=int((warmup_hit & ~rodpo_hit).sum()),
    )


def histories_of_test_users(sequence_splits: pl.DataFrame, user_ids: np.ndarray) -> pl.Series:
    """Each test row's whole input history (train + valid items), aligned with the rows: one per user
    under leave-one-out, one per (user, target) with several targets."""
    valid = "valid_item_id" if "valid_item_id" in sequence_splits.columns else "valid_item_ids"
    histories = sequence_splits.select("user_id", pl.concat_list("train_item_ids", valid).alias("history"))
    rows = pl.DataFrame({"user_id": user_ids}, schema={"user_id": histories.schema["user_id"]})
    return rows.join(histories, on="user_id", how="left", maintain_order="left").get_column("history")


def _display_titles(items: pl.DataFrame) -> list[str]:
    """Index i = item id i (0 = padding); an item without a title shows its original id."""
    titles = items.sort("item_id").select(
        pl.when(pl.col("title").str.strip_chars() != "").then("title").otherwise("original_item_id")
    ).to_series().to_list()
    return ["", *titles]
