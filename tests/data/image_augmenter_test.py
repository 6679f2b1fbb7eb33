"""Tests for ImageAugmenter: shapes, determinism, blur strength, rotation direction, crop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rs_hashing.data.image_augmenter import ImageAugmenter


def _random_image(height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _checkerboard(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    white = (np.indices((size, size)).sum(axis=0) % 2 == 0)
    image = np.repeat(np.where(white, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    return image, white


def _laplacian_variance(image: np.ndarray) -> float:
    gray = image.astype(np.float64).mean(axis=2)
    lap = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
           - 4 * gray[1:-1, 1:-1])
    return float(lap.var())


def test_output_has_input_shape_and_dtype():
    augmenter = ImageAugmenter(seed=0)
    for shape in ((16, 16, 3), (20, 12, 3)):
        image = _random_image(*shape[:2])
        out = augmenter.augment(image, 0)
        assert out.shape == shape and out.dtype == np.uint8


def test_deterministic_per_seed_and_item():
    image = _random_image()
    augmenter = ImageAugmenter(seed=3)
    np.testing.assert_array_equal(augmenter.augment(image, 7),
                                  ImageAugmenter(seed=3).augment(image, 7))
    assert not np.array_equal(augmenter.augment(image, 7), augmenter.augment(image, 8))
    assert not np.array_equal(augmenter.augment(image, 7), ImageAugmenter(seed=4).augment(image, 7))


def test_output_differs_from_input():
    image = _random_image()
    out = ImageAugmenter(seed=0).augment(image, 0)
    assert np.abs(out.astype(int) - image.astype(int)).mean() > 10


def test_sampled_parameters_lie_in_the_authors_ranges():
    augmenter = ImageAugmenter(seed=0)
    params = [augmenter.sample_params(i) for i in range(200)]
    sigmas, angles = np.array(params).T
    assert sigmas.min() >= 1.1 and sigmas.max() <= 1.3
    assert angles.min() >= -10.0 and angles.max() <= -5.0
    assert len(set(angles)) == 200
    assert augmenter.sample_params(5) == ImageAugmenter(seed=0).sample_params(5)


def test_blur_matches_hand_computed_3x3_gaussian_on_checkerboard():
    # sigma 1.2, 3 taps: weights exp(-x^2 / 2.88) for x = -1, 0, 1 -> [0.70664, 1, 0.70664],
    # normalised a = 0.29281 (sides), b = 0.41437 (centre). A 1-pixel checkerboard is
    # 127.5 +- 127.5 * (+-1)^(row+col); each axis scales the +-127.5 part by b - 2a =
    # -0.17125, both axes by 0.029327, so white -> 131.24 -> 131 and black -> 123.76 -> 124.
    # Reflect padding continues the alternation, so the border pixels are no different.
    image, white = _checkerboard()
    augmenter = ImageAugmenter(blur_sigma=(1.2, 1.2), rotation_degrees=(0.0, 0.0))
    out = augmenter.augment(image, 0)
    np.testing.assert_array_equal(out[..., 0], np.where(white, 131, 124))
    assert _laplacian_variance(out) < 0.05 * _laplacian_variance(image)


def test_wider_kernel_blurs_more():
    image, _ = _checkerboard()
    narrow = ImageAugmenter(blur_sigma=(1.2, 1.2), rotation_degrees=(0, 0)).augment(image, 0)
    full = ImageAugmenter(blur_sigma=(1.2, 1.2), rotation_degrees=(0, 0),
                          blur_kernel_size=None).augment(image, 0)
    assert _laplacian_variance(full) < _laplacian_variance(narrow)


def _bar_image(size: int = 65) -> np.ndarray:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[30:35, 8:57] = 255  # Horizontal bar centred on row 32, the rotation centre.
    return image


def _row_centroid(image: np.ndarray, column: int) -> float:
    weights = image[:, column, 0].astype(np.float64)
    return float((np.arange(image.shape[0]) * weights).sum() / weights.sum())


def test_negative_angle_rotates_clockwise():
    # PIL and torchvision turn counter-clockwise for positive angles, so -7 degrees is
    # clockwise on screen (rows grow downwards): the bar's right end goes down. A point
    # d columns right of the centre (row 32, column 32) moves to row 32 + d * tan(7 deg):
    # d = +16 -> 33.96, d = -16 -> 30.04.
    augmenter = ImageAugmenter(blur_sigma=(0, 0), rotation_degrees=(-7, -7), crop_fraction=1.0)
    out = augmenter.augment(_bar_image(), 0)
    drop = 16 * math.tan(math.radians(7))
    assert _row_centroid(out, 48) == pytest.approx(32 + drop, abs=0.3)
    assert _row_centroid(out, 16) == pytest.approx(32 - drop, abs=0.3)


def test_crop_and_resize_keep_the_slope():
    # Cropping the centre and resizing scales both axes alike, so the bar keeps slope tan 7.
    augmenter = ImageAugmenter(blur_sigma=(1.2, 1.2), rotation_degrees=(-7, -7))
    out = augmenter.augment(_bar_image(), 0)
    slope = (_row_centroid(out, 48) - _row_centroid(out, 16)) / 32
    assert slope == pytest.approx(math.tan(math.radians(7)), abs=0.02)


def test_black_free_crop_fraction_by_hand():
    # Square: 1 / (cos t + sin t); at 10 degrees 1 / (0.98481 + 0.17365) = 0.86321.
    assert ImageAugmenter.black_free_crop_fraction(64, 64, -10) == pytest.approx(0.86321, abs=1e-5)
    assert ImageAugmenter.black_free_crop_fraction(64, 64, 0) == 1.0
    # 100 high, 200 wide: min(200 / 214.327, 100 / 133.211) = 0.75069.
    assert ImageAugmenter.black_free_crop_fraction(100, 200, 10) == pytest.approx(0.75069, abs=1e-5)


def test_auto_crop_removes_black_corners():
    white = np.full((48, 48, 3), 255, dtype=np.uint8)
    cropped = ImageAugmenter(rotation_degrees=(-10, -10)).augment(white, 0)
    assert cropped.min() >= 250
    uncropped = ImageAugmenter(rotation_degrees=(-10, -10), crop_fraction=1.0).augment(white, 0)
    assert uncropped[0, 0].max() == 0 and uncropped[-1, -1].max() == 0


@pytest.mark.parametrize("image", [
    np.zeros((16, 16, 3), dtype=np.float32),
    np.zeros((16, 16), dtype=np.uint8),
    np.zeros((16, 16, 4), dtype=np.uint8),
    np.zeros((2, 2, 3), dtype=np.uint8),
])
def test_rejects_bad_images(image):
    with pytest.raises(ValueError, match="item 4"):
        ImageAugmenter().augment(image, 4)


@pytest.mark.parametrize("kwargs, name", [
    ({"blur_sigma": (1.3, 1.1)}, "blur_sigma"),
    ({"blur_sigma": (-1.0, 1.0)}, "blur_sigma"),
    ({"rotation_degrees": (5, -5)}, "rotation_degrees"),
    ({"crop_fraction": 0.0}, "crop_fraction"),
    ({"crop_fraction": 1.5}, "crop_fraction"),
    ({"blur_kernel_size": 4}, "blur_kernel_size"),
])
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ImageAugmenter(**kwargs)
