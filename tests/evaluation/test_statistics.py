"""Paired bootstrap CI / sign-flip p-value and the seed summary helper."""

import json

import numpy as np
import pytest

from rodpo.evaluation.statistics import mean_std, paired_bootstrap

N_USERS = 400
FAST = 2_000  # resamples for tests that do not need the default precision


@pytest.fixture
def per_user_ndcg():
    rng = np.random.default_rng(123)
    return rng.uniform(0.0, 1.0, size=N_USERS)


def test_identical_systems_give_zero_difference_and_p_one(per_user_ndcg):
    result = paired_bootstrap(per_user_ndcg, per_user_ndcg.copy(), n_resamples=FAST)
    assert result["mean_diff"] == 0.0
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert result["p_value"] == 1.0
    assert result["n"] == N_USERS


def test_clearly_shifted_system_is_significant(per_user_ndcg):
    noise = np.random.default_rng(7).normal(0.0, 0.05, size=N_USERS)
    better = per_user_ndcg + 0.05 + noise
    result = paired_bootstrap(per_user_ndcg, better, n_resamples=FAST)
    assert result["mean_diff"] == pytest.approx(np.mean(better - per_user_ndcg))
    assert result["ci_low"] > 0.0
    assert result["ci_low"] < result["mean_diff"] < result["ci_high"]
    assert result["p_value"] < 0.01
    # b - a, not a - b: swapping the systems flips the sign of the difference and the interval
    swapped = paired_bootstrap(better, per_user_ndcg, n_resamples=FAST)
    assert swapped["ci_high"] < 0.0
    assert swapped["mean_diff"] == pytest.approx(-result["mean_diff"])


def test_p_value_matches_the_exact_sign_flip_distribution():
    # 5 users, all differences +1: only all-plus and all-minus flips are as extreme -> p = 2 / 2**5
    result = paired_bootstrap(np.zeros(5), np.ones(5), n_resamples=20_000)
    assert result["p_value"] == pytest.approx(2 / 32, abs=0.01)


def test_interval_matches_the_normal_approximation_for_many_users():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=2_000)
    b = a + rng.normal(0.1, 1.0, size=2_000)
    result = paired_bootstrap(a, b, n_resamples=FAST)
    diff = b - a
    half_width = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert result["ci_low"] == pytest.approx(diff.mean() - half_width, abs=0.2 * half_width)
    assert result["ci_high"] == pytest.approx(diff.mean() + half_width, abs=0.2 * half_width)


def test_same_seed_is_identical_and_other_seeds_are_close(per_user_ndcg):
    b = per_user_ndcg + np.random.default_rng(1).normal(0.01, 0.1, size=N_USERS)
    first = paired_bootstrap(per_user_ndcg, b, n_resamples=FAST, seed=3)
    again = paired_bootstrap(per_user_ndcg, b, n_resamples=FAST, seed=3)
    other = paired_bootstrap(per_user_ndcg, b, n_resamples=FAST, seed=4)
    assert first == again
    assert (first["ci_low"], first["ci_high"], first["p_value"]) != (
        other["ci_low"],
        other["ci_high"],
        other["p_value"],
    )
    width = first["ci_high"] - first["ci_low"]
    assert other["ci_low"] == pytest.approx(first["ci_low"], abs=0.1 * width)
    assert other["ci_high"] == pytest.approx(first["ci_high"], abs=0.1 * width)
    assert other["p_value"] == pytest.approx(first["p_value"], abs=0.05)


def test_small_chunks_give_the_same_kind_of_answer(per_user_ndcg):
    # one resample per chunk exercises the chunking path
    shifted = per_user_ndcg + 0.1
    result = paired_bootstrap(per_user_ndcg, shifted, n_resamples=300, max_chunk_elements=1)
    assert result["ci_low"] == pytest.approx(0.1)
    assert result["ci_high"] == pytest.approx(0.1)
    assert result["p_value"] == pytest.approx(1 / 301)


def test_result_is_json_serialisable(per_user_ndcg):
    result = paired_bootstrap(per_user_ndcg, per_user_ndcg, n_resamples=10)
    assert json.loads(json.dumps(result)) == result


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([0.1, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.zeros(3), np.zeros(3), confidence=95)


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std(np.array([0.05])) == (0.05, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])
