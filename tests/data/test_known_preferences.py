import math

import numpy as np
import polars as pl
import pytest
import torch

from rodpo.data.known_preferences import (
    NOT_CHOSEN,
    GroundTruth,
    KnownPreferenceSpec,
    choice_steps,
    choosable_items,
    false_negative_rate,
    generate_known_preferences,
    observation_probabilities,
    true_preference_ranks,
    truly_preferred_items,
)
from rodpo.data.preprocess import build_sequences, leave_one_out_split

SMALL = KnownPreferenceSpec(n_users=60, n_items=50, n_factors=3, min_seq_len=4, max_seq_len=8, exposure=0.5,
                            n_clusters=5, seed=3)


def fixed_truth(item_utilities: list[float], n_users: int = 1, temperature: float = 1.0) -> GroundTruth:
    """Every user, whatever the last item, has utility item_utilities[i - 1] for item i."""
    n_items = len(item_utilities)
    return GroundTruth(user_factors=np.zeros((n_users + 1, 1)), item_factors=np.zeros((n_items + 1, 1)),
                       item_bias=np.array([0.0, *item_utilities]), item_cluster=np.zeros(n_items + 1, dtype=int),
                       cluster_affinity=np.zeros((1, 1)), transition_weight=0.0, temperature=temperature)


@pytest.fixture(scope="module")
def small_data():
    return generate_known_preferences(SMALL)


def test_same_seed_same_data_other_seed_other_data(small_data):
    again = generate_known_preferences(SMALL)
    assert again.interactions.equals(small_data.interactions)
    assert again.choices.equals(small_data.choices)
    np.testing.assert_array_equal(again.truth.user_factors, small_data.truth.user_factors)
    np.testing.assert_array_equal(again.truth.cluster_affinity, small_data.truth.cluster_affinity)
    other = generate_known_preferences(KnownPreferenceSpec(**{**SMALL.__dict__, "seed": 4}))
    assert not other.interactions.equals(small_data.interactions)


def test_interactions_have_the_primary_schema_and_split_cleanly(small_data):
    interactions = small_data.interactions
    assert interactions.schema == pl.Schema({"user_id": pl.Int32, "item_id": pl.Int32, "timestamp": pl.Int64})
    assert interactions.get_column("user_id").unique().sort().to_list() == list(range(1, SMALL.n_users + 1))
    assert interactions.get_column("item_id").min() >= 1 and interactions.get_column("item_id").max() <= SMALL.n_items
    assert interactions.select(pl.struct("user_id", "item_id").is_duplicated().any()).item() is False
    per_user = interactions.group_by("user_id").agg(pl.len(), (pl.col("timestamp").diff() <= 0).any().alias("tie"))
    assert per_user.get_column("len").min() >= SMALL.min_seq_len
    assert per_user.get_column("len").max() <= SMALL.max_seq_len
    assert not per_user.get_column("tie").any()  # strictly increasing time within a user
    assert interactions.equals(interactions.sort("user_id", "timestamp"))
    splits = leave_one_out_split(build_sequences(interactions))  # the pipeline's own steps accept it
    assert splits.height == SMALL.n_users


def test_observed_share_of_choices_is_the_exposure():
    spec = KnownPreferenceSpec(n_users=400, n_items=300, min_seq_len=5, max_seq_len=10, exposure=0.3, seed=1)
    data = generate_known_preferences(spec)
    # ~10,000 choices: the binomial standard error of the share is ~0.005; 0.03 is a 6-sigma band.
    assert data.observation_rate == pytest.approx(0.3, abs=0.03)
    assert data.interactions.height == data.choices.get_column("observed").sum()
    assert int(data.unobserved_positives().sum()) == data.choices.height - data.interactions.height
    everything = generate_known_preferences(KnownPreferenceSpec(**{**spec.__dict__, "exposure": 1.0}))
    assert everything.observation_rate == 1.0
    assert not everything.unobserved_positives().any()


def test_choices_follow_the_true_utilities():
    # At a vanishing temperature every choice is the best not-yet-chosen item given the last one.
    spec = KnownPreferenceSpec(n_users=20, n_items=40, min_seq_len=4, max_seq_len=6, exposure=0.6,
                               temperature=1e-9, seed=5)
    data = generate_known_preferences(spec)
    for user, rows in data.choices.group_by("user_id", maintain_order=True):
        chosen_before: list[int] = []
        for item, last in rows.select("item_id", "last_item_id").iter_rows():
            assert last == (chosen_before[-1] if chosen_before else 0)
            utilities = data.true_utilities([user[0]], [last])[0]
            utilities[chosen_before] = -math.inf
            assert item == int(utilities.argmax())
            chosen_before.append(item)


