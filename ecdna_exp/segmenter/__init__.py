"""A learned ecSeg segmenter: a small U-Net that labels background, nucleus, chromosome and ecDNA pixels.

``predict_label_map`` and ``segment_counts`` use the committed weights in
``weights/segmenter.pt``; ``tiling`` handles whole spreads and
``localisation`` scores predicted centroids. Importing this package does not
import torch; the functions below load it on first use.
"""

from __future__ import annotations

import numpy as np


def predict_label_map(rgb: np.ndarray) -> np.ndarray:
    """Predict the ``(H, W)`` uint8 ecSeg label map (classes 0-3) of an ``(H, W, 3)`` uint8 image."""
    from ecdna_exp.segmenter.predict import predict_label_map as _predict

    return _predict(rgb)


def segment_counts(rgb: np.ndarray) -> dict[str, int]:
    """Count ``num_nuclei``, ``num_chromosomes`` and ``num_ecDNA`` in the predicted label map of an image."""
    from ecdna_exp.segmenter.predict import segment_counts as _counts

    return _counts(rgb)


__all__ = ["predict_label_map", "segment_counts"]
