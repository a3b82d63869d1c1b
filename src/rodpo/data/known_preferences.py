"""A synthetic dataset whose users' true preferences are known, to measure false negatives exactly.

Every user has a ground-truth utility for every item given the last item they chose:

    utility(u, last, i) = <U_u, V_i> / sqrt(F) + b_i + w * A[c(last), c(i)]

with user and item factors U, V ~ N(0, I_F), an item popularity bias b ~ N(0, popularity_scale^2),
items in clusters c(i) and a cluster-to-cluster transition affinity A ~ N(0, 1) weighted by
w = transition_weight (no sequential term before the first choice). At each step the user *chooses*
i ~ p(i | u, last) = softmax(utility / temperature) over the items not chosen yet (the generator's
rule: a user never chooses the same item twice, so at a step the earlier choices are true
negatives; `choosable_items` applies the same rule), but the choice is *observed* only with a
probability whose mean is `exposure` (`exposure_bias`: the same for every choice, or growing with
the item's popularity). The observed choices are the interactions a model trains on; the unobserved
ones are true positives missing from the data (false negatives), in a known, controllable amount.
Unobserved choices still move the user on (they are the `last` item).

The observed table has the schema of ``data/03_primary/<ds>/interactions.parquet`` (user_id int32
and item_id int32 in 1..N with 0 = padding, timestamp int64, sorted by user then time, no repeated
pair), so ``build_sequences`` and ``leave_one_out_split`` take it as is. Item ids are the truth's:
a rare item may never be observed, so pass ``n_items=spec.n_items`` to ``build_sequence_data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from rodpo.data.preprocess import ID_DTYPE, ITEM, MIN_SEQUENCE_LENGTH, TIME, TIME_DTYPE, USER

DAY_S = 86_400
ABOVE_CHOSEN = "above_chosen"
EXPOSURE_BIASES = ("uniform", "popularity")
NOT_CHOSEN = np.iinfo(np.int64).max  # the step of an item the user never chose: choosable at every step


@dataclass(frozen=True)
class KnownPreferenceSpec:
    """Size and shape of the synthetic world; `min_seq_len`..`max_seq_len` count *observed* items."""

    n_users: int = 500
    n_items: int = 200
    n_factors: int = 4
    min_seq_len: int = 5
    max_seq_len: int = 20
    exposure: float = 0.5  # mean probability that a choice is observed (the observation rate)
    # uniform: every choice is observed with probability `exposure`. popularity: within each step of
    # the walk, a choice of item i is observed with probability min(1, c * exp(b_i)) (b_i the item's
    # popularity bias), c set so that the mean over that step's choices is `exposure`
    # (`observation_probabilities`): popular items are observed more often, the observed share of
    # choices stays `exposure`, and exposure 1.0 observes everything.
    exposure_bias: str = "uniform"
    temperature: float = 1.0  # of the choice softmax; lower = users follow their top item more closely
    seed: int = 0
    n_clusters: int = 10
    popularity_scale: float = 1.0  # std of the item bias b_i
    transition_weight: float = 1.0  # w of the first-order (last item -> next item) cluster term
    start_timestamp: int = 1_500_000_000  # unix seconds of the earliest possible first choice

    def __post_init__(self) -> None:
        checks = [
            ("n_users", self.n_users >= 1, "need at least one user"),
            ("n_items", self.n_items >= 2, "need at least two items (a winner and a loser)"),
            ("n_factors", self.n_factors >= 1, "need at least one latent dimension"),
            ("min_seq_len", self.min_seq_len >= MIN_SEQUENCE_LENGTH,
             f"every user needs >= {MIN_SEQUENCE_LENGTH} observed items for the leave-one-out split"),
            ("max_seq_len", self.max_seq_len >= self.min_seq_len, f"must be >= min_seq_len={self.min_seq_len}"),
            ("max_seq_len", self.max_seq_len <= self.n_items,
             f"a user cannot observe more than n_items={self.n_items} distinct items"),
            ("exposure", 0.0 < self.exposure <= 1.0, "must be in (0, 1]: the share of choices that is observed"),
            ("exposure_bias", self.exposure_bias in EXPOSURE_BIASES, f"expected one of {EXPOSURE_BIASES}"),
            ("temperature", self.temperature > 0.0 and math.isfinite(self.temperature), "must be > 0 and finite"),
            ("n_clusters", 1 <= self.n_clusters <= self.n_items, f"must be in 1..n_items={self.n_items}"),
            ("popularity_scale", self.popularity_scale >= 0.0, "must be >= 0 (a standard deviation)"),
            ("transition_weight", math.isfinite(self.transition_weight), "must be finite"),
        ]
        for field, ok, why in checks:
            if not ok:
                raise ValueError(f"KnownPreferenceSpec.{field}={getattr(self, field)!r}: {why}.")


@dataclass(frozen=True)
class GroundTruth:
    """The true utility model; ids index rows directly (row 0 of users and items is padding)."""

    user_factors: np.ndarray  # (n_users + 1, F)
    item_factors: np.ndarray  # (n_items + 1, F)
    item_bias: np.ndarray  # (n_items + 1,)
    item_cluster: np.ndarray  # (n_items + 1,) int
    cluster_affinity: np.ndarray  # (n_clusters, n_clusters)
    transition_weight: float
    temperature: float

    @property
    def n_users(self) -> int:
        return self.user_factors.shape[0] - 1

    @property
    def n_items(self) -> int:
        return self.item_factors.shape[0] - 1

    def _utilities(self, users: np.ndarray, last_items: np.ndarray) -> np.ndarray:
        """(B, n_items + 1) float64 utilities; column 0 = -inf. The generator and the metrics both use this."""
        n_factors = self.user_factors.shape[1]
        utilities = self.user_factors[users] @ self.item_factors.T / math.sqrt(n_factors) + self.item_bias
        transition = self.cluster_affinity[self.item_cluster[last_items]][:, self.item_cluster]  # (B, n_items + 1)
        utilities = utilities + self.transition_weight * transition * (last_items > 0)[:, None]
        utilities[:, 0] = -np.inf
        return utilities

    def true_utilities(self, user_ids, last_items) -> torch.Tensor:
        """utility(u, last, i) for every item, (B, n_items + 1) float64 on the CPU; column 0 = -inf.

        `last_items` = 0 means no previous item (no sequential term). Accepts tensors, arrays or lists.
        """
        users = _as_ids("user_ids", user_ids, 1, self.n_users)
        last = _as_ids("last_items", last_items, 0, self.n_items)
        if users.shape != last.shape:
            raise ValueError(f"user_ids {users.shape} and last_items {last.shape}: expected one last item per user.")
        return torch.from_numpy(self._utilities(users, last))

    def true_choice_probabilities(self, user_ids, last_items) -> torch.Tensor:
        """p(i | u, last) = softmax(utility / temperature), (B, n_items + 1); column 0 = 0.

        Over the whole catalog: the generator also removes the items a user already chose.
        """
        return torch.softmax(self.true_utilities(user_ids, last_items) / self.temperature, dim=1)


@dataclass(frozen=True)
class KnownPreferenceData:
    """Observed interactions, every latent choice (observed or not) and the truth behind them."""

    spec: KnownPreferenceSpec
    interactions: pl.DataFrame  # observed only: user_id, item_id, timestamp (03_primary schema)
    choices: pl.DataFrame  # every choice: user_id, step, item_id, last_item_id, timestamp, observed
    truth: GroundTruth

    def true_utilities(self, user_ids, last_items) -> torch.Tensor:
        """See `GroundTruth.true_utilities`."""
        return self.truth.true_utilities(user_ids, last_items)

    @property
    def observation_rate(self) -> float:
        """Observed choices / all choices; close to `spec.exposure`."""
        return self.interactions.height / self.choices.height

    def unobserved_positives(self) -> torch.Tensor:
        """(n_users + 1, n_items + 1) bool: the user chose the item but it is not in `interactions`."""
        mask = torch.zeros(self.truth.n_users + 1, self.truth.n_items + 1, dtype=torch.bool)
        hidden = self.choices.filter(~pl.col("observed"))
        users, items = (hidden.get_column(c).to_numpy().astype(np.int64) for c in (USER, ITEM))
        mask[users, items] = True
        return mask


def choice_steps(choices: pl.DataFrame, n_users: int, n_items: int) -> torch.Tensor:
    """(n_users + 1, n_items + 1) int64: the step at which each user chose each item, `NOT_CHOSEN`
    where they never did (padding row and column included). A (user, item) pair is chosen at most once."""
    steps = torch.full((n_users + 1, n_items + 1), NOT_CHOSEN, dtype=torch.int64)
    users, items, step = (torch.from_numpy(choices.get_column(c).to_numpy().astype(np.int64))
                          for c in (USER, ITEM, "step"))
    steps[users, items] = step
    return steps


def choosable_items(steps: torch.Tensor, users: torch.Tensor, at_step: torch.Tensor) -> torch.Tensor:
    """(N, n_items + 1) bool: the items user `users[n]` could still choose at step `at_step[n]`, by the
    generator's rule (every real item not chosen at an earlier step, observed or not; the item chosen
    at that step itself included). `steps` is `choice_steps`' matrix; column 0 (padding) is False."""
    users, at_step = users.cpu().long(), at_step.cpu().long()
    choosable = steps[users] >= at_step[:, None]  # chosen at this step or later, or never
    choosable[:, 0] = False
    return choosable


