"""Datasets of metaphase patches with ground-truth counts.

Two sources are supported:

``ecseg`` (:func:`load_ecseg_folder`)
    A folder of patches. Images are ``*.tif``, ``*.tiff``, ``*.png``, ``*.jpg`` or
    ``*.jpeg`` files, found in ``images/`` or, in the public ecSeg layout, in
    ``test_im/`` (``train_im/`` is not read). Ground truth comes from, in order:
    label maps with the image's stem in ``labels/`` or ``test_mask/``
    (colour-mapped or class-index ``.png``, or ``.npy`` class maps); a counts CSV
    (``counts.csv``, ``test_images_counts.csv`` or ``dataset.counts_csv``) with
    columns ``image, num_nuclei, num_chromosomes, num_ecDNA`` and an optional
    unnamed first column; or, with ``ground_truth: segmenter``, the learned
    segmenter. A patch without ground truth is skipped with a warning.

``synthetic`` (:func:`load_synthetic`)
    Patches drawn by :mod:`ecdna_exp.synthetic` from consecutive seeds.

Each dataset is split into the evaluated samples and a disjoint pool of
few-shot examples, both chosen with the run's seed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecdna_exp import imaging
from ecdna_exp.ground_truth import count_classes, load_label_map

log = logging.getLogger(__name__)

COUNT_COLUMNS = ("num_nuclei", "num_chromosomes", "num_ecDNA")
IMAGE_DIRS = ("images", "test_im")
LABEL_DIRS = ("labels", "test_mask")
COUNTS_FILES = ("counts.csv", "test_images_counts.csv")


@dataclass
class Sample:
    """One patch and its ground truth.

    ``counts`` contains ``num_nuclei``, ``num_chromosomes`` and ``num_ecDNA``.
    ``path`` is None for generated images, whose pixels are kept in ``rgb``
    and whose label map is kept in ``label_map``.
    """

    image_id: str
    counts: dict[str, int]
    path: Path | None = None
    label_path: Path | None = None
    rgb: np.ndarray | None = field(default=None, repr=False)
    label_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def count_true(self) -> int:
        return self.counts["num_ecDNA"]

    def load_label_map(self) -> np.ndarray | None:
        """Return the ``(H, W)`` uint8 ground-truth label map, or None when only counts are known."""
        if self.label_map is not None:
            return self.label_map
        return load_label_map(self.label_path) if self.label_path is not None else None

    def load_rgb(self, view: str = "rgb") -> np.ndarray:
        """Return the patch as ``(H, W, 3)`` uint8; ``view="dapi"`` gives the grey DAPI channel.

        Raises :class:`ecdna_exp.imaging.ImageLoadError` for an unreadable file.
        """
        rgb = self.rgb if self.rgb is not None else imaging.load_image(self.path)
        if view == "dapi":
            return imaging.dapi_view(rgb)
        if view != "rgb":
            raise ValueError(f"invalid image view {view!r}; expected 'rgb' or 'dapi'")
        return rgb


@dataclass
class Dataset:
    """Evaluated samples, the disjoint few-shot pool, and what identifies them."""

    name: str
    source: str
    samples: list[Sample]
    pool: list[Sample]
    digest: str

    def to_frame(self) -> pd.DataFrame:
        rows = [{"image_id": s.image_id, "path": str(s.path or ""), **s.counts} for s in self.samples]
        return pd.DataFrame(rows, columns=["image_id", "path", *COUNT_COLUMNS])


def read_counts_csv(path: str | Path) -> dict[str, dict[str, int]]:
    """Read an ecSeg counts CSV into ``{image stem: counts}``.

    The file may start with an unnamed, empty column, as ecSeg writes it.
    """
    frame = pd.read_csv(path)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed")]]
    missing = [c for c in ("image", *COUNT_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"counts file {path} lacks columns {missing}; found {list(frame.columns)}")
    return {
        Path(str(row["image"])).stem: {c: int(row[c]) for c in COUNT_COLUMNS}
        for _, row in frame.iterrows()
    }


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).exists()), None)


def _find_label(label_dir: Path | None, stem: str) -> Path | None:
    if label_dir is None:
        return None
    for suffix in (".png", ".npy"):
        candidate = label_dir / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _ground_truth_counts(
    image_path: Path, label_path: Path | None, csv_counts: dict[str, dict[str, int]], mode: str
) -> dict[str, int] | None:
    stem = image_path.stem
    if mode == "segmenter":
        from ecdna_exp.segmenter import segment_counts

        return segment_counts(imaging.load_image(image_path))
    if mode in ("auto", "labels") and label_path is not None:
        counts = count_classes(load_label_map(label_path))
        if stem in csv_counts and csv_counts[stem] != counts:
            log.warning("counts CSV disagrees with label map for %s: %s vs %s", stem, csv_counts[stem], counts)
        return counts
    if mode in ("auto", "csv") and stem in csv_counts:
        return csv_counts[stem]
    return None


def load_ecseg_folder(root: str | Path, *, ground_truth: str = "auto", counts_csv: str | None = None) -> list[Sample]:
    """List the patches of an ecSeg-style folder with their ground-truth counts.

    Parameters
    ----------
    root : str or Path
        Folder laid out as described in this module's docstring.
    ground_truth : {"auto", "labels", "csv", "segmenter"}
        Where counts come from; ``auto`` prefers label maps over the CSV.
    counts_csv : str, optional
        Path of a counts CSV, when it is not one of the standard names in ``root``.

    Returns
    -------
    list of Sample
        Sorted by image id; images are not read yet.
    """
    root = Path(root).expanduser()
    if ground_truth not in ("auto", "labels", "csv", "segmenter"):
        raise ValueError(f"invalid dataset.ground_truth {ground_truth!r}; expected auto, labels, csv or segmenter")
    image_dir = _first_existing(root, IMAGE_DIRS)
    if image_dir is None:
        raise FileNotFoundError(f"no image folder in {root}; expected one of {IMAGE_DIRS}")
    label_dir = _first_existing(root, LABEL_DIRS)
    csv_path = Path(counts_csv) if counts_csv else _first_existing(root, COUNTS_FILES)
    csv_counts = read_counts_csv(csv_path) if csv_path else {}

    samples, skipped = [], []
    image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in imaging.IMAGE_SUFFIXES)
    for image_path in image_paths:
        label_path = _find_label(label_dir, image_path.stem)
        counts = _ground_truth_counts(image_path, label_path, csv_counts, ground_truth)
        if counts is None:
            skipped.append(image_path.name)
            continue
        samples.append(Sample(image_path.stem, counts, path=image_path, label_path=label_path))
    if skipped:
        log.warning("%d images in %s have no ground truth and are skipped, e.g. %s", len(skipped), root, skipped[:3])
    if not samples:
        raise ValueError(f"no images with ground truth in {root} (ground_truth={ground_truth})")
    return samples


def load_synthetic(n_images: int, *, seed: int, size: int = 256, style: dict[str, Any] | None = None) -> list[Sample]:
    """Generate ``n_images`` synthetic patches from seeds ``seed, seed + 1, ...``."""
    from ecdna_exp.synthetic import SyntheticStyle, generate_patch

    style_obj = SyntheticStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in (style or {}).items()})
    samples = []
    for index in range(n_images):
        rgb, label_map = generate_patch(seed + index, size, style_obj)
        samples.append(Sample(f"synthetic-{seed + index:05d}", count_classes(label_map), rgb=rgb, label_map=label_map))
    return samples


def split_samples(samples: list[Sample], *, limit: int | None, pool_size: int, seed: int) -> tuple[list, list]:
    """Split samples into evaluated images and a disjoint few-shot pool, seeded.

    The samples are shuffled once with ``seed``. The pool is taken from the
    end of that order and the evaluated images from its start. So with a
    ``limit`` the same images are evaluated whether or not a pool is
    reserved, and zero-shot and few-shot runs stay comparable image by
    image. ``limit=None`` evaluates every sample outside the pool.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    pool_size = min(pool_size, max(len(samples) - 1, 0))
    pool_indices = order[len(order) - pool_size :] if pool_size else order[:0]
    rest = order[: len(order) - pool_size]
    if limit is not None and limit < len(rest):
        rest = rest[:limit]
    evaluated = [samples[i] for i in sorted(rest)]
    pool = [samples[i] for i in sorted(pool_indices)]
    return evaluated, pool


