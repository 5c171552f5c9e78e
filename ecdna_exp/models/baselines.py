"""Baselines that run on any CPU without torch: a constant and a classical counter.

Both answer in text, like a VLM, so their answers go through the same parser.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from ecdna_exp.ground_truth import EIGHT_CONNECTED
from ecdna_exp.imaging import dapi_channel
from ecdna_exp.models.base import CountingModel, Request, Response


class ConstantCounter(CountingModel):
    """Answer the same count for every image; a floor that any model should beat."""

    def __init__(self, *, name: str = "constant", value: int = 4, batch_size: int = 64):
        if value < 0:
            raise ValueError(f"constant value must be >= 0, got {value}")
        self.name = name
        self.value = int(value)
        self.batch_size = batch_size

    def generate(self, requests: list[Request]) -> list[Response]:
        return [Response(answer_text=str(self.value)) for _ in requests]

    def describe(self) -> dict:
        return {"name": self.name, "value": self.value}


def detect_ecdna(
    dapi: np.ndarray,
    *,
    tophat_radius: int = 4,
    threshold_sigma: float = 8.0,
    min_area: int = 4,
    max_area: int = 40,
    object_area: int = 60,
    object_margin: int = 4,
) -> np.ndarray:
    """Find small bright DAPI spots that lie outside chromosomes and nuclei.

    The rules, all in pixels:

    1. A white top-hat with a disc of ``tophat_radius`` keeps structures
       narrower than the disc and removes the smooth background.
    2. Spots are top-hat pixels above the median plus ``threshold_sigma``
       robust standard deviations (1.4826 x the median absolute deviation).
    3. A spot is an 8-connected component with ``min_area <= area <= max_area``.
    4. Large objects are components of an Otsu threshold of the smoothed DAPI
       larger than ``object_area``: chromosomes and nuclei. A spot within
       ``object_margin`` of one of them is part of that object and dropped.

    Parameters
    ----------
    dapi : np.ndarray
        ``(H, W)`` uint8 DAPI intensity.

    Returns
    -------
    np.ndarray
        ``(N, 2)`` float (row, column) centroids of the detected ecDNA, in pixels.
    """
    image = dapi.astype(float)
    yy, xx = np.mgrid[-tophat_radius : tophat_radius + 1, -tophat_radius : tophat_radius + 1]
    disc = yy**2 + xx**2 <= tophat_radius**2
    tophat = image - ndimage.grey_opening(image, footprint=disc)

    median = np.median(tophat)
    spread = 1.4826 * np.median(np.abs(tophat - median)) or 1.0
    spot_mask = tophat > median + threshold_sigma * spread

    smooth = ndimage.gaussian_filter(image, 1.0)
    objects, n_objects = ndimage.label(smooth > _otsu_threshold(smooth), structure=EIGHT_CONNECTED)
    areas = ndimage.sum_labels(np.ones_like(image), objects, index=np.arange(1, n_objects + 1))
    large_ids = np.flatnonzero(areas > object_area) + 1
    large_mask = ndimage.binary_dilation(np.isin(objects, large_ids), iterations=object_margin)

    spots, n_spots = ndimage.label(spot_mask, structure=EIGHT_CONNECTED)
    if n_spots == 0:
        return np.zeros((0, 2))
    index = np.arange(1, n_spots + 1)
    spot_areas = ndimage.sum_labels(np.ones_like(image), spots, index=index)
    overlaps_object = ndimage.maximum(large_mask, spots, index=index) > 0
    keep = (spot_areas >= min_area) & (spot_areas <= max_area) & ~overlaps_object
    if not keep.any():
        return np.zeros((0, 2))
    centroids = ndimage.center_of_mass(spot_mask, spots, index[keep])
    return np.asarray(centroids, dtype=float).reshape(-1, 2)


def _otsu_threshold(image: np.ndarray) -> float:
    histogram, edges = np.histogram(image, bins=256)
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(histogram * centers) / np.maximum(weight_low, 1)
    total = (histogram * centers).sum()
    mean_high = (total - np.cumsum(histogram * centers)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centers[int(np.argmax(between))])


class ClassicalCounter(CountingModel):
    """Count ecDNA by thresholding and connected components on the DAPI channel.

    The keyword arguments other than ``name`` and ``batch_size`` are the size
    and threshold rules of :func:`detect_ecdna`.
    """

    def __init__(self, *, name: str = "classical", batch_size: int = 16, **rules):
        self.name = name
        self.batch_size = batch_size
        self.rules = dict(rules)
        self.last_centroids: dict[str, np.ndarray] = {}

    def generate(self, requests: list[Request]) -> list[Response]:
        responses = []
        for request in requests:
            start = time.perf_counter()
            centroids = detect_ecdna(dapi_channel(request.query_image()), **self.rules)
            self.last_centroids[request.image_id] = centroids
            responses.append(Response(answer_text=str(len(centroids)), latency_s=time.perf_counter() - start,
                                      points=centroids))
        return responses

    def describe(self) -> dict:
        return {"name": self.name, **self.rules}
