"""Paired significance tests between two systems evaluated on the same users, and seed summaries.

The p-value comes from the paired sign-flip randomisation (permutation) test: under H0 the two
systems are exchangeable for every user, so each per-user difference is equally likely to have
either sign. It is exact up to Monte-Carlo error and is the test recommended for IR metrics
(Smucker, Allan and Carterette, CIKM 2007). The confidence interval is the paired bootstrap
percentile interval of the mean difference. Both are resampled in chunks of bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

P_VALUE_METHOD = "paired sign-flip permutation test, (hits + 1) / (n_resamples + 1)"
CI_METHOD = "paired bootstrap percentile interval of mean(b - a)"
# Flipped means equal to the observed one up to float rounding must count as "as extreme".
TIE_RELATIVE_TOLERANCE = 1e-9


def _chunk_sizes(n_resamples: int, n: int, max_chunk_elements: int) -> Iterator[int]:
    """Resamples per chunk so that one (chunk, n) draw stays under max_chunk_elements."""
    per_chunk = max(1, max_chunk_elements // n)
    for start in range(0, n_resamples, per_chunk):
        yield min(per_chunk, n_resamples - start)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    max_chunk_elements: int = 2**21,
) -> dict[str, float | int | str]:
    """Compare per-user metric vectors of systems a and b measured on the same users.

    Returns a json-ready dict: n, mean_a, mean_b, mean_diff (b - a), ci_low / ci_high (paired
    bootstrap percentile CI of the mean difference at ``confidence``), p_value (two-sided paired
    sign-flip permutation test), plus the settings and method names. Deterministic for a seed.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"a, b: expected two non-empty 1-D per-user vectors of equal length, got shapes "
            f"{a.shape} and {b.shape}; evaluate both systems on the same users in the same order."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a, b: per-user metrics contain NaN or inf; fix the evaluation first.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1) such as 0.95, got {confidence}.")
    if n_resamples < 1 or max_chunk_elements < 1:
        raise ValueError(
            f"n_resamples={n_resamples}, max_chunk_elements={max_chunk_elements}: "
            "both must be >= 1."
        )

    diff = b - a  # (n,)
    n = diff.size
    observed = diff.mean()
    rng = np.random.default_rng(seed)

    bootstrap_means = np.empty(n_resamples)
    done = 0
    for size in _chunk_sizes(n_resamples, n, max_chunk_elements):
        users = rng.integers(0, n, size=(size, n))  # (size, n) users drawn with replacement
        bootstrap_means[done : done + size] = diff[users].mean(axis=1)
        done += size
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(bootstrap_means, [alpha / 2, 1.0 - alpha / 2])

    threshold = abs(observed) * (1.0 - TIE_RELATIVE_TOLERANCE)
    hits = 0
    for size in _chunk_sizes(n_resamples, n, max_chunk_elements):
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1  # (size, n) of +-1
        flipped_means = signs @ diff / n
        hits += int(np.count_nonzero(np.abs(flipped_means) >= threshold))
    p_value = (hits + 1) / (n_resamples + 1)

    return {
        "n": int(n),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(observed),
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "confidence": float(confidence),
        "p_value": float(p_value),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "ci_method": CI_METHOD,
        "p_value_method": P_VALUE_METHOD,
    }


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over runs, e.g. seeds; std is 0.0 for one run."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("values: expected at least one number (one per run), got none.")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std
