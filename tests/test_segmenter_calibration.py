"""Tests of the segmenter's separation weights, weighted loss and ecDNA threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ecdna_exp.ground_truth import BACKGROUND, CHROMOSOME, ECDNA, NUCLEUS, count_components
from ecdna_exp.models.base import ModelConfigError
from ecdna_exp.segmenter.dataset import Patch, augment, separation_mask
from ecdna_exp.segmenter.evaluate import choose_ecdna_threshold
from ecdna_exp.segmenter.net import NetConfig, UNet
from ecdna_exp.segmenter.predict import Segmenter
from ecdna_exp.segmenter.train import loss_function


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(NetConfig(base_channels=4, depth=2))


def test_separation_mask_marks_gap_between_two_ecdna():
    label_map = np.zeros((12, 12), dtype=np.uint8)
    label_map[2, 2] = ECDNA
    label_map[2, 5] = ECDNA
    label_map[9, 9] = ECDNA
    mask = separation_mask(label_map, radius=2)
    # Columns 3 and 4 lie within 2 px of both dots at (2, 2) and (2, 5). The
    # lone dot at (9, 9) has no partner, so nothing around it is marked.
    assert sorted(map(tuple, np.argwhere(mask).tolist())) == [
        (row, col) for row in range(5) for col in (3, 4)
    ]
    assert not mask[label_map == ECDNA].any()

    single_blob = np.zeros((8, 8), dtype=np.uint8)
    single_blob[3:5, 3:5] = ECDNA
    assert not separation_mask(single_blob).any()


def test_augment_turns_weights_with_labels():
    rng = np.random.default_rng(1)
    label_map = rng.choice([BACKGROUND, ECDNA], size=(32, 32), p=[0.9, 0.1]).astype(np.uint8)
    dapi = rng.random((32, 32), dtype=np.float32)
    weights = np.where(separation_mask(label_map), 10.0, 1.0).astype(np.float32)
    for seed in range(8):
        plain = augment(dapi, label_map, np.random.default_rng(seed), crop=32)
        dapi_view, labels_view, weights_view = augment(
            dapi, label_map, np.random.default_rng(seed), crop=32, pixel_weights=weights
        )
        # The weights do not change the draws, and they follow the labels
        # (whole-patch crops, so no component is cut at the crop edge).
        np.testing.assert_array_equal(plain[0], dapi_view)
        np.testing.assert_array_equal(plain[1], labels_view)
        np.testing.assert_array_equal(weights_view == 10.0, separation_mask(labels_view.astype(np.uint8)))


def test_loss_pixel_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    class_weights = torch.tensor([1.0, 1.0, 1.0, 8.0])
    plain = loss_function(logits, target, class_weights)
    torch.testing.assert_close(loss_function(logits, target, class_weights, torch.ones(2, 8, 8)), plain)

    # Weighting up one badly predicted pixel raises the loss.
    worst = F.cross_entropy(logits, target, reduction="none").flatten().argmax()
    pixel_weights = torch.ones(2 * 8 * 8)
    pixel_weights[worst] = 50.0
    assert loss_function(logits, target, class_weights, pixel_weights.view(2, 8, 8)) > plain + 0.1


def _probabilities(ecdna: np.ndarray, other: int = CHROMOSOME) -> np.ndarray:
    """Return ``(4, H, W)`` probabilities: ``ecdna`` for ecDNA, the rest 2:1 to ``other`` and background."""
    probabilities = np.zeros((4,) + ecdna.shape, dtype=np.float32)
    probabilities[ECDNA] = ecdna
    probabilities[other] = (1 - ecdna) * 2 / 3
    probabilities[BACKGROUND] = (1 - ecdna) / 3
    return probabilities


def test_threshold_labels_pixels(net):
    ecdna = np.array([[0.9, 0.6, 0.35, 0.1]], dtype=np.float32)
    probabilities = _probabilities(ecdna, other=NUCLEUS)
    assert Segmenter(net).label_map_from_probabilities(probabilities).tolist() == [
        [ECDNA, ECDNA, NUCLEUS, NUCLEUS]
    ]
    thresholded = Segmenter(net, {"ecdna_threshold": 0.7})
    assert thresholded.label_map_from_probabilities(probabilities).tolist() == [
        [ECDNA, NUCLEUS, NUCLEUS, NUCLEUS]
    ]
    low = Segmenter(net, {"ecdna_threshold": 0.3})
    assert low.label_map_from_probabilities(probabilities).tolist() == [[ECDNA, ECDNA, ECDNA, NUCLEUS]]


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_threshold_out_of_range_rejected(net, threshold):
    with pytest.raises(ModelConfigError, match="ecdna_threshold"):
        Segmenter(net, {"ecdna_threshold": threshold})


def test_choose_threshold_splits_merged_neighbours(net):
    # Two true ecDNA 3 px apart. The network's ecDNA probability is 0.95 on
    # both and 0.62 on the pixels between them, so the most probable class
    # merges them into one component. Thresholds from 0.65 up keep them apart,
    # and the lowest such candidate wins.
    label_map = np.zeros((16, 16), dtype=np.uint8)
    label_map[6:9, 3:6] = ECDNA
    label_map[6:9, 9:12] = ECDNA
    ecdna = np.where(label_map == ECDNA, 0.95, 0.02).astype(np.float32)
    ecdna[6:9, 6:9] = 0.62
    patches = [Patch("pair", np.zeros((16, 16), np.float32), label_map)]
    segmenter = Segmenter(net)
    assert count_components(segmenter.label_map_from_probabilities(_probabilities(ecdna)) == ECDNA) == 1

    threshold = choose_ecdna_threshold(segmenter, patches, [_probabilities(ecdna)])
    assert threshold == 0.65
    assert segmenter.ecdna_threshold == 0.65
    assert count_components(segmenter.label_map_from_probabilities(_probabilities(ecdna)) == ECDNA) == 2


def test_counter_threshold_override():
    from ecdna_exp.models.segmenter import SegmenterCounter

    stored = SegmenterCounter()
    assert stored.describe()["ecdna_threshold"] == 0.95
    override = SegmenterCounter(ecdna_threshold=0.6)
    assert override.describe()["ecdna_threshold"] == 0.6
    # A blob 3 rows high and 7 columns wide whose ecDNA probability dips to
    # 0.8 in its middle column: one component at 0.6, two at the stored 0.95.
    ecdna = np.zeros((12, 12), dtype=np.float32)
    ecdna[4:7, 2:9] = 0.99
    ecdna[4:7, 5] = 0.8
    probabilities = _probabilities(ecdna)
    assert count_components(override.segmenter.label_map_from_probabilities(probabilities) == ECDNA) == 1
    assert count_components(stored.segmenter.label_map_from_probabilities(probabilities) == ECDNA) == 2
    with pytest.raises(ModelConfigError, match="ecdna_threshold"):
        SegmenterCounter(ecdna_threshold=1.2)


def test_train_rejects_nonpositive_separation_weight(capsys):
    from ecdna_exp.segmenter.train import parse_args

    assert parse_args(["--separation-weight", "1"]).separation_weight == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--separation-weight", "0"])
    assert "--separation-weight must be positive, got 0.0" in capsys.readouterr().err
