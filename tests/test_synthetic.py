import numpy as np

from ecdna_exp.ground_truth import count_classes
from ecdna_exp.synthetic import SyntheticStyle, generate_patch


def test_same_seed_same_patch():
    rgb_a, labels_a = generate_patch(11)
    rgb_b, labels_b = generate_patch(11)
    np.testing.assert_array_equal(rgb_a, rgb_b)
    np.testing.assert_array_equal(labels_a, labels_b)


def test_requested_objects_are_exact_components():
    style = SyntheticStyle(ecdna_range=(17, 17), chromosome_range=(6, 6), nucleus_range=(1, 1))
    _, label_map = generate_patch(3, 256, style)
    assert count_classes(label_map) == {"num_nuclei": 1, "num_chromosomes": 6, "num_ecDNA": 17}


def test_dapi_in_blue_and_brighter_on_objects():
    rgb, label_map = generate_patch(5)
    assert rgb.shape == (256, 256, 3)
    assert rgb[..., :2].max() == 0
    assert rgb[..., 2][label_map == 2].mean() > 3 * rgb[..., 2][label_map == 0].mean()


def test_density_follows_style():
    sparse = SyntheticStyle(ecdna_range=(0, 2))
    dense = SyntheticStyle(ecdna_range=(40, 50))
    sparse_counts = [count_classes(generate_patch(s, 256, sparse)[1])["num_ecDNA"] for s in range(5)]
    dense_counts = [count_classes(generate_patch(s, 256, dense)[1])["num_ecDNA"] for s in range(5)]
    assert max(sparse_counts) <= 2
    assert min(dense_counts) >= 35
