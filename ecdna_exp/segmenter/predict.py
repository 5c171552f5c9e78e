"""Loading the trained segmenter and predicting label maps and counts from RGB images."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ecdna_exp.ground_truth import (
    CHROMOSOME,
    ECDNA,
    EIGHT_CONNECTED,
    NUCLEUS,
    component_centroids,
    count_components,
)
from ecdna_exp.models.base import ModelConfigError
from ecdna_exp.segmenter.dataset import dapi_input
from ecdna_exp.segmenter.net import NetConfig, UNet

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "segmenter.pt"


def drop_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove the 8-connected components of a boolean ``(H, W)`` mask that have fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    components, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    areas = np.bincount(components.ravel())
    small = areas < min_area
    small[0] = False
    return mask & ~small[components]


#: Keys of :func:`count_label_map` results by class index, as in ecSeg's counts CSV files.
COUNT_KEYS = {NUCLEUS: "num_nuclei", CHROMOSOME: "num_chromosomes", ECDNA: "num_ecDNA"}


def count_label_map(label_map: np.ndarray, min_areas: dict[int, int] | None = None) -> dict[str, int]:
    """Count nuclei, chromosomes and ecDNA in a predicted ``(H, W)`` label map.

    Components smaller than ``min_areas[class_index]`` pixels are not
    counted. A class missing from ``min_areas`` is counted as in
    :func:`ecdna_exp.ground_truth.count_classes`.
    """
    min_areas = min_areas or {}
    return {
        key: count_components(drop_small_components(label_map == class_index, min_areas.get(class_index, 0)))
        for class_index, key in COUNT_KEYS.items()
    }


class Segmenter:
    """A trained U-Net with the settings it was trained for.

    Parameters
    ----------
    net : UNet
        The network; it is put in evaluation mode.
    metadata : dict
        The training record stored beside the weights (may be empty). Its
        ``min_areas`` (pixels, by class name) set the smallest component
        counted per class, its ``ecdna_threshold`` the ecDNA probability above
        which a pixel is labelled ecDNA (absent or null: the most probable
        class wins), and its ``test_time_views`` (1 or 8, default 1) how many
        flipped and rotated views of each input are averaged.
    device : str
        Torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self, net: UNet, metadata: dict[str, Any] | None = None, device: str = "cpu", path: Path | None = None
    ):
        #: Weights file the network was loaded from, or None for a network built in memory.
        self.path = path
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.metadata = metadata or {}
        names = {"nucleus": NUCLEUS, "chromosome": CHROMOSOME, "ecDNA": ECDNA}
        #: Smallest component counted, in pixels, by class index.
        self.min_areas = {names[name]: int(area) for name, area in self.metadata.get("min_areas", {}).items()}
        self.ecdna_threshold = self.metadata.get("ecdna_threshold")
        self.tile = int(self.metadata.get("tile", 256))
        #: Number of the 8 flips and rotations of the input whose probabilities are averaged (1 or 8).
        self.test_time_views = int(self.metadata.get("test_time_views", 1))
        if self.test_time_views not in (1, 8):
            raise ModelConfigError(f"test_time_views must be 1 or 8, got {self.test_time_views}")

    @property
    def ecdna_threshold(self) -> float | None:
        """ecDNA probability above which a pixel is ecDNA, or None to take the most probable class."""
        return self._ecdna_threshold

    @ecdna_threshold.setter
    def ecdna_threshold(self, value: float | None) -> None:
        if value is not None and not 0.0 < float(value) < 1.0:
            raise ModelConfigError(f"ecdna_threshold must lie between 0 and 1 (exclusive), got {value}")
        self._ecdna_threshold = None if value is None else float(value)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> Segmenter:
        """Load weights saved by the training command, and the JSON record beside them if present.

        Raises
        ------
        ModelConfigError
            If the weights file is missing or does not hold a segmenter.
        """
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise ModelConfigError(
                f"segmenter weights not found: {path}; train them with python -m ecdna_exp.segmenter.train"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ModelConfigError(f"{path} is not a segmenter checkpoint: no state_dict entry")
        net = UNet(NetConfig(**checkpoint.get("net_config", {})))
        net.load_state_dict(checkpoint["state_dict"])
        record_path = path.with_suffix(".json")
        metadata = json.loads(record_path.read_text()) if record_path.is_file() else {}
        return cls(net, metadata, device, path)

    def predict_probabilities(self, dapi: np.ndarray) -> np.ndarray:
        """Return the ``(4, H, W)`` float32 class probabilities of one ``(H, W)`` DAPI array in [0, 1].

        With :attr:`test_time_views` of 8, the network labels the 4 rotations
        of the input and of its mirror image, and the probabilities are
        turned back and averaged. This costs 8 forward passes.
        """
        if self.test_time_views == 1:
            return self._predict_view(dapi)
        total = np.zeros((self.net.config.num_classes,) + dapi.shape, dtype=np.float32)
        for mirrored in (False, True):
            view = dapi[:, ::-1] if mirrored else dapi
            for turns in range(4):
                probabilities = np.rot90(self._predict_view(np.rot90(view, turns)), -turns, axes=(1, 2))
                total += probabilities[:, :, ::-1] if mirrored else probabilities
        return total / 8

    @torch.no_grad()
    def _predict_view(self, dapi: np.ndarray) -> np.ndarray:
        """Run the network once on ``dapi``, padded by reflection to a multiple of its size step."""
        height, width = dapi.shape
        step = self.net.config.size_multiple
        pad_bottom, pad_right = -height % step, -width % step
        x = torch.from_numpy(np.ascontiguousarray(dapi, dtype=np.float32))[None, None].to(self.device)
        if pad_bottom or pad_right:
            mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode=mode)
        probabilities = torch.softmax(self.net(x), dim=1)[0, :, :height, :width]
        return probabilities.cpu().numpy()

    def label_map_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Turn ``(4, H, W)`` class probabilities into an ``(H, W)`` uint8 label map.

        Without :attr:`ecdna_threshold` each pixel gets its most probable class.
        With it, a pixel is ecDNA when its ecDNA probability exceeds the
        threshold, and otherwise gets the most probable of the other classes.
        A threshold above 0.5 thins the ecDNA and opens the gaps between
        neighbours, which the training patches showed to count better.
        """
        if self.ecdna_threshold is None:
            return probabilities.argmax(axis=0).astype(np.uint8)
        # ecDNA is the last class, so the other classes keep their indices.
        label_map = probabilities[:ECDNA].argmax(axis=0).astype(np.uint8)
        label_map[probabilities[ECDNA] > self.ecdna_threshold] = ECDNA
        return label_map

    def predict_label_map(self, rgb: np.ndarray) -> np.ndarray:
        """Predict the ``(H, W)`` uint8 ecSeg label map (classes 0-3) of an ``(H, W, 3)`` uint8 image.

        Images larger than :attr:`tile` on either side are cut into overlapping
        tiles and stitched (see :func:`ecdna_exp.segmenter.tiling.segment_whole_spread`),
        so the network gets patches of the size it was trained on.
        """
        height, width = rgb.shape[:2]
        if height > self.tile or width > self.tile:
            from ecdna_exp.segmenter.tiling import segment_whole_spread

            return segment_whole_spread(rgb, segmenter=self)
        return self.label_map_from_probabilities(self.predict_probabilities(dapi_input(rgb)))

    def ecdna_centroids(self, rgb: np.ndarray) -> np.ndarray:
        """Return the ``(N, 2)`` float (row, column) centroids in pixels of the ecDNA predicted in an image.

        Components smaller than the ecDNA entry of :attr:`min_areas` are left out. This is
        the per-tile counter for :func:`ecdna_exp.segmenter.tiling.count_whole_spread`.
        """
        ecdna_mask = drop_small_components(self.predict_label_map(rgb) == ECDNA, self.min_areas.get(ECDNA, 0))
        return component_centroids(ecdna_mask)

    def segment_counts(self, rgb: np.ndarray) -> dict[str, int]:
        """Count nuclei, chromosomes and ecDNA in the predicted label map of an ``(H, W, 3)`` uint8 image."""
        return count_label_map(self.predict_label_map(rgb), self.min_areas)


@functools.lru_cache(maxsize=4)
def load_segmenter(path: str | None = None, device: str = "cpu") -> Segmenter:
    """Return the segmenter at ``path`` (default: the committed weights), loaded once per process."""
    return Segmenter.load(path, device)


def predict_label_map(rgb: np.ndarray) -> np.ndarray:
    """Predict the ``(H, W)`` uint8 label map of an ``(H, W, 3)`` uint8 image with the committed weights."""
    return load_segmenter().predict_label_map(rgb)


def segment_counts(rgb: np.ndarray) -> dict[str, int]:
    """Count ``num_nuclei``, ``num_chromosomes`` and ``num_ecDNA`` in an image with the committed weights."""
    return load_segmenter().segment_counts(rgb)
