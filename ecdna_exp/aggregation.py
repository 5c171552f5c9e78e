"""Combining the answers of repeated trials into one count per image.

Only parsed answers take part. An image with no parsed answer in any trial
stays unparsed (NaN). ``majority`` takes the most frequent count; a tie between
several counts goes to the one closest to the median of all parsed answers of
that image, and a remaining tie to the smaller count, so the rule never
depends on the order of the trials.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

AGGREGATIONS = ("mean", "median", "majority")


def majority_vote(values: list[float]) -> float:
    """Return the most frequent value, breaking ties by the rule in the module docstring."""
    if not values:
        return float("nan")
    frequencies = Counter(values)
    top = max(frequencies.values())
    modes = [value for value, n in frequencies.items() if n == top]
    median = float(np.median(values))
    return float(min(modes, key=lambda value: (abs(value - median), value)))


def aggregate_values(values: list[float], method: str) -> float:
    """Combine the parsed counts of one image; NaN entries are ignored."""
    parsed = [float(v) for v in values if np.isfinite(v)]
    if not parsed:
        return float("nan")
    if method == "mean":
        return float(np.mean(parsed))
    if method == "median":
        return float(np.median(parsed))
    if method == "majority":
        return majority_vote(parsed)
    raise ValueError(f"invalid aggregation {method!r}; expected one of {AGGREGATIONS}")


def aggregate_trials(trial_predictions: pd.DataFrame, method: str) -> pd.DataFrame:
    """Reduce per-trial rows to one row per image.

    Parameters
    ----------
    trial_predictions : pd.DataFrame
        One row per (image_id, trial) with ``count_true``, ``count_pred``
        (NaN when unparsed), ``answer_text``, ``parse_status``, ``latency_s``
        and any ``step<k>_answer`` columns.
    method : {"mean", "median", "majority"}

    Returns
    -------
    pd.DataFrame
        One row per image in first-seen order: ``image_id``, ``count_true``,
        ``count_pred`` (aggregate), ``parse_status`` (the single trial's
        status, or ``"aggregate"`` when any of several trials parsed, else the
        first trial's status), ``answer_text`` (the first trial's), ``answers``
        and ``counts_pred_trials`` (JSON lists over trials), ``n_parsed``,
        ``latency_s`` (sum), ``error`` and the first trial's step answers.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"invalid aggregation {method!r}; expected one of {AGGREGATIONS}")
    rows = []
    step_columns = [c for c in trial_predictions.columns if c.startswith("step") and c.endswith("_answer")]
    for image_id, group in trial_predictions.groupby("image_id", sort=False):
        group = group.sort_values("trial")
        counts = group["count_pred"].astype(float).tolist()
        n_parsed = int(np.isfinite(counts).sum())
        first = group.iloc[0]
        if len(group) == 1:
            status = first["parse_status"]
        else:
            status = "aggregate" if n_parsed else first["parse_status"]
        row = {
            "image_id": image_id,
            "count_true": int(first["count_true"]),
            "count_pred": aggregate_values(counts, method),
            "parse_status": status,
            "answer_text": first["answer_text"],
            "answers": json.dumps([None if pd.isna(a) else a for a in group["answer_text"]]),
            "counts_pred_trials": json.dumps([c if np.isfinite(c) else None for c in counts]),
            "n_parsed": n_parsed,
            "confidence": float(group["confidence"].mean()) if "confidence" in group else float("nan"),
            "latency_s": float(group["latency_s"].sum()),
            "error": next((e for e in group["error"] if isinstance(e, str)), None),
        }
        row.update({c: first[c] for c in step_columns})
        rows.append(row)
    return pd.DataFrame(rows)