def test_true_utilities_shape_padding_and_sequential_term(small_data):
    utilities = small_data.true_utilities(torch.tensor([1, 2, 2]), torch.tensor([0, 0, 7]))
    assert utilities.shape == (3, SMALL.n_items + 1) and utilities.dtype == torch.float64
    assert torch.isneginf(utilities[:, 0]).all() and torch.isfinite(utilities[:, 1:]).all()
    assert not torch.equal(utilities[1], utilities[2])  # the last item changes the next item's utility
    flat = generate_known_preferences(KnownPreferenceSpec(**{**SMALL.__dict__, "transition_weight": 0.0}))
    no_sequence = flat.true_utilities([2, 2], [0, 7])
    torch.testing.assert_close(no_sequence[0], no_sequence[1])
    with pytest.raises(ValueError, match=r"user_ids: ids must be in 1\.\.60"):
        small_data.true_utilities([0], [0])
    with pytest.raises(ValueError, match=r"last_items: ids must be in 0\.\.50"):
        small_data.true_utilities([1], [51])


# Items 1..6 with true utilities 3.0, 1.0, 2.5, -1.0, 0.5, 2.0: the true order is 1 > 3 > 6 > 2 > 5 > 4, so the
# number of items above each chosen item is {1: 0, 2: 3, 3: 1, 4: 5, 5: 4, 6: 2}.
SIX_UTILITIES = [3.0, 1.0, 2.5, -1.0, 0.5, 2.0]
SIX_CHOSEN = [2, 4, 1, 6, 2, 5]  # items above: 3 + 5 + 0 + 2 + 3 + 4 = 17 of 6 rows x 5 other items
SIX_RANDOM_FN = 17 / 30
SIX_RANDOM_FN_TOP_HALF = 16 / 30  # top half = {1, 3, 6}; per row |{1, 3, 6} - {chosen}| = 3, 3, 2, 2, 3, 3


def test_false_negative_rate_of_random_negatives_matches_its_expectation():
    truth = fixed_truth(SIX_UTILITIES)
    chosen = torch.tensor(SIX_CHOSEN)
    users, last = torch.ones(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)
    # Exactly: every other item once per row is the uniform distribution over losers, enumerated.
    every_other = torch.stack([torch.tensor([i for i in range(1, 7) if i != c]) for c in SIX_CHOSEN])  # (6, 5)
    assert false_negative_rate(every_other, chosen, users, last, truth) == pytest.approx(SIX_RANDOM_FN, abs=1e-12)
    assert false_negative_rate(every_other, chosen, users, last, truth, threshold=0.5) == pytest.approx(
        SIX_RANDOM_FN_TOP_HALF, abs=1e-12)
    # By sampling: 12,000 uniform draws; binomial standard error <= 0.0046, tolerance 0.025 (> 5 sigma).
    repeats = 2000
    chosen_many = chosen.repeat(repeats)
    draw = torch.randint(1, 6, chosen_many.shape, generator=torch.Generator().manual_seed(0))  # 1..5
    losers = (draw + (draw >= chosen_many).long()).unsqueeze(1)  # uniform over the 5 items != chosen
    rate = false_negative_rate(losers, chosen_many, users.repeat(repeats), last.repeat(repeats), truth)
    assert rate == pytest.approx(SIX_RANDOM_FN, abs=0.025)


def test_a_sampler_that_knows_the_truth_has_no_false_negatives(small_data):
    rows = small_data.choices
    users = torch.tensor(rows.get_column("user_id").to_list())
    last = torch.tensor(rows.get_column("last_item_id").to_list())
    chosen = torch.tensor(rows.get_column("item_id").to_list())
    utilities = small_data.true_utilities(users, last)
    below = utilities < utilities.gather(1, chosen.unsqueeze(1))
    below[:, 0] = False
    keep = below.any(dim=1)  # rows whose chosen item is not the user's worst
    oracle = torch.multinomial(below[keep].double(), 2, generator=torch.Generator().manual_seed(0))
    assert false_negative_rate(oracle, chosen[keep], users[keep], last[keep], small_data.truth) == 0.0
    # Contrast: the truly hardest item (best non-chosen) is a false negative whenever the choice was not the top.
    hardest = utilities.scatter(1, chosen.unsqueeze(1), -math.inf).argmax(dim=1, keepdim=True)
    uniform = torch.multinomial(torch.ones(len(chosen), SMALL.n_items).scatter(1, chosen.unsqueeze(1) - 1, 0.0), 1,
                                generator=torch.Generator().manual_seed(0)) + 1
    hard_rate = false_negative_rate(hardest, chosen, users, last, small_data.truth)
    assert hard_rate == pytest.approx((utilities.argmax(dim=1) != chosen).double().mean().item())
    assert hard_rate > false_negative_rate(uniform, chosen, users, last, small_data.truth) > 0.0


