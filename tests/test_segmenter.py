"""Tests of the learned segmenter, whole-spread tiling and centroid matching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecdna_exp.ground_truth import (
    CLASS_COLOURS,
    ECDNA,
    component_centroids,
    count_classes,
    count_components,
    load_label_map,
)
from ecdna_exp.imaging import load_image
from ecdna_exp.models.base import Request
from ecdna_exp.segmenter.localisation import load_centroids, match_centroids
from ecdna_exp.segmenter.tiling import count_whole_spread, segment_whole_spread, tile_grid

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SAMPLE = DATA / "ecseg_sample"
SNU16 = DATA / "full_images" / "SNU16.tif"
WEIGHTS = Path(__file__).resolve().parents[1] / "ecdna_exp" / "segmenter" / "weights" / "segmenter.pt"

# Floors just under the scores measured with the committed weights (torch 2.14
# on CPU, 8 averaged views, ecDNA threshold 0.95 and minimum area 5 chosen on
# the training patches): validation ecDNA MAE 1.39, r 0.991, F1 0.853, and an
# SNU16 count of 260 with F1 0.854. The MAE floor is the target itself, and
# the SNU16 range is the target, 246 +- 10%.
VAL_MAE_MAX = 1.5
VAL_R_MIN = 0.985
VAL_F1_MIN = 0.84
SNU16_SCALE = 1.0
SNU16_COUNT_RANGE = (222, 270)
SNU16_F1_MIN = 0.84
# Patch 110 (a training patch) has 57 ecDNA; the committed weights find 59.
PATCH_110_ERROR_MAX = 4


needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="ecSeg sample data not found in ../shared/data")
needs_snu16 = pytest.mark.skipif(not SNU16.is_file(), reason="SNU16 spread not found in ../shared/data")


@pytest.fixture(scope="module")
def segmenter():
    from ecdna_exp.segmenter.predict import Segmenter

    return Segmenter.load(WEIGHTS)


@pytest.fixture(scope="module")
def record():
    return json.loads(WEIGHTS.with_suffix(".json").read_text())


def test_weights_small_and_plain_tensors():
    assert WEIGHTS.stat().st_size < 10_000_000
    checkpoint = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "net_config"}
    assert checkpoint["net_config"]["num_classes"] == 4


def test_eight_views_make_prediction_equivariant(segmenter):
    from ecdna_exp.segmenter.predict import Segmenter

    assert segmenter.test_time_views == 8
    dapi = np.random.default_rng(0).random((64, 96), dtype=np.float32)
    probabilities = segmenter.predict_probabilities(dapi)
    turned = segmenter.predict_probabilities(np.ascontiguousarray(np.rot90(dapi)))
    mirrored = segmenter.predict_probabilities(np.ascontiguousarray(dapi[::-1]))
    np.testing.assert_allclose(turned, np.rot90(probabilities, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(mirrored, probabilities[:, ::-1], atol=1e-5)

    single_view = Segmenter(segmenter.net, {"test_time_views": 1})
    assert not np.allclose(single_view.predict_probabilities(dapi), probabilities, atol=1e-3)


def test_invalid_test_time_views_rejected(segmenter):
    from ecdna_exp.models.base import ModelConfigError
    from ecdna_exp.segmenter.predict import Segmenter

    with pytest.raises(ModelConfigError, match="test_time_views"):
        Segmenter(segmenter.net, {"test_time_views": 4})


def test_record_lists_disjoint_split(record):
    train_ids, val_ids = set(record["train_ids"]), set(record["val_ids"])
    assert len(train_ids) == 113
    assert len(val_ids) == 28
    assert not train_ids & val_ids
    assert record["training_seconds"] < 20 * 60


@needs_sample
def test_predict_shape_and_classes(segmenter):
    rgb = load_image(SAMPLE / "images" / "110.tif")
    from ecdna_exp.segmenter.dataset import dapi_input

    probabilities = segmenter.predict_probabilities(dapi_input(rgb))
    assert probabilities.shape == (4, 256, 256)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)

    label_map = segmenter.predict_label_map(rgb)
    assert label_map.shape == (256, 256)
    assert label_map.dtype == np.uint8
    assert set(np.unique(label_map)) <= {0, 1, 2, 3}
    assert (label_map == ECDNA).any()


def test_predict_odd_sized_image(segmenter):
    rgb = np.zeros((100, 75, 3), dtype=np.uint8)
    rgb[40:44, 30:34, 2] = 200
    label_map = segmenter.predict_label_map(rgb)
    assert label_map.shape == (100, 75)


def test_package_functions_use_committed_weights():
    from ecdna_exp.segmenter import predict_label_map, segment_counts

    rgb = np.zeros((256, 256, 3), dtype=np.uint8)
    assert predict_label_map(rgb).shape == (256, 256)
    assert segment_counts(rgb) == {"num_nuclei": 0, "num_chromosomes": 0, "num_ecDNA": 0}


@needs_sample
@pytest.mark.slow
def test_validation_split_scores(segmenter, record):
    from ecdna_exp.segmenter.dataset import load_patches
    from ecdna_exp.segmenter.evaluate import predict_patches, score_patches

    patches = load_patches(SAMPLE, record["val_ids"])
    scores = score_patches(patches, predict_patches(segmenter, patches), segmenter.min_areas)
    assert scores["ecDNA_mae"] <= VAL_MAE_MAX
    assert scores["ecDNA_pearson_r"] >= VAL_R_MIN
    assert scores["ecDNA_f1"] >= VAL_F1_MIN
    assert scores["ecDNA_mae"] == pytest.approx(record["val_scores"]["ecDNA_mae"])


@needs_snu16
@pytest.mark.slow
def test_snu16_whole_spread(segmenter):
    rgb = load_image(SNU16)
    centroids_true = load_centroids(SNU16.with_suffix(".txt"))
    assert len(centroids_true) == 246

    result = count_whole_spread(rgb, segmenter.ecdna_centroids, tile=256, overlap=64, scale=SNU16_SCALE)
    assert SNU16_COUNT_RANGE[0] <= result.count <= SNU16_COUNT_RANGE[1]
    assert result.centroids.shape == (result.count, 2)

    match = match_centroids(result.centroids, centroids_true, radius=5.0)
    assert match.f1 >= SNU16_F1_MIN


def _dot_image(height: int, width: int, centres: list[tuple[int, int]]) -> np.ndarray:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    for row, col in centres:
        rgb[row - 1 : row + 2, col - 1 : col + 2, 2] = 255
    return rgb


def _bright_centroids(tile_rgb: np.ndarray) -> np.ndarray:
    return component_centroids(tile_rgb[..., 2] > 0)


def _bright_count(tile_rgb: np.ndarray) -> int:
    return count_components(tile_rgb[..., 2] > 0)


def test_tile_cores_partition_image():
    height, width = 700, 1000
    coverage = np.zeros((height, width), dtype=int)
    tiles = tile_grid(height, width, tile=256, overlap=64)
    for t in tiles:
        assert t.rows[1] - t.rows[0] == 256
        assert t.cols[1] - t.cols[0] == 256
        coverage[t.core_rows[0] : t.core_rows[1], t.core_cols[0] : t.core_cols[1]] += 1
    assert len(tiles) == 4 * 5
    assert (coverage == 1).all()
    # Row starts 0, 148, 296, 444 and column starts 0, 186, 372, 558, 744. Each
    # core border is the middle of an overlap, e.g. (744 + 558 + 256) // 2 = 779.
    assert tiles[0].core_rows == (0, 202)
    assert tiles[0].core_cols == (0, 221)
    assert tiles[-1].rows == (444, 700)
    assert tiles[-1].core_cols == (779, 1000)


def test_tiling_counts_each_dot_once():
    height, width = 600, 900
    rng = np.random.default_rng(3)
    centres = [
        (int(r), int(c)) for r, c in zip(rng.integers(2, height - 2, 400), rng.integers(2, width - 2, 400))
    ]
    # Dots on and next to every core border, inside the overlaps, where a
    # double count or a miss would show.
    tiles = tile_grid(height, width, tile=256, overlap=64)
    row_borders = sorted({t.core_rows[1] for t in tiles} - {height})
    col_borders = sorted({t.core_cols[1] for t in tiles} - {width})
    centres += [(row + d, 100) for row in row_borders for d in (-1, 0)]
    centres += [(100, col + d) for col in col_borders for d in (-1, 0)]
    rgb = _dot_image(height, width, centres)
    expected = count_components(rgb[..., 2] > 0)

    result = count_whole_spread(rgb, _bright_centroids, tile=256, overlap=64)
    assert result.count == expected
    assert sum(result.tile_counts) == expected
    whole = component_centroids(rgb[..., 2] > 0)
    assert match_centroids(result.centroids, whole, radius=0.01).true_positives == expected


def test_tiling_count_only_counter():
    centres = [(50, 50), (120, 300), (400, 100), (400, 700), (550, 850)]
    rgb = _dot_image(600, 900, centres)
    result = count_whole_spread(rgb, _bright_count, tile=256, overlap=64, kind="count")
    assert result.count == 5
    assert result.centroids is None


def test_tiling_rejects_count_from_centroid_kind():
    rgb = _dot_image(300, 300, [(100, 100)])
    with pytest.raises(ValueError, match="kind='count'"):
        count_whole_spread(rgb, _bright_count, tile=256, overlap=64)


def test_tiling_scale_maps_centroids_back():
    rgb = _dot_image(400, 500, [(101, 151), (301, 401)])
    result = count_whole_spread(rgb, _bright_centroids, tile=256, overlap=64, scale=2.0)
    assert result.count == 2
    np.testing.assert_allclose(np.sort(result.centroids, axis=0), [[101, 151], [301, 401]], atol=1.0)


def test_segment_whole_spread_shape(segmenter):
    rgb = _dot_image(300, 520, [(150, 260)])
    label_map = segment_whole_spread(rgb, segmenter, tile=256, overlap=64)
    assert label_map.shape == (300, 520)
    assert label_map.dtype == np.uint8


def test_match_centroids_hand_case():
    centroids_true = np.array([[10.0, 10.0], [20.0, 20.0], [50.0, 50.0]])
    # Prediction 0 is within the radius of both (10, 10) and (20, 20), and
    # prediction 1 only of (10, 10). Taking the nearest true point for
    # prediction 0 first would leave prediction 1 unmatched.
    centroids_pred = np.array([[14.0, 14.0], [10.0, 13.0], [90.0, 90.0]])
    match = match_centroids(centroids_pred, centroids_true, radius=9.0)
    assert match.true_positives == 2
    assert match.false_positives == 1
    assert match.false_negatives == 1
    assert match.precision == pytest.approx(2 / 3)
    assert match.recall == pytest.approx(2 / 3)
    assert match.f1 == pytest.approx(2 / 3)
    assert sorted(map(tuple, match.pairs.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(sorted(match.distances), [3.0, np.hypot(6, 6)])


def test_match_centroids_empty_sets():
    empty = np.zeros((0, 2))
    assert match_centroids(empty, empty, 5.0).f1 == 1.0
    one = np.array([[1.0, 1.0]])
    assert match_centroids(one, empty, 5.0).precision == 0.0
    assert match_centroids(empty, one, 5.0).recall == 0.0


@needs_sample
def test_segmenter_model_answers_count():
    from ecdna_exp.models.segmenter import SegmenterCounter

    model = SegmenterCounter(name="segmenter")
    rgb = load_image(SAMPLE / "images" / "110.tif")
    request = Request(
        "110",
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": rgb}, {"type": "text", "text": "How many ecDNA?"}],
            }
        ],
    )
    (response,) = model.generate([request])
    assert response.ok
    label_map = model.last_label_maps["110"]
    from ecdna_exp.segmenter.predict import drop_small_components

    expected = count_components(drop_small_components(label_map == ECDNA, model.min_area))
    assert response.answer_text == str(expected)
    assert model.min_area == 5
    assert model.segmenter.ecdna_threshold == 0.95
    counts_true = count_classes(load_label_map(SAMPLE / "labels" / "110.png"))
    assert abs(expected - counts_true["num_ecDNA"]) <= PATCH_110_ERROR_MAX


def test_segmenter_config_builds():
    from omegaconf import OmegaConf

    from ecdna_exp.models import build_model

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "segmenter.yaml")
    model = build_model(cfg)
    assert model.name == "segmenter"
    assert model.describe()["count_class"] == "ecDNA"


def test_overlay_colours():
    from ecdna_exp.models.segmenter import overlay

    rgb = np.full((2, 2, 3), 100, dtype=np.uint8)
    label_map = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    blended = overlay(rgb, label_map, alpha=0.5)
    assert tuple(blended[0, 0]) == (100, 100, 100)
    assert tuple(blended[1, 1]) == tuple(int(np.rint((100 + c) / 2)) for c in CLASS_COLOURS[ECDNA])


@needs_sample
@pytest.mark.slow
def test_training_smoke_run(tmp_path):
    from ecdna_exp.segmenter.predict import Segmenter
    from ecdna_exp.segmenter.train import main

    out = tmp_path / "seg.pt"
    record = main(
        [
            *["--limit", "5", "--minutes", "0", "--epochs", "1", "--synthetic", "2", "--crop", "128"],
            *["--data", str(SAMPLE), "--out", str(out)],
        ]
    )
    assert out.is_file()
    assert len(record["train_ids"]) == 4
    assert len(record["val_ids"]) == 1
    assert record["epochs"] == 1
    assert Segmenter.load(out).predict_label_map(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)
