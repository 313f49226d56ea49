"""Augmentation moves image and mask together and keeps the mask binary."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from tumorseg.config import Augment
from tumorseg.train.tfdata import _augment, make_dataset

SIZE = 32
GEOMETRIC = [{"hflip": True}, {"vflip": True}, {"zoom": 0.3}, {"rotation": 30.0}]
INTENSITY = [{"brightness": 0.3}, {"contrast": 0.5}]
ALL_GEOMETRIC = {"hflip": True, "vflip": True, "zoom": 0.2, "rotation": 20.0}
EVERYTHING = {**ALL_GEOMETRIC, "brightness": 0.2, "contrast": 0.4}


def asymmetric_mask():
    """An off-centre L shape: any flip, zoom or rotation moves it."""
    mask = np.zeros((SIZE, SIZE, 1), np.float32)
    mask[6:22, 5:11] = 1.0
    mask[16:22, 5:20] = 1.0
    return mask


def augmented(settings, image, mask, seed):
    image, mask = _augment(Augment(**{"hflip": False, **settings}))(image, mask, tf.constant([seed, 7], tf.int64))
    return np.asarray(image)[..., 0], np.asarray(mask)[..., 0]


def edge_band(mask):
    """Pixels whose 3x3 neighbourhood holds both mask values."""
    return ndimage.maximum_filter(mask, 3, mode="constant") != ndimage.minimum_filter(mask, 3, mode="constant")


@pytest.mark.parametrize("settings", GEOMETRIC + [ALL_GEOMETRIC], ids=str)
def test_geometric_augmentation_moves_image_and_mask_together(settings):
    """With the image equal to the mask, the thresholded image is the mask, up to interpolation at its edge."""
    original = asymmetric_mask()
    moved = 0
    for seed in range(8):
        image, mask = augmented(settings, original, original, seed)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert image.shape == mask.shape == (SIZE, SIZE) and 0.0 <= image.min() and image.max() <= 1.0
        disagree = (image >= 0.5) != (mask == 1.0)
        assert not np.any(disagree & ~edge_band(mask)), f"seed {seed}: image and mask misaligned"
        assert disagree.sum() <= 0.25 * edge_band(mask).sum()
        moved += not np.array_equal(mask, original[..., 0])
    assert moved >= 3


@pytest.mark.parametrize("settings", [{"hflip": True}, {"vflip": True}], ids=str)
def test_flips_are_exact(settings):
    original = asymmetric_mask()
    for seed in range(4):
        image, mask = augmented(settings, original, original, seed)
        np.testing.assert_array_equal(image, mask)


@pytest.mark.parametrize("settings", INTENSITY, ids=str)
def test_intensity_augmentation_leaves_the_mask_and_keeps_tumour_brighter(settings):
    original = asymmetric_mask()
    grey = 0.25 + 0.5 * original
    changed = 0
    for seed in range(8):
        image, mask = augmented(settings, grey, original, seed)
        np.testing.assert_array_equal(mask, original[..., 0])
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image[mask == 1].min() > image[mask == 0].max()
        changed += not np.allclose(image, grey[..., 0])
    assert changed == 8


def test_rotation_keeps_the_tumour_area_and_fills_corners_with_zero():
    original = asymmetric_mask()
    full = np.ones_like(original)
    outside = []
    for seed in range(4):
        _, mask = augmented({"rotation": 30.0}, original, original, seed)
        assert abs(mask.sum() - original.sum()) <= 0.1 * original.sum()
        _, rotated = augmented({"rotation": 30.0}, full, full, seed)
        assert rotated[SIZE // 2, SIZE // 2] == 1.0
        outside.append(int(np.sum(rotated == 0.0)))
    assert max(outside) > 0.05 * SIZE**2


def test_pipeline_masks_stay_binary_with_every_augmentation():
    images = np.stack([asymmetric_mask()[..., 0]] * 6) * 0.8 + 0.1
    masks = np.stack([asymmetric_mask()[..., 0]] * 6)
    dataset = make_dataset(images, masks, 3, training=True, augment=Augment(**EVERYTHING), seed=1)
    assert dataset.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 1]  # static size kept for the model
    for epoch_images, epoch_masks in dataset:
        assert set(np.unique(epoch_masks.numpy())) <= {0.0, 1.0}
        assert epoch_images.shape == epoch_masks.shape == (3, SIZE, SIZE, 1)
