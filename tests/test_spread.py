import numpy as np

from ecdna_exp.models.base import CountingModel, GenerationSettings, Response
from ecdna_exp.models.baselines import ClassicalCounter, detect_ecdna
from ecdna_exp.prompts import PromptSpec
from ecdna_exp.spread import count_spread

PROMPT = PromptSpec("baseline", ("How many ecDNA?",))


def _dotted_spread():
    """A 600 x 700 spread with 3 x 3 dots every 37 pixels, many of them on tile borders."""
    rgb = np.zeros((600, 700, 3), dtype=np.uint8)
    rgb[..., 2] = 8
    dots = [(row, col) for row in range(20, 580, 37) for col in range(20, 680, 37)]
    for row, col in dots:
        rgb[row - 1 : row + 2, col - 1 : col + 2, 2] = 220
    return rgb, len(dots)


class TextCounter(CountingModel):
    """Answers in words with the number of dots it sees, like a VLM that counts well."""

    name = "text"

    def generate(self, requests):
        dapi = requests[0].query_image()[..., 2]
        return [Response(f"I count {len(detect_ecdna(dapi))} ecDNA.")]


def test_localising_model_counts_each_dot_once():
    rgb, n_dots = _dotted_spread()
    result = count_spread(rgb, ClassicalCounter(), PROMPT, GenerationSettings(), localises=True)
    assert result.count == n_dots
    assert result.centroids.shape == (n_dots, 2)
    assert sum(result.tile_counts) == n_dots


def test_text_model_tile_counts_are_summed():
    rgb, n_dots = _dotted_spread()
    result = count_spread(rgb, TextCounter(), PROMPT, GenerationSettings())
    assert result.unparsed_tiles == 0
    assert result.count == sum(result.tile_counts)
    # Dots cut by a core border can be counted twice or missed, as the tiling module documents.
    assert abs(result.count - n_dots) <= 0.1 * n_dots


def test_unparsed_tiles_are_reported():
    class Refuser(CountingModel):
        name = "refuser"

        def generate(self, requests):
            return [Response("I cannot determine that.") for _ in requests]

    rgb, _ = _dotted_spread()
    result = count_spread(rgb, Refuser(), PROMPT, GenerationSettings())
    assert result.count == 0
    assert result.unparsed_tiles == len(result.tile_counts)
