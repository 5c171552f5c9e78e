import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecdna_exp.data import read_counts_csv
from ecdna_exp.ground_truth import (
    CLASS_COLOURS,
    ECDNA,
    LabelMapError,
    component_centroids,
    count_classes,
    count_components,
    decode_label_map,
    load_label_map,
)


def test_diagonal_pixels_form_one_component():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True
    mask[4, 0] = True
    assert count_components(mask) == 2


def test_decode_label_map_maps_palette():
    label_map = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    for class_index, colour in CLASS_COLOURS.items():
        rgb[label_map == class_index] = colour
    np.testing.assert_array_equal(decode_label_map(rgb), label_map)


def test_decode_label_map_rejects_foreign_colour():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[:] = CLASS_COLOURS[0]
    rgb[1, 0] = (1, 2, 3)
    with pytest.raises(LabelMapError, match="#010203 at row 1, column 0"):
        decode_label_map(rgb)


def test_load_label_map_reads_npy_and_index_png(tmp_path):
    label_map = np.zeros((8, 8), dtype=np.uint8)
    label_map[1:3, 1:3] = ECDNA
    label_map[5:7, 5:7] = ECDNA
    np.save(tmp_path / "a.npy", label_map)
    Image.fromarray(label_map).save(tmp_path / "a.png")
    for name in ("a.npy", "a.png"):
        loaded = load_label_map(tmp_path / name)
        np.testing.assert_array_equal(loaded, label_map)
        assert count_classes(loaded)["num_ecDNA"] == 2


def test_load_label_map_rejects_out_of_range_classes(tmp_path):
    np.save(tmp_path / "bad.npy", np.full((4, 4), 7, dtype=np.uint8))
    with pytest.raises(LabelMapError, match="0..3"):
        load_label_map(tmp_path / "bad.npy")


def test_component_centroids_in_row_column_order():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 7] = True
    mask[8:10, 0:2] = True
    centroids = component_centroids(mask)
    assert centroids.tolist() == [[2.0, 7.0], [8.5, 0.5]]


def test_sample_labels_match_counts_csv(sample_dir):
    expected = read_counts_csv(sample_dir / "counts.csv")
    assert len(expected) == 141
    for stem, counts in expected.items():
        assert count_classes(load_label_map(sample_dir / "labels" / f"{stem}.png")) == counts, stem


@pytest.mark.slow
def test_all_test_split_rows_reproduced(data_dir):
    folder = data_dir / "ecseg_test_labels"
    frame = pd.read_csv(folder / "test_images_counts.csv")
    assert len(frame) == 1189
    mismatches = []
    for _, row in frame.iterrows():
        stem = row["image"].rsplit(".", 1)[0]
        counts = count_classes(load_label_map(folder / "labels" / f"{stem}.png"))
        expected = {c: int(row[c]) for c in ("num_nuclei", "num_chromosomes", "num_ecDNA")}
        if counts != expected:
            mismatches.append((stem, counts, expected))
    assert mismatches == []
