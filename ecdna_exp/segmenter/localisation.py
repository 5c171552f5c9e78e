"""Localisation scores: match predicted object centroids to true centroids within a radius."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


@dataclass
class MatchResult:
    """Outcome of a one-to-one centroid matching.

    ``pairs`` is an ``(K, 2)`` int array of (predicted index, true index) and
    ``distances`` the ``(K,)`` float distances of those pairs in pixels.
    Precision, recall and F1 are 0.0 when their denominator is 0, except that
    all three are 1.0 when both sets are empty.
    """

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    pairs: np.ndarray = field(repr=False)
    distances: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """Return the scores and counts, without the pairs."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
        }


def match_centroids(centroids_pred: np.ndarray, centroids_true: np.ndarray, radius: float) -> MatchResult:
    """Match predicted to true centroids one to one, maximising the number of matches within ``radius``.

    The Hungarian algorithm minimises the summed distance over pairs that are at
    most ``radius`` apart. A pair farther apart costs more than any set of
    valid pairs, so the matching first maximises the number of valid pairs.

    Parameters
    ----------
    centroids_pred, centroids_true : np.ndarray
        ``(N, 2)`` and ``(M, 2)`` float (row, column) positions in pixels.
    radius : float
        Largest distance in pixels at which a prediction counts as a hit.

    Returns
    -------
    MatchResult
    """
    centroids_pred = np.asarray(centroids_pred, dtype=float).reshape(-1, 2)
    centroids_true = np.asarray(centroids_true, dtype=float).reshape(-1, 2)
    n_pred, n_true = len(centroids_pred), len(centroids_true)
    pairs = np.zeros((0, 2), dtype=int)
    distances = np.zeros(0, dtype=float)

    if n_pred and n_true:
        distance = cdist(centroids_pred, centroids_true)
        valid = distance <= radius
        # An invalid pair costs more than the sum of all valid pairs, so no
        # valid match is given up for a shorter total distance.
        forbidden = radius * (min(n_pred, n_true) + 1) + 1.0
        rows, cols = linear_sum_assignment(np.where(valid, distance, forbidden))
        keep = valid[rows, cols]
        pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(int)
        distances = distance[rows[keep], cols[keep]]

    true_positives = len(pairs)
    precision = true_positives / n_pred if n_pred else float(n_true == 0)
    recall = true_positives / n_true if n_true else float(n_pred == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return MatchResult(
        precision=precision,
        recall=recall,
        f1=f1,
        true_positives=true_positives,
        false_positives=n_pred - true_positives,
        false_negatives=n_true - true_positives,
        pairs=pairs,
        distances=distances,
    )


def load_centroids(path: str | Path) -> np.ndarray:
    """Read ecSeg's centroid list: one ``row, column`` pair per line, in pixels.

    Returns
    -------
    np.ndarray
        ``(N, 2)`` float array; ``(0, 2)`` for an empty file.
    """
    centroids = np.loadtxt(path, delimiter=",", ndmin=2)
    return centroids.reshape(-1, 2).astype(float)
