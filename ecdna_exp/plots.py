"""Figures of a run and of a sweep. Every function returns a matplotlib Figure; the caller closes it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _scatter_on(ax, counts_true: np.ndarray, counts_pred: np.ndarray, title: str) -> None:
    parsed = np.isfinite(counts_pred)
    x, y = counts_true[parsed], counts_pred[parsed]
    top = max(float(np.max(counts_true, initial=1)), float(np.max(y, initial=1))) * 1.05
    ax.scatter(x, y, s=14, alpha=0.6, edgecolors="none", label="images")
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="y = x")
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.array([0, top])
        ax.plot(grid, slope * grid + intercept, color="tab:red", linewidth=1.2,
                label=f"fit: y = {slope:.2f}x + {intercept:.1f}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("true ecDNA count")
    ax.set_ylabel("predicted ecDNA count")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def scatter_figure(counts_true: np.ndarray, counts_pred: np.ndarray, title: str) -> plt.Figure:
    """Plot predicted against true counts with the y = x line and a least-squares fit.

    ``counts_pred`` is NaN for unparsed answers, which are left out; the
    title should carry the coverage so the reader knows how many.
    """
    figure, ax = plt.subplots(figsize=(5, 5), dpi=110)
    _scatter_on(ax, np.asarray(counts_true, float), np.asarray(counts_pred, float), title)
    figure.tight_layout()
    return figure


def residual_histogram(counts_true: np.ndarray, counts_pred: np.ndarray, title: str) -> plt.Figure:
    """Histogram of residuals ``counts_pred - counts_true`` over parsed answers."""
    counts_true, counts_pred = np.asarray(counts_true, float), np.asarray(counts_pred, float)
    residuals = (counts_pred - counts_true)[np.isfinite(counts_pred)]
    figure, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    if residuals.size:
        ax.hist(residuals, bins=min(40, max(5, residuals.size // 3)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted - true count")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def error_bars_figure(summary: pd.DataFrame) -> plt.Figure:
    """Bar chart of MAE and RMSE per configuration with 95% bootstrap interval bars.

    ``summary`` has one row per configuration with columns ``label``, ``mae``,
    ``mae_ci_low``, ``mae_ci_high``, ``rmse``, ``rmse_ci_low``, ``rmse_ci_high``.
    """
    figure, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(summary) + 3), 4), dpi=110)
    positions = np.arange(len(summary))
    for ax, metric in zip(axes, ("mae", "rmse")):
        values = summary[metric].to_numpy(float)
        low = np.clip(values - summary[f"{metric}_ci_low"].to_numpy(float), 0, None)
        high = np.clip(summary[f"{metric}_ci_high"].to_numpy(float) - values, 0, None)
        ax.bar(positions, np.nan_to_num(values), yerr=np.nan_to_num([low, high]), capsize=4,
               color="tab:blue" if metric == "mae" else "tab:orange", alpha=0.85)
        ax.set_xticks(positions)
        ax.set_xticklabels(summary["label"], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{metric.upper()} with 95% bootstrap intervals", fontsize=9)
    figure.tight_layout()
    return figure


def scatter_grid(panels: list[tuple[str, np.ndarray, np.ndarray]]) -> plt.Figure:
    """Plot a grid of scatter plots, one per ``(title, counts_true, counts_pred)`` panel."""
    n = max(1, len(panels))
    columns = min(3, n)
    rows = int(np.ceil(n / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), dpi=100, squeeze=False)
    for ax, (title, counts_true, counts_pred) in zip(axes.flat, panels):
        _scatter_on(ax, np.asarray(counts_true, float), np.asarray(counts_pred, float), title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    return figure