def _as_ids(name: str, ids, low: int, high: int) -> np.ndarray:
    """1-D int64 numpy ids in low..high, from a tensor, array or list."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array of ids, got {ids.dtype} {ids.shape}.")
    if ids.size and (ids.min() < low or ids.max() > high):
        raise ValueError(f"{name}: ids must be in {low}..{high}, got min {ids.min()}, max {ids.max()}.")
    return ids.astype(np.int64)


def _draw_truth(spec: KnownPreferenceSpec, rng: np.random.Generator) -> GroundTruth:
    user_factors = rng.standard_normal((spec.n_users + 1, spec.n_factors))
    item_factors = rng.standard_normal((spec.n_items + 1, spec.n_factors))
    item_bias = rng.normal(0.0, spec.popularity_scale, size=spec.n_items + 1)
    item_cluster = np.concatenate([[0], rng.permutation(np.arange(spec.n_items) % spec.n_clusters)])
    cluster_affinity = rng.standard_normal((spec.n_clusters, spec.n_clusters))
    user_factors[0], item_factors[0], item_bias[0] = 0.0, 0.0, 0.0  # padding rows
    return GroundTruth(user_factors, item_factors, item_bias, item_cluster, cluster_affinity,
                       float(spec.transition_weight), float(spec.temperature))


def generate_known_preferences(spec: KnownPreferenceSpec) -> KnownPreferenceData:
    """Draw the truth, then walk every user until `target length` choices are observed; same seed, same data.

    Choices are drawn all users at a time with the Gumbel-max trick over the not-yet-chosen items.
    """
    rng = np.random.default_rng(spec.seed)
    truth = _draw_truth(spec, rng)
    target_length = rng.integers(spec.min_seq_len, spec.max_seq_len + 1, size=spec.n_users + 1)
    first_day = rng.integers(0, 365, size=spec.n_users + 1)
    chosen_before = np.zeros((spec.n_users + 1, spec.n_items + 1), dtype=bool)
    chosen_before[:, 0] = True  # never choose padding
    last_item = np.zeros(spec.n_users + 1, dtype=np.int64)
    n_observed = np.zeros(spec.n_users + 1, dtype=np.int64)
    columns: dict[str, list[np.ndarray]] = {c: [] for c in (USER, "step", ITEM, "last_item_id", TIME, "observed")}

    active = np.arange(1, spec.n_users + 1)
    step = 0
    while active.size:
        if step == spec.n_items:
            raise ValueError(
                f"KnownPreferenceSpec: {active.size} user(s) chose all n_items={spec.n_items} items before "
                f"min_seq_len..max_seq_len={spec.min_seq_len}..{spec.max_seq_len} of them were observed "
                f"(exposure={spec.exposure}); raise n_items or exposure, or lower max_seq_len.")
        logits = truth._utilities(active, last_item[active]) / spec.temperature
        logits[chosen_before[active]] = -np.inf
        choice = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # ~ softmax over unchosen items
        if spec.exposure_bias == "popularity":
            observed = rng.random(active.size) < observation_probabilities(np.exp(truth.item_bias[choice]),
                                                                           spec.exposure)
        else:
            observed = rng.random(active.size) < spec.exposure
        timestamp = spec.start_timestamp + (first_day[active] + step) * DAY_S
        for name, values in ((USER, active), ("step", np.full(active.size, step)), (ITEM, choice),
                             ("last_item_id", last_item[active]), (TIME, timestamp), ("observed", observed)):
            columns[name].append(values)
        chosen_before[active, choice] = True
        last_item[active] = choice
        n_observed[active] += observed
        active = active[n_observed[active] < target_length[active]]
        step += 1

    choices = pl.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()}).with_columns(
        pl.col(USER, ITEM, "last_item_id").cast(ID_DTYPE), pl.col("step").cast(pl.Int32), pl.col(TIME).cast(TIME_DTYPE),
    ).sort(USER, "step")
    interactions = choices.filter(pl.col("observed")).select(USER, ITEM, TIME)
    return KnownPreferenceData(spec, interactions, choices, truth)


def observation_probabilities(weights: np.ndarray, exposure: float) -> np.ndarray:
    """p_j = min(1, c * w_j) with c >= 0 such that mean(p) = exposure: observation probabilities
    proportional to the weights w (> 0) below the cap of 1, whose mean is exactly `exposure`.

    Water-filling: with w sorted descending, the first j items are capped at 1 and the rest share
    exposure * n - j in proportion to their weights; j is the smallest count that keeps them <= 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"observation_probabilities: weights must be a non-empty 1-D array of finite values > 0, "
                         f"got shape {w.shape}.")
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"observation_probabilities: exposure={exposure} must be in (0, 1].")
    n = w.size
    if exposure >= 1.0:
        return np.ones(n)
    order = np.argsort(-w, kind="stable")
    sorted_w = w[order]
    capped = np.arange(n)  # j items capped at 1
    rest = np.cumsum(sorted_w[::-1])[::-1]  # sum of w over the uncapped items j..n-1
    scale = (exposure * n - capped) / rest
    j = int(np.argmax((scale * sorted_w <= 1.0) & (exposure * n - capped > 0)))  # the first valid j exists
    probabilities = np.empty(n)
    probabilities[order] = np.minimum(1.0, scale[j] * sorted_w)
    return probabilities


