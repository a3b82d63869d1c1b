"""Inference over trained seeds: the seed is the unit of replication, users are within-seed noise.

Two configurations a and b trained on the same seeds are compared through each seed's difference
d_s = mean_u[b_s(u) - a_s(u)] (the seed's two models on the same users). Across seeds:
  p_seed       paired t-test of the d_s (two-sided, S - 1 degrees of freedom): the reported p.
  p_signflip   exact sign-flip (randomisation) test over all 2^S sign patterns of the d_s: free of the
               normality assumption, but its smallest possible value is 2 / 2^S (0.25 at 3 seeds,
               0.0078 at 8), so it is reported beside p_seed as a robustness check, not instead of it.
  ci95_seed    two-level bootstrap (Ren et al. 2010, hierarchical data): resample seeds with
               replacement, then users with replacement within each drawn seed.
Fewer than MIN_SEEDS seeds: no seed-level p or CI ("not available", with the reason), never a number.
Multiplicity over a report's family of tests: Holm's step-down adjusted p (family-wise error) and
Benjamini-Hochberg q (false discovery rate), both monotone and capped at 1.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

MIN_SEEDS = 3
MAX_EXACT_SEEDS = 20          # 2^20 sign patterns; more seeds than this is not a CPU-trained study
SEED_TEST = "paired t-test over seeds (two-sided, S - 1 df) of d_s = mean over users of b_s - a_s"
SIGNFLIP_TEST = "exact sign-flip test over the 2^S sign patterns of the per-seed differences (two-sided)"
SEED_CI = "two-level bootstrap percentile interval: seeds with replacement, then users within each seed"
# Flipped means equal to the observed one up to float rounding count as "as extreme".
_TIE_TOLERANCE = 1e-9


def not_available(n_seeds: int) -> str | None:
    """Why a seed-level test cannot be made, or None when it can."""
    if n_seeds < MIN_SEEDS:
        return (f"not available: {n_seeds} seed(s); a test across seeds needs at least {MIN_SEEDS} "
                "(the trained seed is the unit of replication)")
    return None


def sign_flip_exact(differences: Sequence[float]) -> float:
    """Two-sided exact p: the share of the 2^S sign patterns whose |mean| reaches the observed |mean|.

    All S differences +1 (S = 4) gives 2/16: only the all-plus and all-minus patterns reach it.
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size == 0 or d.size > MAX_EXACT_SEEDS:
        raise ValueError(f"sign_flip_exact: expected 1..{MAX_EXACT_SEEDS} per-seed differences, got {d.size}.")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))  # (2^S, S)
    flipped = np.abs(signs @ d) / d.size
    threshold = abs(d.mean()) * (1.0 - _TIE_TOLERANCE)
    return float(np.count_nonzero(flipped >= threshold) / signs.shape[0])