def test_false_negative_rate_rejects_bad_inputs():
    truth = fixed_truth(SIX_UTILITIES)
    args = (torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="threshold='above'"):
        false_negative_rate(torch.tensor([[2]]), *args, truth, threshold="above")
    with pytest.raises(ValueError, match="threshold=1.5"):
        false_negative_rate(torch.tensor([[2]]), *args, truth, threshold=1.5)
    with pytest.raises(ValueError, match=r"sampled_losers item ids must be in 1\.\.6 \(0 is padding\)"):
        false_negative_rate(torch.tensor([[0]]), *args, truth)
    with pytest.raises(ValueError, match=r"expected sampled_losers \(N, M\)"):
        false_negative_rate(torch.tensor([2]), *args, truth)


def test_true_ndcg_by_hand():
    # Utilities ln 3, ln 2, 0 at temperature 1: true choice probabilities (gains) 1/2, 1/3, 1/6.
    # Model list [3, 1] at k = 2: DCG = 1/6 + (1/2) / log2(3) = 0.482132; ideal [1, 2]: 1/2 + (1/3) / log2(3)
    # = 0.710310; NDCG@2 = 0.678762.
    truth = fixed_truth([math.log(3), math.log(2), 0.0])
    users, last = torch.tensor([1]), torch.tensor([0])
    ndcg = true_preference_ranks(torch.tensor([[3, 1]]), users, last, truth, k=2)
    torch.testing.assert_close(ndcg, torch.tensor([0.678762], dtype=torch.float64), atol=1e-6, rtol=0)
    scores = torch.tensor([[9.0, 0.5, -1.0, 2.0]])  # column 0 (padding) is ignored: list [3, 1]
    torch.testing.assert_close(true_preference_ranks(scores, users, last, truth, k=2), ndcg)


def test_true_ndcg_of_the_truth_is_one_and_exclusion_applies_to_both_lists(small_data):
    users, last = torch.tensor([1, 5, 9]), torch.tensor([0, 3, 12])
    utilities = small_data.true_utilities(users, last).float()
    torch.testing.assert_close(true_preference_ranks(utilities, users, last, small_data.truth),
                               torch.ones(3, dtype=torch.float64))
    exclude = torch.zeros_like(utilities, dtype=torch.bool).scatter(1, utilities.argmax(dim=1, keepdim=True), True)
    torch.testing.assert_close(true_preference_ranks(utilities, users, last, small_data.truth, exclude=exclude),
                               torch.ones(3, dtype=torch.float64))
    assert (true_preference_ranks(-utilities, users, last, small_data.truth) < 0.5).all()
    with pytest.raises(ValueError, match=r"k=0 must be in 1\.\.n_items=50"):
        true_preference_ranks(utilities, users, last, small_data.truth, k=0)


@pytest.mark.parametrize(("field", "value"), [
    ("n_users", 0), ("n_items", 1), ("n_factors", 0), ("min_seq_len", 2), ("max_seq_len", 3),
    ("max_seq_len", 500), ("exposure", 0.0), ("exposure", 1.5), ("temperature", 0.0), ("n_clusters", 0),
    ("n_clusters", 51), ("popularity_scale", -1.0), ("transition_weight", math.inf), ("exposure_bias", "views"),
])
def test_bad_spec_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"KnownPreferenceSpec\.{field}="):
        KnownPreferenceSpec(**{**SMALL.__dict__, field: value})


def test_a_catalog_too_small_for_the_exposure_says_what_to_change():
    spec = KnownPreferenceSpec(n_users=20, n_items=6, min_seq_len=5, max_seq_len=6, exposure=0.2, n_clusters=2)
    with pytest.raises(ValueError, match=r"chose all n_items=6 items.*raise n_items or exposure, or lower max_seq_len"):
        generate_known_preferences(spec)


def test_choosable_items_follow_the_generators_rule(small_data):
    """At every step the generator's choice is among the choosable items, and no earlier choice is."""
    steps = choice_steps(small_data.choices, SMALL.n_users, SMALL.n_items)
    rows = small_data.choices
    users, items, at_step = (torch.tensor(rows.get_column(c).to_list()) for c in ("user_id", "item_id", "step"))
    choosable = choosable_items(steps, users, at_step)
    assert choosable.gather(1, items[:, None]).all()  # the item chosen at a step is choosable at it
    assert not choosable[:, 0].any()
    for user, step in ((1, 0), (1, 3), (7, 5)):
        earlier = rows.filter((pl.col("user_id") == user) & (pl.col("step") < step)).get_column("item_id").to_list()
        mask = choosable_items(steps, torch.tensor([user]), torch.tensor([step]))[0]
        assert not mask[earlier].any()  # never an item chosen at an earlier step, observed or not
        assert int(mask.sum()) == SMALL.n_items - len(earlier)
    assert int(steps[1, 0]) == NOT_CHOSEN