def truly_preferred_items(utilities: torch.Tensor, chosen, *, threshold: str | float = ABOVE_CHOSEN,
                          choosable: torch.Tensor | None = None) -> torch.Tensor:
    """(N, n_items + 1) bool: the items user n truly prefers, i.e. would be false negatives as losers
    against `chosen[n]`, from `true_utilities` (N, n_items + 1) of each row's context; column 0 is False.

    threshold="above_chosen": true utility strictly above the chosen (winning) item's;
    threshold=q in (0, 1]: among the user's true top ceil(q * n_items) items.
    `choosable` (N, n_items + 1) bool (`choosable_items`): judge only the items the user could still
    choose at that step (the others are never preferred, and the true top is taken among the
    choosable items). None: every item, the user's earlier choices included.
    """
    chosen = torch.as_tensor(chosen).detach().cpu().long()
    if chosen.shape != utilities.shape[:1]:
        raise ValueError(f"truly_preferred_items: expected one chosen item per row ({utilities.shape[0]},), "
                         f"got {tuple(chosen.shape)}.")
    if choosable is not None:
        if choosable.shape != utilities.shape:
            raise ValueError(f"truly_preferred_items: choosable must be (N, n_items + 1) = {tuple(utilities.shape)}, "
                             f"got {tuple(choosable.shape)}.")
        utilities = utilities.masked_fill(~choosable.cpu(), -torch.inf)
    if threshold == ABOVE_CHOSEN:
        preferred = utilities > utilities.gather(1, chosen.unsqueeze(1))
    elif isinstance(threshold, float) and 0.0 < threshold <= 1.0:
        top_n = math.ceil(threshold * (utilities.shape[1] - 1))
        cutoff = utilities[:, 1:].topk(top_n, dim=1).values[:, -1:]  # (N, 1) the top_n-th utility (-inf: fewer left)
        preferred = utilities >= cutoff
    else:
        raise ValueError(f"false_negative_rate: threshold={threshold!r}; expected {ABOVE_CHOSEN!r} or a top "
                         "fraction q in (0, 1] (a float, e.g. 0.1 for the user's true top 10%).")
    return preferred & (utilities > -torch.inf)  # never padding, never an item the user could not choose


