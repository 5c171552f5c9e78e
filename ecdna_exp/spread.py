"""Count ecDNA in a whole metaphase spread with any model, tile by tile.

``python -m ecdna_exp.spread IMAGE [--model NAME] [--override KEY=VALUE ...]``

The spread is cut into overlapping tiles (:mod:`ecdna_exp.segmenter.tiling`).
Models that report positions (the classical counter, the segmenter) see each
whole tile, and an object counts for the tile whose core contains its centroid.
Text-only models (VLMs) see each tile with everything outside its core
blacked out, and their parsed tile counts are summed; a tile whose answer
does not parse adds nothing and is reported.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from ecdna_exp.imaging import load_image
from ecdna_exp.models import build_model
from ecdna_exp.models.base import CountingModel, GenerationSettings, Request
from ecdna_exp.parsing import parse_count
from ecdna_exp.prompts import PromptSpec, build_opening
from ecdna_exp.segmenter.localisation import load_centroids, match_centroids
from ecdna_exp.segmenter.tiling import count_whole_spread

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class SpreadResult:
    """Total count of a spread, per-tile counts, positions when known, and unparsed tiles."""

    count: int
    tile_counts: list[int]
    centroids: np.ndarray | None
    unparsed_tiles: int


def count_spread(
    rgb: np.ndarray, model: CountingModel, prompt: PromptSpec, settings: GenerationSettings,
    *, tile: int = 256, overlap: int = 64, localises: bool = False,
) -> SpreadResult:
    """Count the ecDNA of an ``(H, W, 3)`` uint8 spread with ``model``, one request per tile."""
    unparsed = 0

    def ask(tile_rgb: np.ndarray):
        nonlocal unparsed
        (response,) = model.generate([Request("tile", build_opening(prompt, tile_rgb), settings)])
        if localises:
            return response.points if response.points is not None else np.zeros((0, 2))
        value = parse_count(response.answer_text).value if response.ok else None
        if value is None:
            unparsed += 1
            log.warning("tile answer not parsed: %r", response.answer_text or response.error)
            return 0
        return round(value)

    kind = "centroids" if localises else "count"
    result = count_whole_spread(rgb, ask, tile=tile, overlap=overlap, kind=kind)
    return SpreadResult(result.count, list(result.tile_counts), result.centroids, unparsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="spread image (TIFF, PNG or JPEG; 16-bit is rescaled)")
    parser.add_argument("--model", default="segmenter", help="model config name in conf/model (default segmenter)")
    parser.add_argument("--prompt", default="baseline", help="prompt config for text-only models")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override, e.g. checkpoint_dir=DIR")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels")
    parser.add_argument("--points", help="file of true ecDNA centroids, one 'row, column' per line")
    parser.add_argument("--radius", type=float, default=6.0, help="match radius in pixels for --points")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", f"prompt={args.prompt}", *args.override])
    model = build_model(cfg.model, lazy=False)
    localises = args.model in ("classical", "segmenter")
    settings = GenerationSettings(temperature=float(cfg.temperature), top_p=cfg.generation.top_p,
                                  top_k=cfg.generation.top_k, max_new_tokens=cfg.generation.max_new_tokens)
    try:
        result = count_spread(load_image(args.image), model, PromptSpec.from_config(cfg.prompt), settings,
                              tile=args.tile, overlap=args.overlap, localises=localises)
    finally:
        model.close()
    print(f"{args.image}: {result.count} ecDNA in {len(result.tile_counts)} tiles ({args.model})")
    if result.unparsed_tiles:
        print(f"{result.unparsed_tiles} tiles gave no parsable count and added nothing")
    if args.points and result.centroids is not None:
        match = match_centroids(result.centroids, load_centroids(args.points), args.radius)
        print(f"localisation within {args.radius:g} px: precision {match.precision:.3f}, "
              f"recall {match.recall:.3f}, F1 {match.f1:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
