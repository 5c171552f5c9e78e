import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ecdna_exp.data import load_dataset, load_ecseg_folder, read_counts_csv, split_samples
from ecdna_exp.ground_truth import CLASS_COLOURS


def _write_patch(folder, stem, label_map):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rgb = np.zeros(label_map.shape + (3,), dtype=np.uint8)
    rgb[..., 2] = label_map * 60
    Image.fromarray(rgb).save(folder / "images" / f"{stem}.tif")
    colours = np.zeros_like(rgb)
    for class_index, colour in CLASS_COLOURS.items():
        colours[label_map == class_index] = colour
    Image.fromarray(colours).save(folder / "labels" / f"{stem}.png")


def test_sample_folder_loads_141_patches(sample_dir):
    samples = load_ecseg_folder(sample_dir)
    assert len(samples) == 141
    by_id = {s.image_id: s for s in samples}
    assert by_id["110"].counts == {"num_nuclei": 0, "num_chromosomes": 8, "num_ecDNA": 57}
    assert by_id["1026"].count_true == 2


def test_counts_csv_without_labels(sample_dir, tmp_path):
    shutil.copytree(sample_dir / "images", tmp_path / "images")
    shutil.copy(sample_dir / "counts.csv", tmp_path / "counts.csv")
    samples = load_ecseg_folder(tmp_path)
    assert len(samples) == 141
    assert {s.image_id: s.counts for s in samples} == read_counts_csv(sample_dir / "counts.csv")
    assert all(s.label_path is None for s in samples)


def test_public_ecseg_layout_with_npy_masks(tmp_path):
    label_map = np.zeros((32, 32), dtype=np.uint8)
    label_map[2:4, 2:4] = 3
    label_map[10:12, 20:22] = 3
    label_map[20:30, 5:8] = 2
    (tmp_path / "test_im").mkdir()
    (tmp_path / "test_mask").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "test_im" / "7.tif")
    np.save(tmp_path / "test_mask" / "7.npy", label_map)
    (sample,) = load_ecseg_folder(tmp_path)
    assert sample.counts == {"num_nuclei": 0, "num_chromosomes": 1, "num_ecDNA": 2}


def test_images_without_ground_truth_are_skipped(tmp_path, caplog):
    label_map = np.zeros((16, 16), dtype=np.uint8)
    label_map[3, 3] = 3
    _write_patch(tmp_path, "a", label_map)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    samples = load_ecseg_folder(tmp_path)
    assert [s.image_id for s in samples] == ["a"]
    assert "have no ground truth" in caplog.text


def test_invalid_ground_truth_mode_rejected(sample_dir):
    with pytest.raises(ValueError, match="invalid dataset.ground_truth 'guess'"):
        load_ecseg_folder(sample_dir, ground_truth="guess")


def test_missing_image_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_ecseg_folder(tmp_path)


def test_split_keeps_evaluated_images_when_pool_added(sample_dir):
    samples = load_ecseg_folder(sample_dir)
    without_pool, empty_pool = split_samples(samples, limit=20, pool_size=0, seed=3)
    with_pool, pool = split_samples(samples, limit=20, pool_size=8, seed=3)
    assert empty_pool == []
    assert [s.image_id for s in without_pool] == [s.image_id for s in with_pool]
    assert len(pool) == 8
    assert not {s.image_id for s in pool} & {s.image_id for s in with_pool}


def test_split_is_seeded(sample_dir):
    samples = load_ecseg_folder(sample_dir)
    first, _ = split_samples(samples, limit=10, pool_size=0, seed=1)
    again, _ = split_samples(samples, limit=10, pool_size=0, seed=1)
    other, _ = split_samples(samples, limit=10, pool_size=0, seed=2)
    assert [s.image_id for s in first] == [s.image_id for s in again]
    assert [s.image_id for s in first] != [s.image_id for s in other]


def test_load_dataset_reserves_pool_only_for_shots(sample_dir):
    cfg = OmegaConf.create({"name": "ecseg", "kind": "ecseg", "root": str(sample_dir), "ground_truth": "auto",
                            "counts_csv": None, "limit": None, "pool_size": 8})
    zero_shot = load_dataset(cfg, seed=0, shots=0)
    few_shot = load_dataset(cfg, seed=0, shots=3)
    assert (len(zero_shot.samples), len(zero_shot.pool)) == (141, 0)
    assert (len(few_shot.samples), len(few_shot.pool)) == (133, 8)
    assert zero_shot.digest != few_shot.digest


def test_synthetic_dataset_is_deterministic():
    cfg = OmegaConf.create({"name": "synthetic", "kind": "synthetic", "n_images": 5, "pool_size": 3,
                            "size": 64, "seed": 7, "limit": None})
    first = load_dataset(cfg, seed=0, shots=1)
    second = load_dataset(cfg, seed=0, shots=1)
    assert first.digest == second.digest
    assert len(first.pool) == 3
    assert not {s.image_id for s in first.pool} & {s.image_id for s in first.samples}


def test_segmenter_ground_truth_for_unlabelled_images(sample_dir, tmp_path):
    from ecdna_exp.segmenter import segment_counts

    (tmp_path / "images").mkdir()
    for stem in ("1026", "110"):
        shutil.copy(sample_dir / "images" / f"{stem}.tif", tmp_path / "images" / f"{stem}.tif")
    samples = load_ecseg_folder(tmp_path, ground_truth="segmenter")
    assert [s.image_id for s in samples] == ["1026", "110"]
    for sample in samples:
        assert sample.counts == segment_counts(sample.load_rgb())
        assert set(sample.counts) == {"num_nuclei", "num_chromosomes", "num_ecDNA"}