def dataset_digest(samples: list[Sample]) -> str:
    """Hash the ids, ground truth and pixels-or-file-bytes of samples into a short hex digest."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.image_id.encode())
        digest.update(repr(sorted(sample.counts.items())).encode())
        if sample.rgb is not None:
            digest.update(sample.rgb.tobytes())
        elif sample.path is not None and sample.path.exists():
            digest.update(sample.path.read_bytes())
    return digest.hexdigest()[:16]


#: Seeds of generated few-shot examples start here, far from the evaluated images' seeds.
SYNTHETIC_POOL_SEED_OFFSET = 1_000_000


def load_dataset(cfg: Any, *, seed: int, shots: int = 0) -> Dataset:
    """Build the dataset described by the ``dataset`` config group.

    A few-shot pool of ``cfg.pool_size`` images is reserved only when
    ``shots > 0``. Generated datasets draw their pool from separate seeds, so
    their evaluated images never change.
    """
    kind = cfg.kind
    pool_size = int(cfg.pool_size) if shots > 0 else 0
    if kind == "synthetic":
        evaluated = load_synthetic(cfg.n_images, seed=cfg.seed, size=cfg.size, style=cfg.get("style"))
        if cfg.get("limit"):
            evaluated = evaluated[: cfg.limit]
        pool = load_synthetic(pool_size, seed=cfg.seed + SYNTHETIC_POOL_SEED_OFFSET, size=cfg.size,
                              style=cfg.get("style"))
        source = f"synthetic://seed={cfg.seed}&size={cfg.size}"
    elif kind == "ecseg":
        if not cfg.get("root"):
            raise ValueError("dataset.root is not set; pass dataset.root=/path/to/patches")
        samples = load_ecseg_folder(cfg.root, ground_truth=cfg.ground_truth, counts_csv=cfg.get("counts_csv"))
        evaluated, pool = split_samples(samples, limit=cfg.get("limit"), pool_size=pool_size, seed=seed)
        source = str(Path(cfg.root).expanduser().resolve())
    else:
        raise ValueError(f"invalid dataset.kind {kind!r}; expected 'ecseg' or 'synthetic'")

    log.info("dataset %s: %d evaluated images, %d in the few-shot pool", cfg.name, len(evaluated), len(pool))
    return Dataset(cfg.name, source, evaluated, pool, dataset_digest(evaluated))