def test_choosable_definitions_never_count_an_earlier_choice():
    # Utilities 3, 2, 1, 0 for items 1..4. The user chose 1 (step 0), then 3 (step 1): judged at step 1,
    # item 1 is above the chosen 3 but was chosen earlier, so it is no false negative; 2 still is.
    truth = fixed_truth([3.0, 2.0, 1.0, 0.0])
    steps = torch.full((2, 5), NOT_CHOSEN, dtype=torch.int64)
    steps[1, 1], steps[1, 3] = 0, 1
    users, chosen, last = torch.tensor([1]), torch.tensor([3]), torch.tensor([1])
    choosable = choosable_items(steps, users, torch.tensor([1]))
    assert choosable[0].tolist() == [False, False, True, True, True]
    utilities = truth.true_utilities(users, last)
    assert truly_preferred_items(utilities, chosen)[0].tolist() == [False, True, True, False, False]
    assert truly_preferred_items(utilities, chosen, choosable=choosable)[0].tolist() == [
        False, False, True, False, False]
    # true top 50% = 2 items: {1, 2} over every item; {2, 3} among the choosable ones
    assert truly_preferred_items(utilities, chosen, threshold=0.5)[0].tolist() == [False, True, True, False, False]
    assert truly_preferred_items(utilities, chosen, threshold=0.5, choosable=choosable)[0].tolist() == [
        False, False, True, True, False]
    assert false_negative_rate(torch.tensor([[1], [2]]), chosen.repeat(2), users.repeat(2), last.repeat(2), truth,
                               choosable=choosable.repeat(2, 1)) == 0.5


def test_true_ndcg_gives_no_gain_to_items_the_user_cannot_choose():
    # Gains 1/2, 1/3, 1/6 (utilities ln 3, ln 2, 0). Item 1 was chosen earlier: only items 2, 3 earn a gain,
    # so the list [1, 2] at k = 2 scores (1/3) / log2(3) over the ideal [2, 3]: 1/3 + (1/6) / log2(3).
    truth = fixed_truth([math.log(3), math.log(2), 0.0])
    users, last = torch.tensor([1]), torch.tensor([0])
    choosable = torch.tensor([[False, False, True, True]])
    ndcg = true_preference_ranks(torch.tensor([[1, 2]]), users, last, truth, k=2, choosable=choosable)
    expected = (1 / 3) / math.log2(3) / (1 / 3 + (1 / 6) / math.log2(3))
    torch.testing.assert_close(ndcg, torch.tensor([expected], dtype=torch.float64))


def test_observation_probabilities_by_hand():
    # weights 1, 1, 2 at exposure 0.5: c = 1.5 / 4 gives 0.375, 0.375, 0.75 (mean 0.5, none capped).
    np.testing.assert_allclose(observation_probabilities(np.array([1.0, 1.0, 2.0]), 0.5), [0.375, 0.375, 0.75])
    # weights 1, 1, 10 at exposure 0.6: item 3 is capped at 1, the other two share 1.8 - 1 = 0.8 -> 0.4 each.
    np.testing.assert_allclose(observation_probabilities(np.array([1.0, 10.0, 1.0]), 0.6), [0.4, 1.0, 0.4])
    np.testing.assert_allclose(observation_probabilities(np.array([3.0, 1.0]), 1.0), [1.0, 1.0])
    weights = np.exp(np.random.default_rng(0).normal(size=500))
    probabilities = observation_probabilities(weights, 0.3)
    assert probabilities.mean() == pytest.approx(0.3) and probabilities.max() <= 1.0
    assert np.all(np.diff(probabilities[np.argsort(weights)]) >= -1e-12)  # grows with the weight
    with pytest.raises(ValueError, match="weights must be a non-empty 1-D array"):
        observation_probabilities(np.array([1.0, 0.0]), 0.5)


def test_popularity_biased_exposure_keeps_the_rate_and_observes_popular_items_more():
    spec = KnownPreferenceSpec(n_users=400, n_items=300, min_seq_len=5, max_seq_len=10, exposure=0.3, seed=1,
                               exposure_bias="popularity")
    data = generate_known_preferences(spec)
    assert data.observation_rate == pytest.approx(0.3, abs=0.03)  # the same 6-sigma band as uniform
    choices = data.choices.with_columns(pl.col("item_id").map_elements(lambda i: data.truth.item_bias[i],
                                                                       return_dtype=pl.Float64).alias("bias"))
    median = choices.get_column("bias").median()
    popular = choices.filter(pl.col("bias") > median).get_column("observed").mean()
    rare = choices.filter(pl.col("bias") <= median).get_column("observed").mean()
    assert popular > rare + 0.1
    uniform = generate_known_preferences(KnownPreferenceSpec(**{**spec.__dict__, "exposure_bias": "uniform"}))
    np.testing.assert_array_equal(uniform.truth.item_bias, data.truth.item_bias)  # the same truth
