import numpy as np
import pytest

from ecdna_exp.cache import AnswerCache
from ecdna_exp.data import Dataset, Sample
from ecdna_exp.experiment import POINTS, Experiment, ExperimentSettings
from ecdna_exp.models.base import CountingModel, Response
from ecdna_exp.points import localisation_scores, parse_points
from ecdna_exp.prompts import PromptSpec


def test_parse_points_in_pixels():
    points = parse_points("ecDNA at (10, 20), (30.5,40) and [300, 5]. Count: 3", (256, 256))
    assert points.tolist() == [[20.0, 10.0], [40.0, 30.5]]


def test_parse_points_per_mille_and_boxes():
    text = "<|box_start|>(100,200),(120,220)<|box_end|> and (500,500)"
    points = parse_points(text, (256, 512), "per_mille")
    assert points.tolist() == [[pytest.approx(53.76), pytest.approx(56.32)], [128.0, 256.0]]


def test_parse_points_without_positions():
    assert parse_points("I see 4 ecDNA.", (64, 64)).shape == (0, 2)
    assert parse_points(None, (64, 64)).shape == (0, 2)
    with pytest.raises(ValueError, match="invalid coordinates"):
        parse_points("(1, 2)", (64, 64), "inches")


def test_localisation_scores_micro_average():
    assert localisation_scores(6, 2, 4) == {"loc_precision": 0.75, "loc_recall": 0.6,
                                            "loc_f1": pytest.approx(2 * 0.75 * 0.6 / 1.35)}
    assert localisation_scores(0, 0, 0) == {"loc_precision": 0.0, "loc_recall": 0.0, "loc_f1": 0.0}


class PointingModel(CountingModel):
    name = "pointing"
    batch_size = 4

    def __init__(self, answers):
        self.answers = answers

    def generate(self, requests):
        return [Response(self.answers[r.image_id]) for r in requests]


def test_point_prompt_scores_positions(tmp_path):
    label_map = np.zeros((32, 32), dtype=np.uint8)
    label_map[4:6, 4:6] = 3
    label_map[20:22, 10:12] = 3
    label_map[28, 28] = 3
    sample = Sample("a", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": 3},
                    rgb=np.zeros((32, 32, 3), np.uint8), label_map=label_map)
    unparsed = Sample("b", {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": 3},
                      rgb=np.zeros((32, 32, 3), np.uint8), label_map=label_map)
    dataset = Dataset("t", "memory", [sample, unparsed], [], "d")
    model = PointingModel({"a": "(5, 5), (11, 21), (0, 31). Count: 3", "b": "(5, 5) (28, 28)"})
    prompt = PromptSpec("point_count", ("Point at {width}x{height}.",), points="pixels")
    result = Experiment(model, dataset, prompt, ExperimentSettings(bootstrap_resamples=20),
                        AnswerCache(None), tmp_path).run()
    rows = result.predictions.set_index("image_id")
    trial_rows = result.trial_predictions.set_index("image_id")
    assert rows.loc["a", "count_pred"] == 3
    assert rows.loc["b", "count_pred"] == 2
    assert rows.loc["b", "parse_status"] == POINTS
    assert trial_rows.loc["a", ["loc_tp", "loc_fp", "loc_fn"]].tolist() == [2, 1, 1]
    assert trial_rows.loc["b", ["loc_tp", "loc_fp", "loc_fn"]].tolist() == [2, 0, 1]
    assert result.metrics["loc_precision"] == pytest.approx(4 / 5)
    assert result.metrics["loc_recall"] == pytest.approx(4 / 6)
