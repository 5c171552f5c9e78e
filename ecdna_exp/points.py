"""Object positions: reading them from answers and scoring them against ground truth.

A point-then-count prompt asks the model to list each ecDNA as ``(x, y)``
before giving the count. Qwen2-VL writes grounded positions on a 0-1000
scale whatever the image size (``coordinates: per_mille``); other models are
asked for pixels. Boxes written as ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``
count as their centre.
"""

from __future__ import annotations

import re

import numpy as np

from ecdna_exp.segmenter.localisation import match_centroids

COORDINATE_SYSTEMS = ("pixels", "per_mille")
_NUMBER = r"(\d+(?:\.\d+)?)"
_POINT_RE = re.compile(rf"[(\[]\s*{_NUMBER}\s*,\s*{_NUMBER}\s*[)\]]")
_BOX_RE = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)


def parse_points(answer_text: str | None, image_shape: tuple[int, int], coordinates: str = "pixels") -> np.ndarray:
    """Read ``(x, y)`` positions from an answer.

    Parameters
    ----------
    answer_text : str or None
        The model's answer.
    image_shape : (height, width)
        Size of the query image in pixels.
    coordinates : {"pixels", "per_mille"}
        Scale of the numbers in the answer.

    Returns
    -------
    np.ndarray
        ``(N, 2)`` float (row, column) positions in pixels. Positions outside
        the image are dropped; an answer without positions gives ``(0, 2)``.
    """
    if coordinates not in COORDINATE_SYSTEMS:
        raise ValueError(f"invalid coordinates {coordinates!r}; expected one of {COORDINATE_SYSTEMS}")
    if not answer_text:
        return np.zeros((0, 2))
    positions = []
    for box in _BOX_RE.finditer(answer_text):
        corners = [(float(x), float(y)) for x, y in _POINT_RE.findall(box.group(1))]
        if len(corners) == 2:
            positions.append(((corners[0][0] + corners[1][0]) / 2, (corners[0][1] + corners[1][1]) / 2))
    remainder = _BOX_RE.sub(" ", answer_text)
    positions.extend((float(x), float(y)) for x, y in _POINT_RE.findall(remainder))

    height, width = image_shape
    points = np.asarray(positions, dtype=float).reshape(-1, 2)[:, ::-1]
    if coordinates == "per_mille":
        points = points * np.array([height, width]) / 1000.0
    inside = (points[:, 0] >= 0) & (points[:, 0] < height) & (points[:, 1] >= 0) & (points[:, 1] < width)
    return points[inside]


def strip_points(answer_text: str | None) -> str | None:
    """Remove positions and boxes from an answer, so their numbers are not read as the count."""
    if answer_text is None:
        return None
    return _POINT_RE.sub(" ", _BOX_RE.sub(" ", answer_text))


def localisation_row(points_pred: np.ndarray, centroids_true: np.ndarray, radius: float) -> dict[str, int]:
    """Return true positives, false positives and false negatives of one image's points."""
    match = match_centroids(points_pred, centroids_true, radius)
    return {"loc_tp": match.true_positives, "loc_fp": match.false_positives, "loc_fn": match.false_negatives}


def localisation_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 from summed counts (0 when undefined)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loc_precision": precision, "loc_recall": recall, "loc_f1": f1}
