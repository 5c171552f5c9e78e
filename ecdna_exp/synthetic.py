"""Synthetic metaphase-like patches with exact ground truth.

Each patch is drawn from a seed: interphase nuclei (large, dim, textured
ellipses), chromosomes (bright rods), and ecDNA (small bright dots), then
blurred and given shot noise. Objects never touch, so the 8-connected
components of each class in the returned label map are exactly the objects
drawn, and counting the label map gives the true counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ecdna_exp.ground_truth import CHROMOSOME, ECDNA, NUCLEUS, count_classes


@dataclass(frozen=True)
class SyntheticStyle:
    """Object density and appearance of synthetic patches.

    Ranges are inclusive ``(low, high)``; the number of each object is drawn
    uniformly from its range per patch. Sizes are in pixels; intensities are
    fractions of full scale before noise.
    """

    ecdna_range: tuple[int, int] = (0, 30)
    chromosome_range: tuple[int, int] = (0, 25)
    nucleus_range: tuple[int, int] = (0, 1)
    ecdna_radius: tuple[float, float] = (1.2, 2.6)
    chromosome_length: tuple[int, int] = (10, 26)
    chromosome_width: tuple[int, int] = (3, 5)
    nucleus_radius: tuple[int, int] = (22, 40)
    blur_sigma: float = 0.8
    noise_level: float = 0.03
    background: float = 0.04


def _disc(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius**2


def _ellipse(ry: float, rx: float, angle: float) -> np.ndarray:
    r = int(np.ceil(max(ry, rx)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(float)
    cos, sin = np.cos(angle), np.sin(angle)
    u = xx * cos + yy * sin
    v = -xx * sin + yy * cos
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _rod(length: int, width: int, angle: float) -> np.ndarray:
    """A capsule ``length`` pixels long and ``width`` wide, rotated by ``angle`` radians."""
    half = length / 2.0
    r = int(np.ceil(half + width))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(float)
    cos, sin = np.cos(angle), np.sin(angle)
    u = xx * cos + yy * sin
    v = -xx * sin + yy * cos
    along = np.clip(u, -half + width / 2.0, half - width / 2.0)
    return (u - along) ** 2 + v**2 <= (width / 2.0) ** 2


def _place(shape_mask: np.ndarray, occupied: np.ndarray, rng: np.random.Generator, tries: int = 60):
    """Find a spot where ``shape_mask`` fits inside the patch without touching ``occupied``.

    Returns the (row, col) slices of the spot, or None when no spot was found.
    """
    height, width = occupied.shape
    h, w = shape_mask.shape
    if h >= height or w >= width:
        return None
    for _ in range(tries):
        top = int(rng.integers(0, height - h))
        left = int(rng.integers(0, width - w))
        window = (slice(top, top + h), slice(left, left + w))
        if not (occupied[window] & shape_mask).any():
            return window
    return None


def _stamp(label_map, intensity, occupied, shape_mask, window, class_index, level):
    label_map[window][shape_mask] = class_index
    intensity[window][shape_mask] = level[shape_mask] if isinstance(level, np.ndarray) else level
    # A margin of two pixels keeps objects from touching diagonally after placement.
    grown = ndimage.binary_dilation(shape_mask, iterations=2)
    padded = np.zeros_like(occupied)
    padded[window] = grown[: occupied[window].shape[0], : occupied[window].shape[1]]
    occupied |= padded


def generate_patch(
    seed: int, size: int = 256, style: SyntheticStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic metaphase patch.

    Parameters
    ----------
    seed : int
        Seed of the patch; the same seed always gives the same patch.
    size : int
        Side of the square patch in pixels.
    style : SyntheticStyle, optional
        Densities and appearance; the defaults resemble ecSeg's 256-pixel patches.

    Returns
    -------
    rgb : np.ndarray
        ``(size, size, 3)`` uint8 image with DAPI in the blue channel.
    label_map : np.ndarray
        ``(size, size)`` uint8 ecSeg classes (0 background, 1 nucleus,
        2 chromosome, 3 ecDNA).
    """
    style = style or SyntheticStyle()
    rng = np.random.default_rng(seed)
    label_map = np.zeros((size, size), dtype=np.uint8)
    intensity = np.zeros((size, size), dtype=float)
    occupied = np.zeros((size, size), dtype=bool)

    for _ in range(int(rng.integers(style.nucleus_range[0], style.nucleus_range[1] + 1))):
        shape_mask = _ellipse(
            rng.uniform(*style.nucleus_radius), rng.uniform(*style.nucleus_radius), rng.uniform(0, np.pi)
        )
        window = _place(shape_mask, occupied, rng)
        if window is not None:
            texture = 0.45 + 0.1 * ndimage.gaussian_filter(rng.standard_normal(shape_mask.shape), 2.0)
            _stamp(label_map, intensity, occupied, shape_mask, window, NUCLEUS, texture)

    for _ in range(int(rng.integers(style.chromosome_range[0], style.chromosome_range[1] + 1))):
        shape_mask = _rod(
            int(rng.integers(*style.chromosome_length)),
            int(rng.integers(*style.chromosome_width)),
            rng.uniform(0, np.pi),
        )
        window = _place(shape_mask, occupied, rng)
        if window is not None:
            _stamp(label_map, intensity, occupied, shape_mask, window, CHROMOSOME, rng.uniform(0.75, 1.0))

    for _ in range(int(rng.integers(style.ecdna_range[0], style.ecdna_range[1] + 1))):
        shape_mask = _disc(rng.uniform(*style.ecdna_radius))
        window = _place(shape_mask, occupied, rng)
        if window is not None:
            _stamp(label_map, intensity, occupied, shape_mask, window, ECDNA, rng.uniform(0.6, 0.95))

    dapi = ndimage.gaussian_filter(intensity, style.blur_sigma) + style.background
    dapi = dapi + rng.normal(0.0, style.noise_level, dapi.shape)
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[..., 2] = np.clip(np.rint(dapi * 255.0), 0, 255).astype(np.uint8)
    return rgb, label_map


def generate_counts(seed: int, size: int = 256, style: SyntheticStyle | None = None) -> dict[str, int]:
    """Return the exact class counts of :func:`generate_patch` for ``seed``."""
    _, label_map = generate_patch(seed, size, style)
    return count_classes(label_map)
