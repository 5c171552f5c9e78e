"""Scores of a segmenter on labelled patches: count errors and ecDNA localisation.

``python -m ecdna_exp.segmenter.evaluate`` re-scores a weights file without
training: it chooses the ecDNA probability threshold and the per-class minimum
areas on the training ids listed in the JSON record, scores the training and
validation ids, and rewrites the record.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ecdna_exp.ground_truth import CLASS_NAMES, ECDNA, component_centroids, count_classes, count_components
from ecdna_exp.segmenter.dataset import DEFAULT_DATA, Patch, load_patches
from ecdna_exp.segmenter.localisation import match_centroids
from ecdna_exp.segmenter.predict import (
    COUNT_KEYS,
    DEFAULT_WEIGHTS,
    Segmenter,
    count_label_map,
    drop_small_components,
)

log = logging.getLogger(__name__)

#: Largest distance in pixels between a predicted and a true ecDNA centroid that counts as a hit.
MATCH_RADIUS = 5.0

#: Candidate ecDNA probability thresholds tried on the training patches. None takes the most probable class.
THRESHOLD_CANDIDATES = (None, *(round(0.3 + 0.05 * step, 2) for step in range(14)))

#: Candidate smallest component areas in pixels, per class index, tried on the training patches.
MIN_AREA_CANDIDATES = {
    1: (0, 50, 100, 250, 500, 1000, 2000),
    2: (0, 10, 25, 50, 100, 200),
    ECDNA: (0, 5, 10, 15, 20, 30),
}


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Return Pearson's correlation of two 1-D arrays, or NaN when either is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def predict_patches(segmenter: Segmenter, patches: list[Patch]) -> list[np.ndarray]:
    """Return the predicted ``(H, W)`` uint8 label map of each patch, in order."""
    return [segmenter.label_map_from_probabilities(segmenter.predict_probabilities(p.dapi)) for p in patches]


def choose_ecdna_threshold(
    segmenter: Segmenter, patches: list[Patch], probabilities: list[np.ndarray]
) -> float | None:
    """Return the ecDNA threshold with the lowest count MAE on ``patches``, and set it on ``segmenter``.

    Each candidate of :data:`THRESHOLD_CANDIDATES` is scored with its best
    smallest ecDNA area, and on a tie the first candidate wins.
    ``probabilities`` contains the ``(4, H, W)`` predictions of the patches.
    """
    counts_true = np.array([count_classes(p.label_map)["num_ecDNA"] for p in patches])
    best, best_error = None, np.inf
    for threshold in THRESHOLD_CANDIDATES:
        segmenter.ecdna_threshold = threshold
        ecdna_masks = [segmenter.label_map_from_probabilities(p) == ECDNA for p in probabilities]
        for min_area in MIN_AREA_CANDIDATES[ECDNA]:
            counts_pred = np.array(
                [count_components(drop_small_components(m, min_area)) for m in ecdna_masks]
            )
            error = np.abs(counts_pred - counts_true).mean()
            if error < best_error:
                best, best_error = threshold, error
    segmenter.ecdna_threshold = best
    return best


def choose_min_areas(patches: list[Patch], label_maps_pred: list[np.ndarray]) -> dict[int, int]:
    """Return, per class index, the candidate smallest area (pixels) with the lowest count MAE on ``patches``."""
    counts_true = [count_classes(p.label_map) for p in patches]
    chosen = {}
    for class_index, candidates in MIN_AREA_CANDIDATES.items():
        key = COUNT_KEYS[class_index]
        true = np.array([c[key] for c in counts_true])
        errors = []
        for min_area in candidates:
            pred = np.array([count_label_map(m, {class_index: min_area})[key] for m in label_maps_pred])
            errors.append(np.abs(pred - true).mean())
        chosen[class_index] = int(candidates[int(np.argmin(errors))])
    return chosen


def score_patches(
    patches: list[Patch],
    label_maps_pred: list[np.ndarray],
    min_areas: dict[int, int],
    radius: float = MATCH_RADIUS,
) -> dict[str, float | int]:
    """Score predicted label maps against the patches' label maps.

    Returns
    -------
    dict
        Per class (``nuclei``, ``chromosomes``, ``ecDNA``) the count MAE and
        Pearson r over patches. For ecDNA also the object precision, recall
        and F1 of centroids matched within ``radius`` pixels, from true and
        false positives summed over all patches, and the pixel Dice coefficient.
    """
    scores: dict[str, float | int] = {"num_images": len(patches)}
    counts_true = [count_classes(p.label_map) for p in patches]
    counts_pred = [count_label_map(m, min_areas) for m in label_maps_pred]
    for key, name in (("num_nuclei", "nuclei"), ("num_chromosomes", "chromosomes"), ("num_ecDNA", "ecDNA")):
        true = np.array([c[key] for c in counts_true])
        pred = np.array([c[key] for c in counts_pred])
        scores[f"{name}_mae"] = float(np.abs(pred - true).mean())
        scores[f"{name}_pearson_r"] = pearson_r(true, pred)

    tp = fp = fn = 0
    intersection = total_area = 0
    for patch, label_map in zip(patches, label_maps_pred):
        mask_pred = drop_small_components(label_map == ECDNA, min_areas.get(ECDNA, 0))
        mask_true = patch.label_map == ECDNA
        match = match_centroids(component_centroids(mask_pred), component_centroids(mask_true), radius)
        tp, fp, fn = tp + match.true_positives, fp + match.false_positives, fn + match.false_negatives
        intersection += int((mask_pred & mask_true).sum())
        total_area += int(mask_pred.sum() + mask_true.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    scores["ecDNA_match_radius_px"] = radius
    scores["ecDNA_precision"] = precision
    scores["ecDNA_recall"] = recall
    scores["ecDNA_f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores["ecDNA_pixel_dice"] = 2 * intersection / total_area if total_area else 1.0
    return scores


def calibrate_and_score(
    segmenter: Segmenter, train_patches: list[Patch], val_patches: list[Patch]
) -> dict[str, dict]:
    """Choose the ecDNA threshold and minimum areas on the training patches, then score both splits.

    Returns ``{"ecdna_threshold": ..., "min_areas": {class name: pixels},
    "train_scores": ..., "val_scores": ...}`` and sets
    ``segmenter.ecdna_threshold`` and ``segmenter.min_areas``. The validation
    patches take no part in the choices.
    """
    probabilities_train = [segmenter.predict_probabilities(p.dapi) for p in train_patches]
    threshold = choose_ecdna_threshold(segmenter, train_patches, probabilities_train)
    label_maps_train = [segmenter.label_map_from_probabilities(p) for p in probabilities_train]
    del probabilities_train
    min_areas = choose_min_areas(train_patches, label_maps_train)
    segmenter.min_areas = min_areas
    val_scores = (
        score_patches(val_patches, predict_patches(segmenter, val_patches), min_areas) if val_patches else {}
    )
    return {
        "ecdna_threshold": threshold,
        "min_areas": {CLASS_NAMES[index]: area for index, area in min_areas.items()},
        "train_scores": score_patches(train_patches, label_maps_train, min_areas),
        "val_scores": val_scores,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m ecdna_exp.segmenter.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights file with its .json record"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="ecSeg sample folder with images/ and labels/"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    record_path = args.weights.with_suffix(".json")
    record = json.loads(record_path.read_text())
    segmenter = Segmenter.load(args.weights)
    result = calibrate_and_score(
        segmenter, load_patches(args.data, record["train_ids"]), load_patches(args.data, record["val_ids"])
    )
    record.pop("min_ecdna_area", None)
    record.update(result)
    record["scored_by"] = "python -m ecdna_exp.segmenter.evaluate"
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "ecDNA threshold %s, minimum areas %s; validation scores %s",
        result["ecdna_threshold"],
        result["min_areas"],
        result["val_scores"],
    )
    return record


if __name__ == "__main__":
    main()