def paired_t(differences: Sequence[float]) -> tuple[float | None, float | None]:
    """(t, two-sided p) of a one-sample t-test of the differences against 0; (None, None) when every
    difference is the same (zero variance: the t statistic is undefined)."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size < 2:
        raise ValueError(f"paired_t: need at least 2 differences, got {d.size}.")
    sd = d.std(ddof=1)
    if not sd > 0.0:
        return None, None
    t = d.mean() / (sd / math.sqrt(d.size))
    return float(t), float(2.0 * stats.t.sf(abs(t), df=d.size - 1))


@functools.lru_cache(maxsize=64)
def _user_resample_counts(n_users: int, replicate: int, within_resamples: int, seed: int) -> np.ndarray:
    """(within_resamples, n_users) multinomial counts of user resamples for one seed (read-only).

    Keyed by the seed's position, not by the comparison: every comparison of a study reuses them
    (common random numbers; a study's tests cost one matrix product each)."""
    rng = np.random.default_rng([seed, replicate, n_users])
    drawn = rng.integers(0, n_users, size=(within_resamples, n_users))  # users drawn with replacement
    drawn += np.arange(within_resamples)[:, None] * n_users
    counts = np.bincount(drawn.ravel(), minlength=within_resamples * n_users).astype(np.uint16)
    counts = counts.reshape(within_resamples, n_users)
    counts.flags.writeable = False
    return counts


def two_level_bootstrap(per_seed_user_differences: Sequence[np.ndarray], *, confidence: float = 0.95,
                        n_resamples: int = 10_000, within_resamples: int = 1_000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean over seeds of the per-seed mean user difference.

    Level 1 draws S seeds with replacement; level 2 gives each drawn seed the mean of a user
    resample of its own differences. `within_resamples` user resamples are drawn per seed (as
    multinomial counts, so all of them are one matrix product) and each level-1 draw picks one at
    random, so a seed drawn twice gets two independent user resamples.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1) such as 0.95, got {confidence}.")
    if n_resamples < 1 or within_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}, within_resamples={within_resamples}: both must be >= 1.")
    seed_means = []  # per seed: (within_resamples,) means of user resamples
    for index, diff in enumerate(per_seed_user_differences):
        diff = np.asarray(diff, dtype=np.float64).ravel()
        if diff.size == 0 or not np.all(np.isfinite(diff)):
            raise ValueError(f"per_seed_user_differences[{index}]: expected a non-empty finite per-user vector.")
        counts = _user_resample_counts(diff.size, index, within_resamples, seed)
        rows = max(1, 2**22 // diff.size)  # bounded memory: convert a block of resamples at a time
        seed_means.append(np.concatenate([counts[start:start + rows] @ diff
                                          for start in range(0, within_resamples, rows)]) / diff.size)
    if not seed_means:
        raise ValueError("per_seed_user_differences: expected one per-user vector per seed, got none.")
    table = np.stack(seed_means)  # (S, within_resamples)
    n_seeds = table.shape[0]
    rng = np.random.default_rng([seed, n_seeds])
    drawn_seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    drawn_resample = rng.integers(0, within_resamples, size=(n_resamples, n_seeds))
    replicate_means = table[drawn_seeds, drawn_resample].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicate_means, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def seed_level_comparison(per_seed_a: Sequence[np.ndarray], per_seed_b: Sequence[np.ndarray], *,
                          confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """b - a over seeds: per-seed differences, p_seed (paired t), p_signflip, ci95_seed (two-level
    bootstrap). `per_seed_a[s]` and `per_seed_b[s]` are seed s's per-user metric vectors on the same
    users in the same order. With fewer than MIN_SEEDS seeds the test fields are None and
    `seed_test_unavailable` says why."""
    if len(per_seed_a) != len(per_seed_b) or not per_seed_a:
        raise ValueError(f"seed_level_comparison: expected the same non-zero number of seeds for a and b, got "
                         f"{len(per_seed_a)} and {len(per_seed_b)}; compare settings trained on the same seeds.")
    user_diffs = []
    for index, (a, b) in enumerate(zip(per_seed_a, per_seed_b)):
        a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        if a.shape != b.shape or a.size == 0:
            raise ValueError(f"seed {index}: per-user vectors of a and b differ in length ({a.size} vs {b.size}); "
                             "evaluate both settings on the same users.")
        user_diffs.append(b - a)
    per_seed = [float(diff.mean()) for diff in user_diffs]
    result: dict[str, Any] = {"n_seeds": len(per_seed), "per_seed_diff": per_seed,
                              "mean_diff_seed": float(np.mean(per_seed)),
                              "sd_diff_seed": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                              "t_seed": None, "p_seed": None, "p_signflip": None, "ci95_seed": None,
                              "seed_test_unavailable": not_available(len(per_seed))}
    if result["seed_test_unavailable"] is None:
        t, p = paired_t(per_seed)
        result.update(t_seed=t, p_seed=p, p_signflip=sign_flip_exact(per_seed),
                      ci95_seed=list(two_level_bootstrap(user_diffs, confidence=confidence,
                                                         n_resamples=n_resamples, seed=seed)))
        if p is None:  # identical per-seed differences: fall back on the distribution-free test
            result["p_seed"] = result["p_signflip"]
            result["p_seed_note"] = "per-seed differences all equal (t undefined): p_seed is the sign-flip p"
    return result


def _checked(p_values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the available p-values and their values; None (not available) stays out of the family."""
    present = np.array([i for i, p in enumerate(p_values) if p is not None], dtype=np.int64)
    values = np.array([p_values[i] for i in present], dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {list(values)}.")
    return present, values


def _adjusted(p_values: Sequence[float | None], step) -> list[float | None]:
    """`step` applied to the available p-values sorted ascending, mapped back to the input order;
    None (not available) stays None and out of the family's size m."""
    present, values = _checked(p_values)
    adjusted: list[float | None] = [None] * len(p_values)
    if values.size == 0:
        return adjusted
    order = np.argsort(values, kind="stable")
    for index, value in zip(order, np.minimum(1.0, step(values[order], values.size))):
        adjusted[int(present[index])] = float(value)
    return adjusted


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; None stays None.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    return _adjusted(p_values, lambda ranked, m: np.maximum.accumulate((m - np.arange(m)) * ranked))


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values (false discovery rate), in the input order; None stays None.

    Sorted ascending: q_(i) = min_{j >= i} min(1, m p_(j) / j).
    """
    return _adjusted(p_values, lambda ranked, m: np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1])


def adjust_family(tests: Sequence[dict[str, Any]], p_key: str = "p_seed", *, suffix: str = "") -> None:
    """Add `p_holm<suffix>` and `q_bh<suffix>` to every test dict, over the family `tests` (in place);
    tests whose `p_key` is None (not available) get None and stay out of the family's size."""
    p_values = [test.get(p_key) for test in tests]
    for test, p_holm, q_bh in zip(tests, holm(p_values), benjamini_hochberg(p_values)):
        test[f"p_holm{suffix}"], test[f"q_bh{suffix}"] = p_holm, q_bh


def describe(confidence: float, n_resamples: int) -> Mapping[str, Any]:
    """The methods, for a report's `significance` section."""
    return {"unit_of_replication": "trained seed", "p_seed": SEED_TEST, "p_signflip": SIGNFLIP_TEST,
            "ci95_seed": SEED_CI, "confidence": confidence, "n_resamples": n_resamples, "min_seeds": MIN_SEEDS,
            "p_holm": "Holm step-down adjusted p_seed over the report's family of seed-level tests",
            "q_bh": "Benjamini-Hochberg q of p_seed over the same family"}
