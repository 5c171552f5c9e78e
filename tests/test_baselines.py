import numpy as np
import pytest

from ecdna_exp.data import load_ecseg_folder, load_synthetic
from ecdna_exp.imaging import dapi_channel
from ecdna_exp.models.base import Request
from ecdna_exp.models.baselines import ClassicalCounter, ConstantCounter, detect_ecdna
from ecdna_exp.prompts import PromptSpec, build_opening

SPEC = PromptSpec(name="test", turns=("How many ecDNA?",))


def _request(image_id, rgb):
    return Request(image_id, build_opening(SPEC, rgb))


def test_constant_answers_configured_value():
    model = ConstantCounter(value=7)
    answers = model.generate([_request("a", np.zeros((4, 4, 3), np.uint8))] * 3)
    assert [a.answer_text for a in answers] == ["7", "7", "7"]
    with pytest.raises(ValueError, match=">= 0"):
        ConstantCounter(value=-1)


def test_detect_ecdna_finds_isolated_dots_only():
    dapi = np.full((64, 64), 10, dtype=np.uint8)
    for row, col in [(10, 10), (10, 50), (50, 30)]:
        dapi[row - 1 : row + 2, col - 1 : col + 2] = 200
    dapi[30:34, 5:45] = 220  # a chromosome-sized rod
    dapi[36, 20:22] = 200  # a dot touching the rod's margin belongs to the rod
    centroids = detect_ecdna(dapi)
    assert sorted(map(tuple, np.rint(centroids).astype(int).tolist())) == [(10, 10), (10, 50), (50, 30)]


def test_classical_close_to_truth_on_synthetic():
    samples = load_synthetic(12, seed=50)
    counts_pred = [len(detect_ecdna(dapi_channel(s.rgb))) for s in samples]
    counts_true = [s.count_true for s in samples]
    assert np.mean(np.abs(np.subtract(counts_pred, counts_true))) < 1.5


def test_classical_beats_median_guess_on_ecseg(sample_dir):
    samples = load_ecseg_folder(sample_dir)[::3]
    model = ClassicalCounter()
    answers = model.generate([_request(s.image_id, s.load_rgb()) for s in samples])
    counts_pred = np.array([float(a.answer_text) for a in answers])
    counts_true = np.array([s.count_true for s in samples])
    mae = np.abs(counts_pred - counts_true).mean()
    mae_median = np.abs(counts_true - np.median(counts_true)).mean()
    assert mae < 0.75 * mae_median
    assert set(model.last_centroids) == {s.image_id for s in samples}
