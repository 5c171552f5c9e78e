"""Pictures shown in the app: label-map overlays and detection markers on a patch."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ecdna_exp.models.segmenter import overlay

#: Pictures with detection markers are enlarged by a whole factor until their short side
#: reaches this many pixels, so markers stay sharp.
MIN_DISPLAY_SIDE = 512
MARKER_COLOUR = (255, 200, 0)


def display_scale(shape: tuple[int, ...]) -> int:
    """Return the whole enlargement factor for an image of ``shape`` (rows, columns, ...)."""
    return max(1, MIN_DISPLAY_SIDE // max(1, min(shape[0], shape[1])))


def label_overlay(rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the ecSeg class colours of a label map over an image; see :func:`ecdna_exp.models.segmenter.overlay`."""
    return overlay(rgb, label_map, alpha)


def draw_detections(rgb: np.ndarray, centroids: np.ndarray, radius: float = 4.0) -> np.ndarray:
    """Draw a circle around each detection, on a copy enlarged by :func:`display_scale`.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image.
    centroids : np.ndarray
        ``(N, 2)`` float (row, column) positions in pixels of ``rgb``.
    radius : float
        Circle radius in pixels of ``rgb``.

    Returns
    -------
    np.ndarray
        ``(s*H, s*W, 3)`` uint8 image, where ``s`` is the enlargement factor.
    """
    scale = display_scale(rgb.shape)
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    r = radius * scale
    for row, col in np.asarray(centroids, dtype=float).reshape(-1, 2):
        # Pixel centres sit half a pixel in from the corners of the enlarged grid.
        y, x = (row + 0.5) * scale, (col + 0.5) * scale
        draw.ellipse((x - r, y - r, x + r, y + r), outline=MARKER_COLOUR, width=max(1, scale))
    return np.asarray(image)
