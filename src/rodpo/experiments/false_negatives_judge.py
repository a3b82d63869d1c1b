"""Judging sampled losers against a generated world's truth: which ones are false negatives.

The true context of a pair is (user, the step at which y_w was chosen): the item chosen just
before it (observed or not; the trainer only knows the last *observed* one) and the items the user
could still choose then. The generator never lets a user choose an item twice, so the user's
earlier choices are true negatives at that step: the primary definitions (`CHOOSABLE_DEFINITIONS`)
judge only still-choosable items; the study's first reading (`ALL_ITEMS_DEFINITIONS`, every item,
earlier choices included) is kept as a secondary column. A (user, item) pair is chosen at most
once, so the generator's `choices` table gives every context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch
from torch import nn

from rodpo.data.known_preferences import (
    ABOVE_CHOSEN,
    GroundTruth,
    choice_steps,
    choosable_items,
    true_preference_ranks,
    truly_preferred_items,
)
from rodpo.data.preprocess import ITEM, USER
from rodpo.sequences import EvalSequences, SequenceData

# Primary: a loser counts only if the user could still choose it at y_w's step (the generator's rule).
CHOOSABLE_ABOVE = "choosable_above_chosen"            # choosable, true utility above the chosen y_w's
CHOOSABLE_TRUE_TOP = "choosable_true_top"             # choosable, in the true top ceil(q * n_items) of them
CHOOSABLE_UNOBSERVED = "choosable_unobserved_choice"  # chosen at a LATER step, never observed
CHOOSABLE_OBSERVED = "choosable_observed_choice"      # chosen at a later step and observed (a later target)
CHOOSABLE_DEFINITIONS = (CHOOSABLE_ABOVE, CHOOSABLE_TRUE_TOP, CHOOSABLE_UNOBSERVED, CHOOSABLE_OBSERVED)
# Secondary ("all items, incl. earlier choices"): the same readings over every item.
ABOVE = "above_chosen"
TRUE_TOP = "true_top"
UNOBSERVED = "unobserved_choice"  # chosen at some step (earlier or later), never observed
OBSERVED = "observed_choice"      # the user's own observed item of another step (history or a later target)
ALL_ITEMS_DEFINITIONS = (ABOVE, TRUE_TOP, UNOBSERVED, OBSERVED)
FN_DEFINITIONS = CHOOSABLE_DEFINITIONS + ALL_ITEMS_DEFINITIONS
PRIMARY_DEFINITION = CHOOSABLE_ABOVE  # the one the comparisons and the figure use
ALL_ITEMS_LABEL = "all items, incl. earlier choices"
PAIRS = "pairs"
POOL_SEMANTICS = ("none", "earlier_items", "window_items")  # what a stage-2 pool leaves out (pool_exclusion_ids)
SCORE_BATCH = 1024  # test users per dense score_next call (the catalogs are small)


def definitions(top_fraction: float) -> dict[str, str]:
    """What each false-negative key means, for the report's `definitions`."""
    top = f"in the user's true top {top_fraction:.0%} of items"
    return {
        CHOOSABLE_ABOVE: "still choosable at y_w's step, true utility above the chosen item's",
        CHOOSABLE_TRUE_TOP: f"still choosable, {top} (the top taken among the choosable items)",
        CHOOSABLE_UNOBSERVED: "chosen by the user at a later step, never observed",
        CHOOSABLE_OBSERVED: "chosen by the user at a later step and observed (a later target)",
        ABOVE: f"true utility above the chosen item's ({ALL_ITEMS_LABEL})",
        TRUE_TOP: f"{top} ({ALL_ITEMS_LABEL})",
        UNOBSERVED: f"chosen by the user at some step, never observed ({ALL_ITEMS_LABEL})",
        OBSERVED: f"the user's own observed item of another step, history or later target ({ALL_ITEMS_LABEL})",
    }


