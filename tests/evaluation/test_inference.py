"""Seed-level inference and multiplicity control on hand-worked inputs."""

import math

import numpy as np
import pytest

from rodpo.evaluation.inference import (
    MIN_SEEDS,
    adjust_family,
    benjamini_hochberg,
    holm,
    paired_t,
    seed_level_comparison,
    sign_flip_exact,
    two_level_bootstrap,
)


def test_sign_flip_four_seeds_all_plus_one_is_two_of_sixteen():
    assert sign_flip_exact([1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 16)


def test_sign_flip_counts_every_pattern_at_least_as_extreme():
    # sums of +-3 +-1 +-1: 5, 3, 3, 1 and their negatives; |sum| >= 3 for 6 of 8 patterns
    assert sign_flip_exact([3.0, -1.0, 1.0]) == pytest.approx(6 / 8)
    assert sign_flip_exact([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)


def test_paired_t_matches_the_closed_form_for_two_degrees_of_freedom():
    t, p = paired_t([1.0, 2.0, 3.0])  # mean 2, sd 1: t = 2 sqrt(3)
    assert t == pytest.approx(2 * math.sqrt(3))
    # t with 2 df: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2))


def test_paired_t_is_undefined_for_identical_differences():
    assert paired_t([0.5, 0.5, 0.5]) == (None, None)


def test_holm_against_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_benjamini_hochberg_against_a_hand_worked_example():
    # sorted p * m / rank = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_adjustments_cap_at_one_and_leave_unavailable_tests_out_of_the_family():
    assert holm([0.6, None, 0.9]) == pytest.approx([1.0, None, 1.0])  # m = 2, not 3
    assert benjamini_hochberg([None, 0.02]) == pytest.approx([None, 0.02])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_adjust_family_adds_both_columns_in_place():
    tests = [{"p_seed": 0.01}, {"p_seed": 0.04}, {"p_seed": None}]
    adjust_family(tests)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.02, 0.04, None])
    assert [t["q_bh"] for t in tests] == pytest.approx([0.02, 0.04, None])


def test_two_level_bootstrap_resamples_seeds_first():
    # users carry no variance, so the interval is the seed-level bootstrap of the means (0, 0, 3):
    # P(all three draws are 0) = 8/27 > 2.5% and P(all are 3) = 1/27 > 2.5%: the CI is [0, 3]
    diffs = [np.zeros(50), np.zeros(50), np.full(50, 3.0)]
    assert two_level_bootstrap(diffs, n_resamples=4000, within_resamples=10) == pytest.approx((0.0, 3.0))


def test_two_level_bootstrap_widens_with_user_noise():
    rng = np.random.default_rng(1)
    quiet = [np.full(400, 0.1) for _ in range(4)]
    noisy = [0.1 + rng.normal(0, 1.0, 400) for _ in range(4)]
    low_q, high_q = two_level_bootstrap(quiet, n_resamples=2000)
    low_n, high_n = two_level_bootstrap(noisy, n_resamples=2000)
    assert low_q == pytest.approx(0.1) and high_q == pytest.approx(0.1)
    assert high_n - low_n > 0.05  # user noise of sd 1 over 4 x 400 users: a CI about 0.1 wide


def test_seed_level_comparison_reports_per_seed_differences_and_tests():
    a = [np.zeros(10) for _ in range(4)]
    b = [np.full(10, v) for v in (1.0, 2.0, 3.0, 2.0)]
    result = seed_level_comparison(a, b, n_resamples=500)
    assert result["per_seed_diff"] == pytest.approx([1.0, 2.0, 3.0, 2.0])
    assert result["mean_diff_seed"] == pytest.approx(2.0)
    assert result["p_signflip"] == pytest.approx(2 / 16)
    assert result["p_seed"] == pytest.approx(paired_t([1.0, 2.0, 3.0, 2.0])[1])
    low, high = result["ci95_seed"]
    assert 1.0 <= low <= 2.0 <= high <= 3.0
    assert result["seed_test_unavailable"] is None


@pytest.mark.parametrize("n_seeds", range(1, MIN_SEEDS))
def test_fewer_than_three_seeds_give_no_p_value(n_seeds):
    a = [np.zeros(5) for _ in range(n_seeds)]
    b = [np.ones(5) for _ in range(n_seeds)]
    result = seed_level_comparison(a, b)
    assert result["p_seed"] is None and result["ci95_seed"] is None and result["p_signflip"] is None
    assert "not available" in result["seed_test_unavailable"] and f"{n_seeds} seed" in result["seed_test_unavailable"]


def test_identical_per_seed_differences_fall_back_on_the_sign_flip():
    a = [np.zeros(5) for _ in range(3)]
    b = [np.ones(5) for _ in range(3)]
    result = seed_level_comparison(a, b, n_resamples=200)
    assert result["p_seed"] == pytest.approx(2 / 8) and "sign-flip" in result["p_seed_note"]


def test_mismatched_seeds_or_users_are_refused():
    with pytest.raises(ValueError, match="same non-zero number of seeds"):
        seed_level_comparison([np.zeros(3)] * 3, [np.zeros(3)] * 2)
    with pytest.raises(ValueError, match="seed 1"):
        seed_level_comparison([np.zeros(3)] * 3, [np.zeros(3), np.zeros(4), np.zeros(3)])
