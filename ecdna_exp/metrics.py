"""Scores of predicted against true ecDNA counts.

Errors are computed over the images whose answer was parsed to a number;
``coverage`` says what share that is. The optimisation objective
(:func:`objective`) also charges the unparsed images, so a model cannot
improve its score by refusing the hard ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def _finite_or_nan(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")


def bootstrap_interval(
    errors: np.ndarray, statistic: str, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the MAE or RMSE of ``errors``.

    Parameters
    ----------
    errors : np.ndarray
        ``(n,)`` signed errors ``counts_pred - counts_true``.
    statistic : {"mae", "rmse"}
    n_resamples, seed, level
        Number of resamples, seed of the resampling, and coverage of the interval.

    Returns
    -------
    (low, high)
        NaN for both when ``errors`` is empty.
    """
    if errors.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = errors[rng.integers(0, errors.size, size=(n_resamples, errors.size))]
    if statistic == "mae":
        values = np.abs(resampled).mean(axis=1)
    elif statistic == "rmse":
        values = np.sqrt((resampled**2).mean(axis=1))
    else:
        raise ValueError(f"invalid statistic {statistic!r}; expected 'mae' or 'rmse'")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _correlations(counts_true: np.ndarray, counts_pred: np.ndarray) -> tuple[float, float]:
    """Pearson r and Spearman rho; NaN when either side is constant or n < 2."""
    if counts_true.size < 2 or np.ptp(counts_true) == 0 or np.ptp(counts_pred) == 0:
        return float("nan"), float("nan")
    pearson = stats.pearsonr(counts_true, counts_pred).statistic
    spearman = stats.spearmanr(counts_true, counts_pred).statistic
    return _finite_or_nan(pearson), _finite_or_nan(spearman)


def count_metrics(
    counts_true: np.ndarray, counts_pred: np.ndarray, *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Score predicted counts against true counts.

    Parameters
    ----------
    counts_true : np.ndarray
        ``(n,)`` true ecDNA counts of every evaluated image.
    counts_pred : np.ndarray
        ``(n,)`` predicted counts, NaN where the answer was not parsed or the
        model failed.

    Returns
    -------
    dict
        ``n`` (images), ``n_parsed``, ``coverage`` (n_parsed / n), ``mae``,
        ``rmse``, ``bias`` (mean of pred - true), ``pearson_r``,
        ``spearman_rho``, ``mae_ci_low/high`` and ``rmse_ci_low/high`` (95%
        bootstrap), ``mae_median_baseline`` (MAE of predicting the median true
        count for every image, over all ``n`` images), ``skill``
        (1 - mae / mae_median_baseline) and ``objective``. Error metrics are NaN
        when nothing was parsed.
    """
    counts_true = np.asarray(counts_true, dtype=float)
    counts_pred = np.asarray(counts_pred, dtype=float)
    if counts_true.shape != counts_pred.shape:
        raise ValueError(f"counts_true {counts_true.shape} and counts_pred {counts_pred.shape} differ in shape")
    parsed = np.isfinite(counts_pred)
    errors = counts_pred[parsed] - counts_true[parsed]
    n, n_parsed = counts_true.size, int(parsed.sum())

    mae = float(np.abs(errors).mean()) if n_parsed else float("nan")
    rmse = float(np.sqrt((errors**2).mean())) if n_parsed else float("nan")
    mae_low, mae_high = bootstrap_interval(errors, "mae", n_resamples=n_resamples, seed=seed)
    rmse_low, rmse_high = bootstrap_interval(errors, "rmse", n_resamples=n_resamples, seed=seed)
    pearson, spearman = _correlations(counts_true[parsed], counts_pred[parsed])
    mae_median = float(np.abs(counts_true - np.median(counts_true)).mean()) if n else float("nan")
    skill = 1.0 - mae / mae_median if n_parsed and mae_median > 0 else float("nan")

    return {
        "n": float(n),
        "n_parsed": float(n_parsed),
        "coverage": n_parsed / n if n else float("nan"),
        "mae": mae,
        "rmse": rmse,
        "bias": float(errors.mean()) if n_parsed else float("nan"),
        "pearson_r": pearson,
        "spearman_rho": spearman,
        "mae_ci_low": mae_low,
        "mae_ci_high": mae_high,
        "rmse_ci_low": rmse_low,
        "rmse_ci_high": rmse_high,
        "mae_median_baseline": mae_median,
        "skill": skill,
        "objective": objective(counts_true, counts_pred),
    }


def objective(counts_true: np.ndarray, counts_pred: np.ndarray) -> float:
    """Return the value a sweep minimises: MAE over all images, with a penalty for unparsed answers.

    An image whose answer was not parsed costs the error of the median
    predictor on it, ``|true - median(counts_true)|``, plus one. With
    every answer unparsed the objective is the median predictor's MAE plus
    one, so it is always finite and never better than guessing the median.

    Raises
    ------
    ValueError
        If there are no images.
    """
    counts_true = np.asarray(counts_true, dtype=float)
    counts_pred = np.asarray(counts_pred, dtype=float)
    if counts_true.size == 0:
        raise ValueError("cannot score an empty set of images")
    penalty = np.abs(counts_true - np.median(counts_true)) + 1.0
    per_image = np.where(np.isfinite(counts_pred), np.abs(counts_pred - counts_true), penalty)
    return float(per_image.mean())


def paired_bootstrap_not_worse(
    abs_errors: dict[str, np.ndarray], *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mark configurations whose MAE is not significantly above the best one's.

    Parameters
    ----------
    abs_errors : dict
        ``{config name: (n,) absolute errors}`` on the same images in the same
        order. Unparsed answers must be charged before this call, as
        :func:`objective` does, because NaN is not allowed here.

    Returns
    -------
    dict
        ``best`` (name) and ``not_worse`` (``{name: bool}``). A configuration
        is significantly worse when the lower end of the two-sided bootstrap
        interval of MAE(name) - MAE(best) is above zero. The images are
        resampled jointly for all configurations. Any other configuration is
        marked not worse.
    """
    names = list(abs_errors)
    matrix = np.vstack([abs_errors[name] for name in names])
    best_index = int(np.argmin(matrix.mean(axis=1)))
    rng = np.random.default_rng(seed)
    n = matrix.shape[1]
    indices = rng.integers(0, n, size=(n_resamples, n))
    alpha = 1.0 - level
    not_worse = {}
    for row, name in enumerate(names):
        difference = matrix[row] - matrix[best_index]
        resampled = difference[indices].mean(axis=1)
        low = float(np.quantile(resampled, alpha / 2.0))
        not_worse[name] = bool(row == best_index or low <= 0.0 or math.isclose(low, 0.0))
    return {"best": names[best_index], "not_worse": not_worse}