class FalseNegativeJudge:
    """Which items are false negatives for a (user, chosen y_w) pair, under every `FN_DEFINITIONS`."""

    def __init__(self, truth: GroundTruth, choices: pl.DataFrame, top_fraction: float = 0.1) -> None:
        self.truth, self.top_fraction = truth, float(top_fraction)
        shape = (truth.n_users + 1, truth.n_items + 1)
        users, items, last = (torch.from_numpy(choices.get_column(c).to_numpy().astype(np.int64))
                              for c in (USER, ITEM, "last_item_id"))
        self.previous_choice = torch.full(shape, -1, dtype=torch.int64)  # (users, items): the choice before it
        self.previous_choice[users, items] = last
        self.steps = choice_steps(choices, truth.n_users, truth.n_items)  # (users, items): when it was chosen
        observed = torch.from_numpy(choices.get_column("observed").to_numpy())
        self.unobserved = torch.zeros(shape, dtype=torch.bool)  # chosen but never observed
        self.unobserved[users[~observed], items[~observed]] = True
        self.observed = torch.zeros(shape, dtype=torch.bool)  # chosen and observed: in the user's sequence
        self.observed[users[observed], items[observed]] = True

    def true_last_items(self, users: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The item each user chose just before `chosen` (N,), 0 = none; every pair must be a choice."""
        last = self.previous_choice[users.cpu().long(), chosen.cpu().long()]
        if bool((last < 0).any()):
            raise ValueError("FalseNegativeJudge: some (user, chosen item) pairs were never chosen in this world; "
                             "the judge must come from the world the training data was generated from.")
        return last

    def choosable(self, users: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """(N, n_items + 1) bool: the items each user could still choose at the step `chosen` was chosen."""
        users, chosen = users.cpu().long(), chosen.cpu().long()
        return choosable_items(self.steps, users, self.steps[users, chosen])

    def false_negative_items(self, users: torch.Tensor, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per definition, (N, n_items + 1) bool: the items that would be false negatives as y_l."""
        users, chosen = users.cpu().long(), chosen.cpu().long()
        last, choosable = self.true_last_items(users, chosen), self.choosable(users, chosen)
        unobserved, observed = self.unobserved[users], self.observed[users]
        utilities = self.truth.true_utilities(users, last)  # (N, n_items + 1)
        items = {}
        for mask, suffix in ((None, ""), (choosable, "choosable_")):
            items[f"{suffix}{ABOVE}"] = truly_preferred_items(utilities, chosen, threshold=ABOVE_CHOSEN, choosable=mask)
            items[f"{suffix}{TRUE_TOP}"] = truly_preferred_items(utilities, chosen, threshold=self.top_fraction,
                                                                 choosable=mask)
        items[UNOBSERVED], items[CHOOSABLE_UNOBSERVED] = unobserved, unobserved & choosable
        items[OBSERVED], items[CHOOSABLE_OBSERVED] = observed, observed & choosable
        return {name: items[name] for name in FN_DEFINITIONS}

    def judged(self, users: torch.Tensor, chosen: torch.Tensor, losers: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per definition, (N, M) bool: which sampled losers are false negatives."""
        losers = losers.cpu().long()
        return {name: items.gather(1, losers) for name, items in self.false_negative_items(users, chosen).items()}

    def count(self, users: torch.Tensor, chosen: torch.Tensor, losers: torch.Tensor) -> dict[str, int]:
        """Number of losers (N, M) and of false negatives among them under each definition."""
        return {PAIRS: losers.numel(), **{name: int(mask.sum()) for name, mask in
                                          self.judged(users, chosen, losers).items()}}

    def random_expectation(self, users: torch.Tensor, chosen: torch.Tensor, excluded: torch.Tensor | None = None,
                           chunk: int = 2048) -> dict[str, float]:
        """Expected false-negative rate of the `random` strategy over these targets (one draw each),
        and its standard error: a uniform draw from a target's pool (every real item but y_w and the
        `excluded` ids (N, L), 0-padded) is a false negative with probability
        (false-negative items in the pool) / (pool size), whatever the model."""
        probabilities: dict[str, list[torch.Tensor]] = {name: [] for name in FN_DEFINITIONS}
        for start in range(0, users.numel(), chunk):
            rows = slice(start, start + chunk)
            u, c = users[rows].cpu().long(), chosen[rows].cpu().long()
            pool = torch.ones(u.numel(), self.truth.n_items + 1, dtype=torch.bool)
            if excluded is not None:
                pool.scatter_(1, excluded[rows].cpu().long(), False)
            pool[:, 0] = False
            pool.scatter_(1, c[:, None], False)
            size = pool.sum(dim=1).double()
            for name, items in self.false_negative_items(u, c).items():
                probabilities[name].append((items & pool).sum(dim=1).double() / size)
        result = {}
        for name, parts in probabilities.items():
            p = torch.cat(parts)
            result[name] = float(p.mean())
            result[f"{name}_se"] = float(torch.sqrt((p * (1 - p)).sum()) / max(p.numel(), 1))
        return result


class FalseNegativeMonitor:
    """The trainer's pair monitor: per-step counts (`epoch_rates` reduces them) and, per user, the
    false negatives of the last complete epoch of `steps_per_epoch` steps (for tests over worlds)."""

    def __init__(self, judge: FalseNegativeJudge, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"FalseNegativeMonitor: steps_per_epoch={steps_per_epoch} must be >= 1.")
        self.judge, self.steps_per_epoch = judge, steps_per_epoch
        self.steps: list[dict[str, int]] = []
        size = judge.truth.n_users + 1
        self._epoch = {name: np.zeros(size) for name in (PAIRS, *FN_DEFINITIONS)}
        self.last_epoch_per_user: dict[str, np.ndarray] | None = None  # (n_users + 1,) counts per key

    def __call__(self, *, users: torch.Tensor, last_items: torch.Tensor, chosen: torch.Tensor,
                 losers: torch.Tensor) -> None:
        del last_items  # the last *observed* item; the judge uses the true previous choice
        users = users.cpu().long()
        judged = self.judge.judged(users, chosen, losers)
        self.steps.append({PAIRS: losers.numel(), **{name: int(mask.sum()) for name, mask in judged.items()}})
        per_row = {PAIRS: torch.full((users.numel(),), losers.shape[1]),
                   **{name: mask.sum(dim=1) for name, mask in judged.items()}}
        for name, counts in per_row.items():
            np.add.at(self._epoch[name], users.numpy(), counts.numpy())
        if len(self.steps) % self.steps_per_epoch == 0:
            self.last_epoch_per_user = self._epoch
            self._epoch = {name: np.zeros_like(values) for name, values in self._epoch.items()}


def epoch_rates(steps: Sequence[Mapping[str, int]], steps_per_epoch: int) -> list[dict[str, float]]:
    """Per-epoch rates from per-step counts: consecutive blocks of `steps_per_epoch` steps, each
    definition's false negatives over the epoch's losers (pooled, not a mean of step rates)."""
    if steps_per_epoch < 1 or len(steps) % steps_per_epoch:
        raise ValueError(f"epoch_rates: {len(steps)} monitored steps do not make whole epochs of "
                         f"{steps_per_epoch} steps; was the run resumed from a checkpoint (the monitor "
                         "must see every step)?")
    epochs = []
    for start in range(0, len(steps), steps_per_epoch):
        block = steps[start:start + steps_per_epoch]
        pairs = sum(step[PAIRS] for step in block)
        epochs.append({"epoch": start // steps_per_epoch + 1, PAIRS: pairs,
                       **{name: sum(step[name] for step in block) / max(pairs, 1) for name in FN_DEFINITIONS}})
    return epochs


def per_user_rates(per_user_counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each user's share of an epoch's false negatives, scaled so that the mean over the users with
    pairs is the epoch's pooled rate: x_u = FN_u / (pairs / users). Users in id order; the same
    users and pair counts in every stage-2 run on one world (every target once per epoch)."""
    pairs = per_user_counts[PAIRS]
    has_pairs = pairs > 0
    mean_pairs = pairs[has_pairs].mean()
    return {name: per_user_counts[name][has_pairs] / mean_pairs for name in FN_DEFINITIONS}


def training_targets(data: SequenceData) -> tuple[torch.Tensor, torch.Tensor]:
    """(users (N,), chosen items (N,)) of every supervised training position, the pairs' y_w."""
    items = torch.from_numpy(data.train.items)
    is_target = items[:, 1:] > 0
    users = torch.from_numpy(data.train.user_ids)[:, None].expand_as(is_target)
    return users[is_target], items[:, 1:][is_target]


def pool_exclusion_ids(data: SequenceData, semantics: str) -> torch.Tensor | None:
    """(N, L + 1) item ids, 0-padded, that a stage-2 pool leaves out for each training target (in
    `training_targets` order), besides y_w: none; earlier_items = the items before the target in its
    training window (what the user had interacted with at that step, as far as the data shows);
    window_items = the whole window, later targets included (`rodpo.dpo.exclude_from_pool`)."""
    if semantics not in POOL_SEMANTICS:
        raise ValueError(f"pool_exclusion_ids: semantics={semantics!r}, expected one of {POOL_SEMANTICS}.")
    if semantics == "none":
        return None
    items = torch.from_numpy(data.train.items)  # (windows, L + 1)
    is_target = items[:, 1:] > 0
    window = torch.arange(items.shape[0])[:, None].expand_as(is_target)[is_target]
    excluded = items[window]
    if semantics == "earlier_items":
        position = torch.arange(items.shape[1])
        target_position = position[1:][None, :].expand_as(is_target)[is_target]  # (N,)
        excluded = excluded * (position[None, :] < target_position[:, None])
    return excluded


def truth_ndcg(model: nn.Module, sequences: EvalSequences, judge: FalseNegativeJudge, k: int,
               choosable_only: bool = True) -> np.ndarray:
    """Per-user NDCG@k (N,) of the model's next-item list against the true preference at the held-out
    step, graded by p(i | user, true previous choice); `choosable_only`: only the items the user could
    still choose at that step earn a gain. Dense `score_next`, fine for a small catalog."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values = []
    with torch.inference_mode():
        for start in range(0, len(sequences.targets), SCORE_BATCH):
            rows = slice(start, start + SCORE_BATCH)
            scores = model.score_next(torch.from_numpy(sequences.items[rows]).to(device),
                                      torch.from_numpy(sequences.timestamps[rows]).to(device)).float().cpu()
            users, targets = torch.from_numpy(sequences.user_ids[rows]), torch.from_numpy(sequences.targets[rows])
            choosable = judge.choosable(users, targets) if choosable_only else None
            values.append(true_preference_ranks(scores, users, judge.true_last_items(users, targets), judge.truth,
                                                k=k, choosable=choosable))
    model.train(was_training)
    return torch.cat(values).numpy()


def check_pool_share(share: float, n_items: int, name: str) -> int:
    """K = round(share * n_items) for a K share of the catalog; an error naming `name` when K < 1 or K >= n_items."""
    k = round(share * n_items) if math.isfinite(share) else 0
    if not 1 <= k < n_items:
        raise ValueError(f"{name}={share!r}: K = round({share!r} x {n_items} items) = {k}, but the top-K pool needs "
                         f"1 <= K < n_items; the world is too small for this share: raise generator.n_items or "
                         f"use a share between 1/n_items = {1 / n_items:.4g} and (n_items - 1)/n_items.")
    return k
