"""The learned segmenter as a counting model: count the components of one predicted class."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ecdna_exp.ground_truth import CLASS_COLOURS, CLASS_NAMES, component_centroids, count_components
from ecdna_exp.models.base import CountingModel, ModelConfigError, Request, Response

log = logging.getLogger(__name__)

_CLASS_BY_NAME = {name: index for index, name in CLASS_NAMES.items()}


def overlay(rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the ecSeg class colours of a label map over an image, leaving background pixels unchanged.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image.
    label_map : np.ndarray
        ``(H, W)`` uint8 classes 0-3.
    alpha : float
        Weight of the class colour on nucleus, chromosome and ecDNA pixels, in [0, 1].

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 image.
    """
    if rgb.shape[:2] != label_map.shape:
        raise ValueError(f"image shape {rgb.shape[:2]} and label map shape {label_map.shape} differ")
    colours = np.array([CLASS_COLOURS[k] for k in sorted(CLASS_COLOURS)], dtype=np.float32)
    blended = rgb.astype(np.float32)
    foreground = label_map > 0
    blended[foreground] = (1 - alpha) * blended[foreground] + alpha * colours[label_map[foreground]]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


class SegmenterCounter(CountingModel):
    """Count the 8-connected components of one class in the segmenter's predicted label map.

    Parameters
    ----------
    name : str
        Model name in logs and results.
    weights : str, optional
        Weights file; the committed ``ecdna_exp/segmenter/weights/segmenter.pt`` when None.
    count_class : str
        Class to count: ``ecDNA``, ``chromosome`` or ``nucleus``.
    min_area : int, optional
        Smallest component counted, in pixels. None takes the minimum for
        ``count_class`` chosen on the training patches and stored beside the weights.
    ecdna_threshold : float, optional
        ecDNA probability above which a pixel is labelled ecDNA, between 0 and 1.
        None takes the threshold chosen on the training patches and stored
        beside the weights.
    device : str
        Torch device, e.g. ``cpu`` or ``cuda``.
    batch_size : int
        Requests the runner sends per call; images are segmented one by one.
    """

    def __init__(
        self,
        *,
        name: str = "segmenter",
        weights: str | None = None,
        count_class: str = "ecDNA",
        min_area: int | None = None,
        ecdna_threshold: float | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        from ecdna_exp.segmenter.predict import Segmenter

        if count_class not in _CLASS_BY_NAME or _CLASS_BY_NAME[count_class] == 0:
            raise ModelConfigError(
                f"invalid count_class {count_class!r}; expected ecDNA, chromosome or nucleus"
            )
        self.name = name
        self.batch_size = batch_size
        self.class_index = _CLASS_BY_NAME[count_class]
        self.count_class = count_class
        self.weights = Path(weights) if weights else None
        self.segmenter = Segmenter.load(self.weights, device=device)
        if ecdna_threshold is not None:
            self.segmenter.ecdna_threshold = ecdna_threshold
        if min_area is None:
            min_area = self.segmenter.min_areas.get(self.class_index, 0)
        self.min_area = int(min_area)
        self.weights_sha256 = hashlib.sha256(self.segmenter.path.read_bytes()).hexdigest()[:16]
        self.device = device
        #: Predicted ``(H, W)`` uint8 label maps of the last :meth:`generate` call, by image id.
        self.last_label_maps: dict[str, np.ndarray] = {}

    def generate(self, requests: list[Request]) -> list[Response]:
        from ecdna_exp.segmenter.predict import drop_small_components

        self.last_label_maps = {}
        responses = []
        for request in requests:
            start = time.perf_counter()
            try:
                label_map = self.segmenter.predict_label_map(request.query_image())
            except ValueError as error:
                log.warning("segmenter failed on image %s: %s", request.image_id, error)
                responses.append(Response(None, time.perf_counter() - start, error=str(error)))
                continue
            self.last_label_maps[request.image_id] = label_map
            mask = drop_small_components(label_map == self.class_index, self.min_area)
            responses.append(
                Response(str(count_components(mask)), time.perf_counter() - start, points=component_centroids(mask))
            )
        return responses

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": str(self.weights or "committed"),
            "weights_sha256": self.weights_sha256,
            "count_class": self.count_class,
            "min_area": self.min_area,
            "ecdna_threshold": self.segmenter.ecdna_threshold,
        }
