"""Report artefacts in the paper's layout: markdown metric tables and the logit KDE figure.

Functions return strings and figures; the Kedro catalog writes them to 08_reporting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from rodpo.metrics import HISTORY_MASKED
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

PAPER_METRICS: tuple[str, ...] = ("ndcg@5", "ndcg@10", "mrr@5", "mrr@10")
METRIC_LABELS = {"ndcg": "NDCG", "mrr": "MRR", "hit": "Hit"}
MISSING = "—"
# Paper Figure 4: positives (y_w) in green, sampled negatives (y_l) in red.
SERIES_COLORS = {"positive": "tab:green", "negative": "tab:red"}
# Half-width of the x-range when every logit in the figure has the same value.
CONSTANT_HALF_RANGE = 1.0


def metric_label(key: str) -> str:
    """'ndcg@5' -> 'NDCG@5', as in the paper's table headers; 'ndcg@5:masked' -> 'NDCG@5 (masked)'."""
    if key.endswith(HISTORY_MASKED):
        return f"{metric_label(key.removesuffix(HISTORY_MASKED))} (masked)"
    name, _, cutoff = key.partition("@")
    label = METRIC_LABELS.get(name.lower(), name)
    return f"{label}@{cutoff}" if cutoff else label


def relative_improvement(baseline: float, value: float) -> float:
    """(value - baseline) / baseline in percent; NaN when the baseline is 0 or not finite."""
    if not (math.isfinite(baseline) and math.isfinite(value)) or baseline == 0:
        return math.nan
    return 100.0 * (value - baseline) / baseline


def _format_value(value: float | None, decimals: int) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{decimals}f}"


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], title: str) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return "\n".join(lines) + "\n"


def comparison_table_markdown(
    rows: list[tuple[str, dict[str, float]]],
    metrics: Sequence[str] = PAPER_METRICS,
    baseline: str | None = None,
    title: str = "",
    *,
    decimals: int = 4,
) -> str:
    """One row per model (paper Tables 1-3), plus an 'Improv.' row when ``baseline`` is named.

    Improv. is the relative change of the LAST row over the ``baseline`` row, e.g. RoDPO over the
    warm-up model, in percent with sign ("+5.25%"), computed from unrounded values. Missing or
    non-finite values print as an em dash.
    """
    if not rows:
        raise ValueError("rows: expected at least one (model name, metrics) pair, got none.")
    names = [name for name, _ in rows]
    header = ["Model", *(metric_label(key) for key in metrics)]
    body = [
        [name, *(_format_value(values.get(key), decimals) for key in metrics)]
        for name, values in rows
    ]
    if baseline is not None:
        if baseline not in names:
            raise ValueError(
                f"baseline: {baseline!r} is not one of the table rows {names}; pass a row name."
            )
        if names.index(baseline) == len(names) - 1:
            raise ValueError(
                f"baseline: {baseline!r} is the last row, so Improv. would compare it with itself; "
                "put the model being improved (e.g. RoDPO) last."
            )
        base_values = dict(rows)[baseline]
        last_values = rows[-1][1]
        improvements = []
        for key in metrics:
            base, last = base_values.get(key), last_values.get(key)
            gain = math.nan if base is None or last is None else relative_improvement(base, last)
            improvements.append(MISSING if math.isnan(gain) else f"{gain:+.2f}%")
        body.append(["Improv.", *improvements])
    return _markdown_table(header, body, title)


def metrics_markdown(metrics: Mapping[str, Mapping[str, float]], *, decimals: int = 4) -> str:
    """Per-split metrics: rows 'valid', 'test', ...; columns the metric keys, first-seen order."""
    if not metrics:
        raise ValueError("metrics: expected {split: {metric: value}}, got an empty mapping.")
    columns = list(dict.fromkeys(key for values in metrics.values() for key in values))
    header = ["Split", *(metric_label(key) for key in columns)]
    body = [
        [split, *(_format_value(values.get(key), decimals) for key in columns)]
        for split, values in metrics.items()
    ]
    return _markdown_table(header, body, title="")


def _finite(values) -> np.ndarray:
    """Finite float64 values of an array or a (possibly CUDA / grad) tensor, flattened."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _draw_density(ax, name: str, values: np.ndarray, grid: np.ndarray, bins: int,
                  min_kde_samples: int) -> None:
    """KDE of one logit series on ``grid``; histogram when a KDE is undefined (constant / tiny)."""
    color = SERIES_COLORS.get(name.lower())
    label = f"{name} (n={values.size})"
    if values.size == 0:
        ax.plot([], [], color=color, label=f"{name} (no data)")
        return
    if values.size >= min_kde_samples and np.ptp(values) > 0:
        try:
            density = gaussian_kde(values)(grid)
        except np.linalg.LinAlgError:  # near-singular data despite a non-zero spread
            density = None
        if density is not None and np.all(np.isfinite(density)):
            ax.plot(grid, density, color=color, label=label)
            ax.fill_between(grid, density, color=color, alpha=0.2)
            return
    ax.hist(values, bins=bins, range=(grid[0], grid[-1]), density=True, color=color, alpha=0.4,
            label=f"{label}, histogram")


def logit_distribution_figure(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    title: str = "",
    min_kde_samples: int = 3,
    grid_points: int = 400,
    histogram_bins: int = 40,
    range_padding: float = 0.05,
    panel_size: tuple[float, float] = (4.5, 3.5),
) -> Figure:
    """Paper Figure 4: density of positive (green) vs sampled-negative (red) logits per model.

    ``panels`` maps a panel title (e.g. "Warm-up (SFT)", "RoDPO") to {series name: logits}.
    Each series is a Gaussian KDE on a shared x-range so panels compare directly; a series that
    is constant or has fewer than ``min_kde_samples`` finite values falls back to a histogram.
    """
    if not panels:
        raise ValueError(
            "panels: expected {panel title: {'positive': logits, 'negative': logits}}, got nothing."
        )
    series = {
        panel: {name: _finite(values) for name, values in panel_series.items()}
        for panel, panel_series in panels.items()
    }
    all_values = [v for panel_series in series.values() for v in panel_series.values() if v.size]
    if all_values:
        low = min(float(v.min()) for v in all_values)
        high = max(float(v.max()) for v in all_values)
    else:
        low = high = 0.0
    pad = range_padding * (high - low) if high > low else CONSTANT_HALF_RANGE
    x_range = (low - pad, high + pad)
    grid = np.linspace(*x_range, grid_points)

    width, height = panel_size
    figure = Figure(figsize=(width * len(series), height), layout="constrained")
    axes = figure.subplots(1, len(series), squeeze=False)[0]
    for index, (ax, (panel, panel_series)) in enumerate(zip(axes, series.items())):
        for name, values in panel_series.items():
            _draw_density(ax, name, values, grid, histogram_bins, min_kde_samples)
        ax.set_xlim(*x_range)
        ax.set_title(f"({chr(ord('a') + index)}) {panel}")
        ax.set_xlabel("Predicted logit")
        ax.set_ylabel("Density")
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure
