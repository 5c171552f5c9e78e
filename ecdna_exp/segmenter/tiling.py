"""Counting and segmenting whole metaphase spreads through overlapping tiles.

A spread is cut into ``tile``-pixel squares that overlap by ``overlap`` pixels.
The boundary between two neighbouring tiles runs through the middle of their
overlap, and the *core* of a tile is its part inside these boundaries. For
evenly spaced tiles the core is the tile minus half the overlap on each inner
edge. The cores partition the image, so every pixel, and every object
centroid, belongs to exactly one tile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Per-tile counter: takes an ``(h, w, 3)`` uint8 tile, returns an int count or ``(N, 2)`` (row, column) centroids.
TileCounter = Callable[[np.ndarray], "int | np.ndarray"]


@dataclass(frozen=True)
class Tile:
    """One tile: its pixel window and its core, as half-open ``(start, stop)`` rows and columns of the image."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    core_rows: tuple[int, int]
    core_cols: tuple[int, int]

    def owns(self, centroids: np.ndarray) -> np.ndarray:
        """Return the ``(N,)`` bool mask of the image-frame ``(N, 2)`` centroids that lie in this tile's core."""
        r, c = centroids[:, 0], centroids[:, 1]
        return (
            (r >= self.core_rows[0])
            & (r < self.core_rows[1])
            & (c >= self.core_cols[0])
            & (c < self.core_cols[1])
        )


@dataclass
class SpreadCount:
    """Result of :func:`count_whole_spread`.

    ``centroids`` is the ``(N, 2)`` float array of owned centroids in the
    input image's pixels, or None for a count-only counter. ``tile_counts``
    lists the count credited to each tile, in :func:`tile_grid` order.
    """

    count: int
    centroids: np.ndarray | None
    tile_counts: list[int]
    tiles: list[Tile]


def _axis_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Return ``(start, stop, core_start, core_stop)`` of the tiles along one axis of ``length`` pixels."""
    if length <= tile:
        return [(0, length, 0, length)]
    n_tiles = -(-(length - tile) // (tile - overlap)) + 1
    starts = [round(s) for s in np.linspace(0, length - tile, n_tiles)]
    boundaries = [0] + [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)] + [length]
    return [(s, s + tile, boundaries[i], boundaries[i + 1]) for i, s in enumerate(starts)]


def tile_grid(height: int, width: int, tile: int = 256, overlap: int = 64) -> list[Tile]:
    """Cover a ``height`` x ``width`` image with overlapping tiles, row by row.

    Along each axis the fewest tiles that overlap by at least ``overlap``
    pixels are spread evenly from border to border, so neighbours may overlap
    by more than ``overlap``. An axis shorter than ``tile`` gets a single,
    shorter tile.

    Raises
    ------
    ValueError
        If ``overlap`` is negative or not smaller than ``tile``.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap} for tile={tile}")
    return [
        Tile((r0, r1), (c0, c1), (cr0, cr1), (cc0, cc1))
        for r0, r1, cr0, cr1 in _axis_windows(height, tile, overlap)
        for c0, c1, cc0, cc1 in _axis_windows(width, tile, overlap)
    ]