def false_negative_rate(sampled_losers, chosen, users, last_items, truth: GroundTruth, *,
                        threshold: str | float = ABOVE_CHOSEN, choosable: torch.Tensor | None = None) -> float:
    """Share of sampled losers (N, M) that the user truly prefers (see `truly_preferred_items`)."""
    losers = torch.as_tensor(sampled_losers).detach().cpu().long()
    chosen = torch.as_tensor(chosen).detach().cpu().long()
    if chosen.dim() != 1 or losers.dim() != 2 or losers.shape[0] != chosen.shape[0]:
        raise ValueError(f"false_negative_rate: expected sampled_losers (N, M) and chosen (N,), got "
                         f"{tuple(losers.shape)} and {tuple(chosen.shape)}.")
    for name, ids in (("sampled_losers", losers), ("chosen", chosen)):
        if ids.numel() and (ids.min() < 1 or ids.max() > truth.n_items):
            raise ValueError(f"false_negative_rate: {name} item ids must be in 1..{truth.n_items} (0 is padding), "
                             f"got min {int(ids.min())}, max {int(ids.max())}.")
    preferred = truly_preferred_items(truth.true_utilities(users, last_items), chosen, threshold=threshold,
                                      choosable=choosable)
    return preferred.gather(1, losers).double().mean().item()


