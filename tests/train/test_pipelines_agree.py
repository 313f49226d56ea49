"""The two input pipelines (tf.data under TensorFlow, ArrayBatches under JAX or PyTorch) give the model the
same data: identical validation batches and targets, and training batches that hold the same slices,
each one either unchanged or flipped as a whole (image and mask together)."""

import numpy as np
import pytest

from tumorseg.config import Augment
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT
from tumorseg.train.batches import ArrayBatches
from tumorseg.train.tfdata import make_dataset

SIZE, COUNT, BATCH = 16, 10, 4


def slices():
    rng = np.random.default_rng(0)
    images = rng.random((COUNT, SIZE, SIZE), dtype=np.float32)
    masks = (images > 0.7).astype(np.uint8)
    return images, masks, np.arange(COUNT) % 3 + 1


def tf_batches(*args, **kwargs):
    return [tuple(np.asarray(part) if not isinstance(part, dict) else {k: np.asarray(v) for k, v in part.items()}
                  for part in batch) for batch in make_dataset(*args, **kwargs).as_numpy_iterator()]


def array_batches(*args, **kwargs):
    batches = ArrayBatches(*args, **kwargs)
    return [batches[i] for i in range(len(batches))]


@pytest.mark.parametrize("with_labels", [False, True])
def test_validation_batches_are_identical(with_labels):
    images, masks, labels = slices()
    labels = labels if with_labels else None
    ours, theirs = tf_batches(images, masks, BATCH, labels=labels), array_batches(images, masks, BATCH, labels=labels)
    assert len(ours) == len(theirs) == 3
    for (x_tf, y_tf), (x_np, y_np) in zip(ours, theirs):
        np.testing.assert_array_equal(x_tf, x_np)
        if with_labels:
            np.testing.assert_array_equal(y_tf[MASK_OUTPUT], y_np[MASK_OUTPUT])
            np.testing.assert_array_equal(y_tf[TYPE_OUTPUT], y_np[TYPE_OUTPUT])
        else:
            np.testing.assert_array_equal(y_tf, y_np)


def as_originals(batches, images, masks):
    """For each slice served, (index of the original, flipped?); fails unless image and mask agree on both."""
    found = []
    for x, y in batches:
        for image, mask in zip(x[..., 0], y[..., 0]):
            for index in range(COUNT):
                for flipped, view in ((False, lambda a: a), (True, lambda a: a[:, ::-1])):
                    if np.array_equal(image, view(images[index])):
                        np.testing.assert_array_equal(mask, view(masks[index]))
                        found.append((index, flipped))
    return found


def test_training_batches_serve_every_slice_once_each_flipped_or_not_as_a_whole():
    images, masks, _ = slices()
    flips = Augment(hflip=True)
    for batches in (tf_batches(images, masks, BATCH, training=True, augment=flips, seed=3),
                    array_batches(images, masks, BATCH, training=True, augment=flips, seed=3)):
        found = as_originals(batches, images, masks)
        assert sorted(index for index, _ in found) == list(range(COUNT))
        assert 0 < sum(flipped for _, flipped in found) < COUNT  # some flipped, some not
