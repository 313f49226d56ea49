"""The training input pipeline for the Keras backend in use.

Under TensorFlow (the default) it is tumorseg.train.tfdata's tf.data pipeline.
Under JAX or PyTorch (KERAS_BACKEND=jax|torch), where TensorFlow may not be
installed at all (the usual GPU image for JAX), it is ArrayBatches: numpy
batches through keras.utils.PyDataset, with the same augmentations applied
in numpy and scipy (same settings, same order: flips, zoom, rotation,
brightness, contrast; geometric ones move image and mask together and keep
the mask binary). The two draw different random numbers, so runs are
reproducible within a backend, not across backends; tests/train/test_pipelines_agree.py holds them in step.

Why two, for now: the JAX GPU image has no TensorFlow, so tf.data cannot be the only path. Keras 3's image
preprocessing layers (RandomFlip, RandomZoom, RandomRotation, RandomBrightness, RandomContrast; masks
moved with nearest interpolation) run on every backend and could be the one implementation, but they draw
and interpolate differently: replacing these changes the CPU recipe's training, whose figures were
measured over four official folds with these augmentations, so it is a recipe change to measure on
validation like any other (docs/results.md, "Next candidates"), not a refactor.
"""

import math
import os
from collections.abc import Sequence

import keras
import numpy as np
from scipy import ndimage

from tumorseg.config import Augment, Crop
from tumorseg.model.outputs import MASK_OUTPUT
from tumorseg.model.unet import batch_target, one_hot_types


def make_batches(images: np.ndarray, masks: np.ndarray, batch_size: int, training: bool = False,
                 augment: Augment | None = None, seed: int = 0, drop_remainder: bool = False,
                 labels: np.ndarray | None = None, mask_outputs: Sequence[str] = (MASK_OUTPUT,),
                 crop: Crop | None = None):
    """Batches of (image, mask), both (batch, S, S, 1) float32, for the current Keras backend.

    Training data is shuffled with the seed (a new order every epoch) and augmented, then, with a
    `crop` of size > 0, cut to a random crop (crop_window); validation data is none of these.
    With `labels` (1, 2, 3 per slice, for a model with the type head) or several `mask_outputs` (the
    deep-supervision outputs, tumorseg.model.build.mask_targets) the target is a dict instead of the mask
    (tumorseg.model.unet.batch_target).
    """
    if keras.backend.backend() == "tensorflow":
        from tumorseg.train.tfdata import make_dataset

        return make_dataset(images, masks, batch_size, training, augment, seed, drop_remainder, labels, mask_outputs,
                            crop)
    return ArrayBatches(images, masks, batch_size, training, augment, seed, drop_remainder, labels, mask_outputs, crop)


def window_range(pixel: int, size: int, span: int) -> tuple[int, int]:
    """First and last start (0 .. span) of a `size`-long window that contains `pixel`."""
    return max(0, pixel - size + 1), min(span, pixel)


def crop_window(mask: np.ndarray, size: int, tumour: float, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a random size x size window of an (S, S) slice: with probability `tumour` one
    of the windows that contain a random tumour pixel (drawn uniformly among them), else any window.
    A slice without tumour pixels always gets any window."""
    span = mask.shape[0] - size
    rows, cols = np.nonzero(mask > 0.5)
    if len(rows) and rng.random() < tumour:
        pick = rng.integers(len(rows))
        return tuple(int(rng.integers(first, last + 1))
                     for first, last in (window_range(rows[pick], size, span), window_range(cols[pick], size, span)))
    return int(rng.integers(span + 1)), int(rng.integers(span + 1))


def center_fit(array: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop or zero-pad a square array to (size, size), as tf.image.resize_with_crop_or_pad."""
    out = np.zeros((size, size), np.float32)
    current = array.shape[0]
    start_in, start_out = max((current - size) // 2, 0), max((size - current) // 2, 0)
    length = min(current, size)
    out[start_out:start_out + length, start_out:start_out + length] = array[
        start_in:start_in + length, start_in:start_in + length
    ]
    return out


def augment_pair(image: np.ndarray, mask: np.ndarray, settings: Augment,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (S, S) image and mask, augmented by `settings` (an Augment) with draws from `rng`."""
    size = image.shape[0]
    if settings.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if settings.vflip and rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if settings.zoom > 0:
        scale = rng.uniform(1.0 - settings.zoom, 1.0 + settings.zoom)
        new_size = int(round(size * scale))
        if new_size != size:
            factor = new_size / size
            image = center_fit(ndimage.zoom(image, factor, order=1, grid_mode=True, mode="nearest"), size)
            mask = center_fit(ndimage.zoom(mask, factor, order=0, grid_mode=True, mode="nearest"), size)
    if settings.rotation > 0:
        angle = rng.uniform(-settings.rotation, settings.rotation)
        image = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0)
        mask = ndimage.rotate(mask, angle, reshape=False, order=0, mode="constant", cval=0.0)
    if settings.brightness > 0:
        image = np.clip(image + rng.uniform(-settings.brightness, settings.brightness), 0.0, 1.0)
    if settings.contrast > 0:
        factor = rng.uniform(1.0 - settings.contrast, 1.0 + settings.contrast)
        image = np.clip((image - image.mean()) * factor + image.mean(), 0.0, 1.0)
    return np.clip(image, 0.0, 1.0), mask


class ArrayBatches(keras.utils.PyDataset):
    """Shuffled, augmented numpy batches of in-memory arrays, for any Keras backend.

    Batch `i` of epoch `e` (counted from the start of this fit) is a function
    of (seed, e, i) only, so a run is reproducible.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch_size: int, training: bool = False,
                 augment: Augment | None = None, seed: int = 0, drop_remainder: bool = False,
                 labels: np.ndarray | None = None, mask_outputs: Sequence[str] = (MASK_OUTPUT,),
                 crop: Crop | None = None) -> None:
        # threads prepare the next batches while the model trains (numpy and scipy release the GIL)
        super().__init__(workers=min(8, os.cpu_count() or 1) if training else 1)
        self.images = np.asarray(images, dtype=np.float32)
        self.masks = np.asarray(masks, dtype=np.float32)
        self.types = None if labels is None else one_hot_types(labels)
        self.mask_outputs = tuple(mask_outputs)
        self.batch_size, self.training, self.seed = int(batch_size), training, int(seed)
        self.settings = augment or Augment()
        self.crop = crop if crop and crop.size and training else None
        count = len(self.images) / self.batch_size
        self.batches = math.floor(count) if drop_remainder else math.ceil(count)
        self.epoch = 0
        self.order = self._order()

    def _order(self):
        if not self.training:
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __len__(self):
        return self.batches

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images, masks = self.images[rows].copy(), self.masks[rows].copy()
        if self.training:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            for k in range(len(rows)):
                images[k], masks[k] = augment_pair(images[k], masks[k], self.settings, rng)
            if self.crop:
                size = self.crop.size
                corners = [crop_window(mask, size, self.crop.tumour, rng) for mask in masks]
                images = np.stack([image[r:r + size, c:c + size] for image, (r, c) in zip(images, corners)])
                masks = np.stack([mask[r:r + size, c:c + size] for mask, (r, c) in zip(masks, corners)])
        types = None if self.types is None else self.types[rows]
        return images[..., None], batch_target(masks[..., None], types, self.mask_outputs)