def true_preference_ranks(scores_or_ranking: torch.Tensor, users, last_items, truth: GroundTruth, *,
                          k: int = 10, exclude: torch.Tensor | None = None,
                          choosable: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row NDCG@k (N,) of a model's top-k list against the true preference in (user, last item).

    Graded relevance of item i = its true choice probability p(i | u, last); the ideal list is the
    true top-k. Input: float scores (N, n_items + 1) (column 0 ignored, ties broken by `topk`), or
    an int64 ranking (N, L) of item ids, best first (0 = empty slot). `exclude` (N, n_items + 1)
    bool drops items (e.g. the history) from both the model's list and the ideal one. `choosable`
    (N, n_items + 1) bool (`choosable_items`): only the items the user could still choose earn a
    gain (the generator's choice distribution at that step); the model's list may still hold the
    others, and they earn nothing.
    """
    if not 1 <= k <= truth.n_items:
        raise ValueError(f"true_preference_ranks: k={k} must be in 1..n_items={truth.n_items}.")
    gains = truth.true_choice_probabilities(users, last_items)  # (N, n_items + 1), column 0 = 0
    if choosable is not None:
        gains = gains.masked_fill(~choosable.cpu(), 0.0)
    if exclude is not None:
        gains = gains.masked_fill(exclude.cpu(), 0.0)
    if scores_or_ranking.is_floating_point():
        if scores_or_ranking.shape != gains.shape:
            raise ValueError(f"scores: expected shape {tuple(gains.shape)} (every item for every row), "
                             f"got {tuple(scores_or_ranking.shape)}.")
        scores = scores_or_ranking.detach().cpu().double().clone()
        scores[:, 0] = -torch.inf
        if exclude is not None:
            scores = scores.masked_fill(exclude.cpu(), -torch.inf)
        top_items = scores.topk(k, dim=1).indices
    else:
        top_items = scores_or_ranking.detach().cpu().long()[:, :k]
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))  # (k,)
    dcg = (gains.gather(1, top_items) * discount[: top_items.shape[1]]).sum(dim=1)
    ideal_dcg = (gains.topk(k, dim=1).values * discount).sum(dim=1)
    return dcg / ideal_dcg
