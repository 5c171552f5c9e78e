"""Labelled ecSeg patches for training the segmenter, its seeded split and its augmentations."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ecdna_exp.ground_truth import ECDNA, EIGHT_CONNECTED, load_label_map
from ecdna_exp.imaging import dapi_channel, load_image

log = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ecseg_sample"


@dataclass
class Patch:
    """One labelled patch: its id, ``(H, W)`` float32 DAPI in [0, 1] and ``(H, W)`` uint8 label map.

    ``pixel_weights``, when set, is the ``(H, W)`` float32 loss weight of each pixel in training.
    """

    image_id: str
    dapi: np.ndarray
    label_map: np.ndarray
    pixel_weights: np.ndarray | None = None


def separation_mask(label_map: np.ndarray, radius: int = 2) -> np.ndarray:
    """Return the ``(H, W)`` bool mask of non-ecDNA pixels that lie between two ecDNA.

    A pixel is marked when two different 8-connected ecDNA components both lie
    within ``radius`` pixels of it (in the chessboard distance). These thin gaps
    decide whether neighbouring ecDNA are counted as one or two, so training
    weights them up.
    """
    components, count = ndimage.label(label_map == ECDNA, structure=EIGHT_CONNECTED)
    if count < 2:
        return np.zeros(label_map.shape, dtype=bool)
    size = 2 * radius + 1
    highest = ndimage.maximum_filter(components, size=size, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(
        np.where(components > 0, components, count + 1), size=size, mode="constant", cval=count + 1
    )
    return (components == 0) & (highest > 0) & (lowest <= count) & (highest != lowest)


def dapi_input(rgb: np.ndarray) -> np.ndarray:
    """Return the network input of an ``(H, W, 3)`` uint8 image: ``(H, W)`` float32 DAPI scaled to [0, 1]."""
    return dapi_channel(rgb).astype(np.float32) / 255.0


def list_patch_ids(data_dir: str | Path) -> list[str]:
    """Return the sorted ids of the patches in ``data_dir/images`` that have a label in ``data_dir/labels``."""
    data_dir = Path(data_dir)
    image_dir = data_dir / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {image_dir}; pass --data with an ecSeg sample folder"
        )
    ids = [p.stem for p in image_dir.glob("*.tif") if (data_dir / "labels" / f"{p.stem}.png").is_file()]
    return sorted(ids, key=lambda image_id: (len(image_id), image_id))


def load_patches(data_dir: str | Path, ids: list[str]) -> list[Patch]:
    """Read the images and label maps of ``ids`` from ``data_dir``."""
    data_dir = Path(data_dir)
    patches = []
    for image_id in ids:
        rgb = load_image(data_dir / "images" / f"{image_id}.tif")
        label_map = load_label_map(data_dir / "labels" / f"{image_id}.png")
        patches.append(Patch(image_id, dapi_input(rgb), label_map))
    log.info("loaded %d labelled patches from %s", len(patches), data_dir)
    return patches


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` at random into training and validation ids; the same seed gives the same split."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = round(val_fraction * len(ids))
    val_ids = sorted((ids[i] for i in order[:n_val]), key=lambda s: (len(s), s))
    train_ids = sorted((ids[i] for i in order[n_val:]), key=lambda s: (len(s), s))
    return train_ids, val_ids


def augment(
    dapi: np.ndarray,
    label_map: np.ndarray,
    rng: np.random.Generator,
    crop: int,
    focus: float = 0.5,
    pixel_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one random view of a patch.

    The view is a ``crop``-pixel square, turned by one of the 8 flips and
    rotations, with an intensity change (gain 0.6-1.4, gamma 0.7-1.4, Gaussian
    noise up to 0.03). With probability ``focus`` the square is centred near a
    random ecDNA pixel, when the patch has any, because ecDNA covers about 1%
    of the pixels.

    Returns ``(crop, crop)`` float32 DAPI and ``(crop, crop)`` int64 labels,
    and the ``(crop, crop)`` float32 loss weights cut and turned the same way
    when ``pixel_weights`` of the patch's shape is given.
    """
    height, width = dapi.shape
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    if rng.random() < focus:
        ecdna_pixels = np.argwhere(label_map == ECDNA)
        if len(ecdna_pixels):
            row, col = ecdna_pixels[rng.integers(len(ecdna_pixels))]
            top = int(np.clip(row - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, height - crop))
            left = int(np.clip(col - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, width - crop))
    window = (slice(top, top + crop), slice(left, left + crop))
    dapi, label_map = dapi[window], label_map[window]
    if pixel_weights is not None:
        pixel_weights = pixel_weights[window]

    turns = int(rng.integers(0, 4))
    mirror = rng.random() < 0.5

    def turn(array: np.ndarray) -> np.ndarray:
        array = np.rot90(array, turns)
        return array[:, ::-1] if mirror else array

    dapi, label_map = turn(dapi), turn(label_map)

    gain = rng.uniform(0.6, 1.4)
    gamma = rng.uniform(0.7, 1.4)
    dapi = np.clip(gain * np.power(dapi, gamma), 0.0, 1.0)
    dapi = dapi + rng.normal(0.0, rng.uniform(0.0, 0.03), dapi.shape)
    dapi = np.clip(dapi, 0.0, 1.0)
    view = np.ascontiguousarray(dapi, dtype=np.float32), np.ascontiguousarray(label_map, dtype=np.int64)
    if pixel_weights is None:
        return view
    return *view, np.ascontiguousarray(turn(pixel_weights), dtype=np.float32)
