"""Tools whose output is shown to a VLM beside the query image.

A tool maps a query image to placeholder values for the prompt's turns and
extra images for the first turn. ``segmenter`` runs the learned segmenter and
gives its overlay (predicted nuclei, chromosomes and ecDNA in the ecSeg
colours) and ``{candidate_count}``, its ecDNA count, so the model can check
and correct a tool's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOOLS = ("segmenter",)


@dataclass
class ToolOutput:
    """Placeholder values for the turns and images to show after the query image."""

    fill: dict[str, Any] = field(default_factory=dict)
    images: list[np.ndarray] = field(default_factory=list)


def _segmenter_tool() -> Callable[[np.ndarray], ToolOutput]:
    from ecdna_exp.models.segmenter import overlay
    from ecdna_exp.segmenter.predict import count_label_map, load_segmenter

    segmenter = load_segmenter()

    def run(rgb: np.ndarray) -> ToolOutput:
        label_map = segmenter.predict_label_map(rgb)
        counts = count_label_map(label_map, segmenter.min_areas)
        return ToolOutput(fill={"candidate_count": counts["num_ecDNA"]}, images=[overlay(rgb, label_map)])

    return run


def make_tool(name: str | None) -> Callable[[np.ndarray], ToolOutput] | None:
    """Return the tool called ``name`` as a function of an ``(H, W, 3)`` uint8 image, or None for no tool."""
    if name is None:
        return None
    if name == "segmenter":
        return _segmenter_tool()
    raise ValueError(f"invalid prompt tool {name!r}; expected one of {TOOLS} or null")
