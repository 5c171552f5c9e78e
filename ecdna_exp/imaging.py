"""Reading microscopy images into the RGB uint8 arrays that models receive.

Every loader returns an ``(H, W, 3)`` uint8 array. DAPI is expected in the blue
channel, as in ecSeg's patches; single-channel images are taken as DAPI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class ImageLoadError(ValueError):
    """An image file that is missing, corrupt or in an unsupported format."""


def rescale_percentiles(array: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Rescale intensities linearly so the ``low`` and ``high`` percentiles span 0-255.

    Used for 16-bit and float images: their values are mapped, never clipped
    at 255 as raw integers. Values outside the percentile range saturate.

    Returns
    -------
    np.ndarray
        Array of the input's shape, uint8.
    """
    array = array.astype(np.float64)
    lo, hi = np.percentile(array, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (array - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    return rescale_percentiles(array)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """Place a single DAPI channel into blue, or drop an alpha channel."""
    if array.ndim == 2:
        rgb = np.zeros(array.shape + (3,), dtype=np.uint8)
        rgb[..., 2] = array
        return rgb
    if array.ndim == 3 and array.shape[2] == 1:
        return _to_rgb(array[..., 0])
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise ImageLoadError(f"unsupported image shape {array.shape}")


def is_inverted(rgb: np.ndarray) -> bool:
    """Tell whether an image has a bright background and dark objects.

    A white background is bright in all three channels, whereas a bright
    DAPI nucleus is bright in blue alone. So the test uses the smallest of the
    three channels per pixel: the image counts as inverted when both its median
    and the median of its one-pixel border are above mid-grey. The border test
    keeps a grey patch filled by bright nuclei from being inverted, because its
    edges usually show the dark background.
    """
    darkest = rgb.min(axis=2)
    border = np.concatenate([darkest[0], darkest[-1], darkest[:, 0], darkest[:, -1]])
    return float(np.median(darkest)) > 127.0 and float(np.median(border)) > 127.0


def load_image(path: str | Path, *, grayscale_as_dapi: bool = True, fix_inverted: bool = True) -> np.ndarray:
    """Load an image file as an ``(H, W, 3)`` uint8 RGB array.

    Parameters
    ----------
    path : str or Path
        A TIFF, PNG or JPEG file. 8-bit RGB, 8- or 16-bit single-channel
        (PIL mode ``L``, ``I;16``, ``I``) and float images are accepted.
    grayscale_as_dapi : bool
        Put a single-channel image into the blue channel, as DAPI. When False
        it is copied to all three channels (plain grey).
    fix_inverted : bool
        Invert images with a bright background (see :func:`is_inverted`).

    Raises
    ------
    ImageLoadError
        If the file is missing, corrupt or has an unsupported layout.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageLoadError(f"unsupported image type {path.suffix!r} for {path}; expected one of {IMAGE_SUFFIXES}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error

    single_channel = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1)
    array = _to_uint8(array)
    if single_channel and not grayscale_as_dapi:
        gray = array.reshape(array.shape[:2])
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        rgb = _to_rgb(array)

    if fix_inverted and is_inverted(rgb):
        log.info("image %s has a bright background; inverting it", path)
        rgb = 255 - rgb
    return rgb


def dapi_view(rgb: np.ndarray) -> np.ndarray:
    """Return the DAPI (blue) channel as a grey ``(H, W, 3)`` uint8 image."""
    blue = rgb[..., 2]
    return np.repeat(blue[..., None], 3, axis=2)


def dapi_channel(rgb: np.ndarray) -> np.ndarray:
    """Return the ``(H, W)`` uint8 DAPI intensity: the blue channel, or grey for a grey image."""
    if np.array_equal(rgb[..., 0], rgb[..., 2]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0]
    return rgb[..., 2]
