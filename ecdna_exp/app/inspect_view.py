"""The Inspect tab: a patch, its DAPI view, its ground truth and the classical counter's detections."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np

from ecdna_exp import imaging
from ecdna_exp.app.drawing import draw_detections, label_overlay
from ecdna_exp.app.settings import AppSettings, DatasetIndex, ModelCache, compose_config
from ecdna_exp.data import Sample
from ecdna_exp.ground_truth import LabelMapError, count_classes, load_label_map
from ecdna_exp.models.base import Request

log = logging.getLogger(__name__)


@dataclass
class ImageChoice:
    """The image being looked at: its id, its file, and its dataset sample when it has one."""

    image_id: str
    path: Path
    sample: Sample | None = None


@dataclass
class Inspection:
    """Everything the Inspect tab shows for one image.

    ``rgb`` and ``dapi`` are ``(H, W, 3)`` uint8. ``overlay`` is the label map
    blended over ``rgb``, or None without a label map. ``counts_true`` contains
    ``num_nuclei``, ``num_chromosomes`` and ``num_ecDNA``, or is None without
    ground truth. ``centroids`` are the classical counter's ``(N, 2)``
    (row, column) detections in pixels, drawn on ``detections``.
    """

    image_id: str
    rgb: np.ndarray
    dapi: np.ndarray
    detections: np.ndarray
    centroids: np.ndarray
    overlay: np.ndarray | None = None
    counts_true: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def count_classical(self) -> int:
        return len(self.centroids)


def choose_upload(index: DatasetIndex, path: str | Path) -> ImageChoice:
    """Describe an uploaded file; it gets ground truth only if it is a copy of a dataset patch."""
    path = Path(path)
    return ImageChoice(path.stem, path, index.match_file(path))


def detect_classical(cache: ModelCache, settings: AppSettings, image_id: str, rgb: np.ndarray) -> np.ndarray:
    """Run the classical counter of ``conf/model/classical.yaml`` on one image.

    Returns
    -------
    np.ndarray
        ``(N, 2)`` float (row, column) centroids of its detections, in pixels.
    """
    model = cache.get(compose_config(settings, ["model=classical"]).model)
    message = {"role": "user", "content": [{"type": "image", "image": rgb}]}
    response = model.generate([Request(image_id, [message])])[0]
    if not response.ok:
        raise RuntimeError(f"classical counter failed on {image_id}: {response.error}")
    return model.last_centroids[image_id]


def inspect_image(choice: ImageChoice, cache: ModelCache, settings: AppSettings) -> Inspection:
    """Load an image and compute what the Inspect tab shows.

    Raises
    ------
    ImageLoadError
        If the image file cannot be read.
    LabelMapError
        If the image's label file cannot be read.
    """
    rgb = imaging.load_image(choice.path)
    centroids = detect_classical(cache, settings, choice.image_id, rgb)
    inspection = Inspection(choice.image_id, rgb, imaging.dapi_view(rgb), draw_detections(rgb, centroids),
                            centroids)

    sample = choice.sample
    if sample is None:
        inspection.notes.append("No ground truth: the image is not a patch of the dataset folder.")
    elif sample.label_path is None:
        inspection.counts_true = dict(sample.counts)
        inspection.notes.append("No label map for this patch; the counts come from the counts CSV.")
    else:
        label_map = load_label_map(sample.label_path)
        if label_map.shape != rgb.shape[:2]:
            raise LabelMapError(f"label map {sample.label_path} has shape {label_map.shape}, "
                                f"but the image has {rgb.shape[:2]}")
        inspection.counts_true = count_classes(label_map)
        inspection.overlay = label_overlay(rgb, label_map)
    return inspection


def counts_markdown(inspection: Inspection) -> str:
    """Format the ground-truth and classical counts of an inspection as a Markdown table."""
    lines = ["| | ecDNA | chromosomes | nuclei |", "|---|---|---|---|"]
    if inspection.counts_true is not None:
        c = inspection.counts_true
        lines.append(f"| ground truth | {c['num_ecDNA']} | {c['num_chromosomes']} | {c['num_nuclei']} |")
    lines.append(f"| classical counter | {inspection.count_classical} | | |")
    return "\n".join(lines)


def show_choice(choice: ImageChoice | None, cache: ModelCache, settings: AppSettings) -> tuple:
    """Compute the Inspect tab's outputs: four images, the status text and the counts table.

    Failures come back as a status message with empty images, never as an exception.
    """
    empty = (None, None, None, None)
    if choice is None:
        return (*empty, "Pick a dataset image or upload one.", "")
    try:
        inspection = inspect_image(choice, cache, settings)
    except (imaging.ImageLoadError, LabelMapError) as error:
        log.warning("cannot inspect %s: %s", choice.path, error)
        gr.Warning(str(error))
        return (*empty, f"**Error:** {error}", "")
    except Exception as error:  # The page shows every failure as a message, not a traceback.
        log.exception("inspecting %s failed", choice.path)
        gr.Warning(f"inspecting {choice.image_id} failed: {error}")
        return (*empty, f"**Error:** inspecting {choice.image_id} failed: {error}", "")
    height, width = inspection.rgb.shape[:2]
    status = " ".join([f"**{inspection.image_id}**, {width} x {height} pixels.", *inspection.notes])
    return (inspection.rgb, inspection.dapi, inspection.overlay, inspection.detections,
            status, counts_markdown(inspection))


def build_inspect_section(settings: AppSettings, index: DatasetIndex, cache: ModelCache) -> gr.State:
    """Lay out the image choice and the four views.

    Returns the state that contains the current :class:`ImageChoice`, for the Ask section.
    """
    choice_state = gr.State(None)
    image_ids = list(index.samples)
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            dataset_label = (f"Dataset image ({len(image_ids)} in {index.root})" if image_ids
                             else "Dataset image (no dataset folder)")
            dataset_choice = gr.Dropdown(image_ids, value=None, label=dataset_label, elem_id="dataset-image")
            upload = gr.File(label="or upload an image (TIFF, PNG, JPEG)", type="filepath",
                             file_types=list(imaging.IMAGE_SUFFIXES), elem_id="upload")
        with gr.Column(scale=4):
            with gr.Row():
                image_kwargs = {"type": "numpy", "format": "png", "interactive": False, "height": 280}
                rgb = gr.Image(label="image", **image_kwargs)
                dapi = gr.Image(label="DAPI view", **image_kwargs)
                overlay = gr.Image(label="ground-truth labels", **image_kwargs)
                detections = gr.Image(label="classical counter", **image_kwargs)
            gr.Markdown("Label colours: ecDNA magenta, chromosomes green, nuclei yellow. "
                        "Circles mark the classical counter's detections.")
            with gr.Row():
                status = gr.Markdown("Pick a dataset image or upload one.", elem_id="inspect-status")
                counts = gr.Markdown("", elem_id="inspect-counts")
    outputs = [rgb, dapi, overlay, detections, status, counts]

    def on_dataset_choice(image_id: str | None):
        sample = index.samples.get(image_id) if image_id else None
        choice = ImageChoice(sample.image_id, sample.path, sample) if sample else None
        return (choice, *show_choice(choice, cache, settings))

    def on_upload(path: str | None):
        choice = choose_upload(index, path) if path else None
        return (choice, gr.update(value=None), *show_choice(choice, cache, settings))

    dataset_choice.input(on_dataset_choice, [dataset_choice], [choice_state, *outputs])
    upload.upload(on_upload, [upload], [choice_state, dataset_choice, *outputs])
    return choice_state
