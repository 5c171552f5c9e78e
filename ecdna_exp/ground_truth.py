"""Ground-truth counts from ecSeg label maps.

An ecSeg label map assigns each pixel one of four classes. The count of a class
is the number of its 8-connected components (a 3x3 structuring element), the
rule used to score model counts against ecSeg segmentations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

BACKGROUND, NUCLEUS, CHROMOSOME, ECDNA = 0, 1, 2, 3
CLASS_NAMES = {BACKGROUND: "background", NUCLEUS: "nucleus", CHROMOSOME: "chromosome", ECDNA: "ecDNA"}

#: Colours of the colour-mapped ecSeg label PNGs, by class index.
CLASS_COLOURS = {
    BACKGROUND: (0x38, 0x6C, 0xB0),
    NUCLEUS: (0xFF, 0xFF, 0x99),
    CHROMOSOME: (0x7F, 0xC9, 0x7F),
    ECDNA: (0xF0, 0x02, 0x7F),
}

#: 8-connectivity: diagonal neighbours belong to the same component.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class LabelMapError(ValueError):
    """A label file that cannot be decoded into the four ecSeg classes."""


def decode_label_map(rgb: np.ndarray) -> np.ndarray:
    """Map a colour-mapped label image to class indices.

    Parameters
    ----------
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 image whose pixels use only :data:`CLASS_COLOURS`.

    Returns
    -------
    np.ndarray
        ``(H, W)`` uint8 label map with values 0-3.

    Raises
    ------
    LabelMapError
        If any pixel has a colour outside the ecSeg palette.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise LabelMapError(f"expected an (H, W, 3) colour label image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    label_map = np.full(packed.shape, 255, dtype=np.uint8)
    for class_index, (r, g, b) in CLASS_COLOURS.items():
        label_map[packed == ((r << 16) | (g << 8) | b)] = class_index
    unknown = label_map == 255
    if unknown.any():
        row, col = np.argwhere(unknown)[0]
        colour = "#{:02x}{:02x}{:02x}".format(*rgb[row, col])
        raise LabelMapError(
            f"{int(unknown.sum())} pixels have colours outside the ecSeg palette, "
            f"first {colour} at row {row}, column {col}"
        )
    return label_map


def load_label_map(path: str | Path) -> np.ndarray:
    """Read a label map from a colour-mapped PNG, a class-index PNG or a ``.npy`` file.

    A single-channel PNG or a ``.npy`` array is taken as class indices
    directly; a 3-channel PNG is decoded with :func:`decode_label_map`.

    Returns
    -------
    np.ndarray
        ``(H, W)`` uint8 label map with values 0-3.

    Raises
    ------
    LabelMapError
        If the file cannot be read or holds values outside 0-3.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB") if image.mode in ("P", "RGBA") else image)
    except (OSError, ValueError) as error:
        raise LabelMapError(f"cannot read label file {path}: {error}") from error

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        return decode_label_map(array)
    if array.ndim != 2:
        raise LabelMapError(f"label file {path} has shape {array.shape}, expected (H, W) or (H, W, 3)")
    if array.size and (array.min() < 0 or array.max() > ECDNA):
        raise LabelMapError(f"label file {path} has class values {array.min()}..{array.max()}, expected 0..3")
    return array.astype(np.uint8)


def count_components(mask: np.ndarray) -> int:
    """Count 8-connected components in a boolean ``(H, W)`` mask."""
    _, n_components = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return int(n_components)


def count_classes(label_map: np.ndarray) -> dict[str, int]:
    """Count the components of nuclei, chromosomes and ecDNA in a label map.

    Returns
    -------
    dict
        ``{"num_nuclei": int, "num_chromosomes": int, "num_ecDNA": int}``,
        the column names of ecSeg's counts CSV files.
    """
    return {
        "num_nuclei": count_components(label_map == NUCLEUS),
        "num_chromosomes": count_components(label_map == CHROMOSOME),
        "num_ecDNA": count_components(label_map == ECDNA),
    }


def component_centroids(mask: np.ndarray) -> np.ndarray:
    """Return the ``(N, 2)`` float array of (row, column) centroids of the mask's components, in pixels."""
    components, n_components = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n_components == 0:
        return np.zeros((0, 2), dtype=float)
    centroids = ndimage.center_of_mass(mask, components, range(1, n_components + 1))
    return np.asarray(centroids, dtype=float).reshape(-1, 2)
