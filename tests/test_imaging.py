import numpy as np
import pytest
from PIL import Image

from ecdna_exp.imaging import ImageLoadError, dapi_view, is_inverted, load_image, rescale_percentiles


def test_rgb_patch_loads_unchanged(sample_dir):
    path = sample_dir / "images" / "1026.tif"
    rgb = load_image(path)
    assert rgb.shape == (256, 256, 3)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))


def test_sixteen_bit_spread_rescaled_not_clipped(data_dir):
    path = data_dir / "full_images" / "SNU16.tif"
    raw = np.asarray(Image.open(path))
    assert raw.max() > 255
    rgb = load_image(path)
    assert rgb.shape == (1040, 1392, 3)
    assert rgb[..., 2].max() == 255
    # DAPI goes to blue; a clip at 255 would saturate most foreground pixels instead.
    assert rgb[..., 0].max() == 0
    foreground = raw > np.percentile(raw, 90)
    assert np.mean(rgb[..., 2][foreground] == 255) < 0.5


def test_grayscale_goes_to_blue_or_grey(tmp_path):
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8)) * 2
    Image.fromarray(gray).save(tmp_path / "g.png")
    as_dapi = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(as_dapi[..., 2], gray)
    assert as_dapi[..., :2].max() == 0
    as_grey = load_image(tmp_path / "g.png", grayscale_as_dapi=False)
    np.testing.assert_array_equal(as_grey[..., 0], gray)
    np.testing.assert_array_equal(as_grey[..., 1], gray)


def test_white_background_is_inverted(tmp_path):
    rgb = np.full((16, 16, 3), 240, dtype=np.uint8)
    rgb[4:6, 4:6] = 10
    Image.fromarray(rgb).save(tmp_path / "white.png")
    assert is_inverted(rgb)
    loaded = load_image(tmp_path / "white.png")
    assert loaded[0, 0].tolist() == [15, 15, 15]
    assert loaded[4, 4].tolist() == [245, 245, 245]


def test_corrupt_and_unsupported_files_raise(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="cannot read image"):
        load_image(tmp_path / "broken.tif")
    with pytest.raises(ImageLoadError, match="unsupported image type"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_dapi_view_copies_blue():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    assert dapi_view(rgb).tolist() == [[[50, 50, 50]] * 2] * 2


def test_rescale_percentiles_spans_full_range():
    values = np.linspace(0, 60000, 1000).reshape(10, 100)
    scaled = rescale_percentiles(values, 0, 100)
    assert scaled.min() == 0
    assert scaled.max() == 255