def rescale_image(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image by ``scale`` with linear interpolation; returns uint8."""
    if scale == 1.0:
        return rgb
    zoomed = ndimage.zoom(rgb.astype(np.float32), (scale, scale, 1), order=1)
    return np.clip(np.rint(zoomed), 0, 255).astype(np.uint8)


def count_whole_spread(
    rgb: np.ndarray,
    count_tile_fn: TileCounter,
    tile: int = 256,
    overlap: int = 64,
    kind: Literal["centroids", "count"] = "centroids",
    scale: float = 1.0,
) -> SpreadCount:
    """Count the objects of a whole spread with a per-tile counter, each object once.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image of any size.
    count_tile_fn : callable
        Counter applied to each ``(h, w, 3)`` uint8 tile (``h, w <= tile``).
    tile, overlap : int
        Tile side and overlap of neighbouring tiles, in pixels of the rescaled image.
    kind : {"centroids", "count"}
        ``"centroids"``: the counter returns the ``(N, 2)`` (row, column)
        centroids of its objects in tile pixels and receives the whole tile; an
        object counts for the tile whose core holds its centroid. ``"count"``:
        the counter returns a number and receives the tile with every pixel outside
        the core set to 0 (black background), and the tile counts are summed.
    scale : float
        Factor by which the image is resized before tiling, to bring its
        objects to the size the counter expects; centroids are returned in the
        input image's pixels.

    Returns
    -------
    SpreadCount

    Raises
    ------
    ValueError
        If ``kind`` is unknown or the counter's output does not fit ``kind``.
    """
    if kind not in ("centroids", "count"):
        raise ValueError(f"kind must be 'centroids' or 'count', got {kind!r}")
    image = rescale_image(rgb, scale)
    tiles = tile_grid(image.shape[0], image.shape[1], tile, overlap)
    tile_counts: list[int] = []
    owned: list[np.ndarray] = []

    for t in tiles:
        window = image[t.rows[0] : t.rows[1], t.cols[0] : t.cols[1]]
        if kind == "count":
            # NOTE: an object cut by a core border is seen in part by two tiles,
            # so a count-only counter may count it twice or not at all.
            masked = np.zeros_like(window)
            core = (
                slice(t.core_rows[0] - t.rows[0], t.core_rows[1] - t.rows[0]),
                slice(t.core_cols[0] - t.cols[0], t.core_cols[1] - t.cols[0]),
            )
            masked[core] = window[core]
            result = count_tile_fn(masked)
            if isinstance(result, np.ndarray) and result.ndim > 0:
                raise ValueError("kind='count' expects the tile counter to return a number, got an array")
            tile_counts.append(int(result))
            continue

        result = count_tile_fn(window)
        if not isinstance(result, np.ndarray) or result.ndim != 2 or result.shape[1] != 2:
            raise ValueError(
                f"kind='centroids' expects an (N, 2) array of centroids from the tile counter, got {type(result).__name__}; "
                "pass kind='count' for a counter that returns a number"
            )
        centroids = result.astype(float) + (t.rows[0], t.cols[0])
        centroids = centroids[t.owns(centroids)]
        tile_counts.append(len(centroids))
        owned.append(centroids)

    centroids = np.concatenate(owned, axis=0) / scale if kind == "centroids" else None
    log.debug("counted %d objects over %d tiles", sum(tile_counts), len(tiles))
    return SpreadCount(int(sum(tile_counts)), centroids, tile_counts, tiles)


def segment_whole_spread(
    rgb: np.ndarray, segmenter=None, tile: int = 256, overlap: int = 64, scale: float = 1.0
) -> np.ndarray:
    """Predict the label map of a whole spread by stitching the cores of tile predictions.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image of any size.
    segmenter : Segmenter, optional
        Defaults to the committed weights (:func:`ecdna_exp.segmenter.predict.load_segmenter`).
    tile, overlap : int
        Tile side and overlap in pixels of the rescaled image.
    scale : float
        Resize factor applied before segmenting; class probabilities are
        resized back, so the label map has the input's size.

    Returns
    -------
    np.ndarray
        ``(H, W)`` uint8 label map with classes 0-3.
    """
    from ecdna_exp.segmenter.dataset import dapi_input
    from ecdna_exp.segmenter.predict import load_segmenter

    segmenter = segmenter or load_segmenter()
    dapi = dapi_input(rescale_image(rgb, scale))
    probabilities = np.zeros((segmenter.net.config.num_classes,) + dapi.shape, dtype=np.float32)
    for t in tile_grid(dapi.shape[0], dapi.shape[1], tile, overlap):
        window = segmenter.predict_probabilities(dapi[t.rows[0] : t.rows[1], t.cols[0] : t.cols[1]])
        probabilities[:, t.core_rows[0] : t.core_rows[1], t.core_cols[0] : t.core_cols[1]] = window[
            :,
            t.core_rows[0] - t.rows[0] : t.core_rows[1] - t.rows[0],
            t.core_cols[0] - t.cols[0] : t.core_cols[1] - t.cols[0],
        ]
    if scale != 1.0:
        zoom = (1, rgb.shape[0] / dapi.shape[0], rgb.shape[1] / dapi.shape[1])
        probabilities = ndimage.zoom(probabilities, zoom, order=1)
    return segmenter.label_map_from_probabilities(probabilities)
