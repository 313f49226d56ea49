"""The numpy input pipeline of the JAX and PyTorch backends: same augmentation meaning as the tf.data one."""

import numpy as np
import pytest
from scipy import ndimage

from tumorseg.config import Augment
from tumorseg.train.batches import ArrayBatches, augment_pair, center_fit

SIZE = 32
ALL_GEOMETRIC = Augment(hflip=True, vflip=True, zoom=0.2, rotation=20.0)
NOTHING = Augment(hflip=False)


def asymmetric_mask():
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[6:22, 5:11] = 1.0
    mask[16:22, 5:20] = 1.0
    return mask


def edge_band(mask):
    return ndimage.maximum_filter(mask, 3, mode="constant") != ndimage.minimum_filter(mask, 3, mode="constant")


@pytest.mark.parametrize("change", [{"hflip": True}, {"vflip": True}, {"zoom": 0.3}, {"rotation": 30.0}, {}], ids=str)
def test_geometric_augmentation_moves_image_and_mask_together(change):
    settings = NOTHING.model_copy(update=change) if change else ALL_GEOMETRIC
    original = asymmetric_mask()
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(8):
        image, mask = augment_pair(original, original, settings, rng)
        assert image.shape == mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0.0, 1.0}
        disagree = (image >= 0.5) != (mask == 1.0)
        assert not np.any(disagree & ~edge_band(mask))
        moved += not np.array_equal(mask, original)
    assert moved >= 3


def test_intensity_augmentation_leaves_the_mask():
    original = asymmetric_mask()
    image = 0.2 + 0.5 * original
    settings = Augment(hflip=False, brightness=0.3, contrast=0.5)
    out, mask = augment_pair(image, original, settings, np.random.default_rng(1))
    np.testing.assert_array_equal(mask, original)
    assert 0.0 <= out.min() and out.max() <= 1.0 and not np.allclose(out, image)
    assert out[original == 1].mean() > out[original == 0].mean()


def test_center_fit_crops_and_pads_around_the_centre():
    array = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(center_fit(array, 2), array[1:3, 1:3])
    padded = center_fit(array, 6)
    np.testing.assert_array_equal(padded[1:5, 1:5], array)
    assert padded.sum() == array.sum()


def test_batches_shuffle_per_epoch_reproducibly_and_keep_every_slice():
    images = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 8, 8), np.float32) / 10
    masks = np.zeros((10, 8, 8), np.float32)

    def epoch_order(batches):
        return [round(float(value), 4) for i in range(len(batches)) for value in batches[i][0][:, 0, 0, 0]]

    batches = ArrayBatches(images, masks, 4, training=True, augment=NOTHING, seed=3)
    again = ArrayBatches(images, masks, 4, training=True, augment=NOTHING, seed=3)
    assert len(batches) == 3 and batches[0][0].shape == (4, 8, 8, 1) and batches[2][0].shape == (2, 8, 8, 1)
    first = epoch_order(batches)
    assert first == epoch_order(again) and sorted(first) == [k / 10 for k in range(10)]
    batches.on_epoch_end()
    assert epoch_order(batches) != first
    validation = ArrayBatches(images, masks, 4)
    assert epoch_order(validation) == [k / 10 for k in range(10)]
    assert len(ArrayBatches(images, masks, 4, drop_remainder=True)) == 2
