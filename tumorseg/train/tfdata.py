"""tf.data input pipeline with augmentation applied identically to image and mask (the TensorFlow backend's;
tumorseg.train.batches chooses the pipeline for the backend in use)."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tumorseg.config import Augment, Crop
from tumorseg.model.outputs import MASK_OUTPUT
from tumorseg.model.unet import batch_target, one_hot_types


def _flip(image, mask, seed, axis):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: (tf.reverse(image, [axis]), tf.reverse(mask, [axis])), lambda: (image, mask))


def _zoom(image, mask, seed, zoom):
    """Scale by a factor in [1 - zoom, 1 + zoom], then crop or pad back to the size."""
    size = tf.shape(image)[0]
    scale = tf.random.stateless_uniform([], seed, 1.0 - zoom, 1.0 + zoom)
    new_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
    image = tf.image.resize_with_crop_or_pad(tf.image.resize(image, [new_size, new_size]), size, size)
    mask = tf.image.resize_with_crop_or_pad(tf.image.resize(mask, [new_size, new_size], method="nearest"), size, size)
    return image, mask


def rotation_transform(angle: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
    """Projective transform (output -> input coordinates) of a rotation by `angle` radians about the centre."""
    cos, sin, last = tf.cos(angle), tf.sin(angle), tf.cast(size, tf.float32) - 1.0
    x_offset = (last - (cos * last - sin * last)) / 2.0
    y_offset = (last - (sin * last + cos * last)) / 2.0
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[None]


def _rotate(image, mask, seed, degrees):
    """The same rotation by up to +-degrees for both: bilinear for the image, nearest for the mask, 0 outside."""
    angle = tf.random.stateless_uniform([], seed, -degrees, degrees) * (np.pi / 180.0)
    transform = rotation_transform(angle, tf.shape(image)[0])

    def apply(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=tf.shape(x)[:2], fill_value=0.0,
            interpolation=interpolation, fill_mode="CONSTANT",
        )[0]

    return apply(image, "BILINEAR"), apply(mask, "NEAREST")


def _contrast(image, seed, contrast):
    """Scale the deviation from the image mean by a factor in [1 - contrast, 1 + contrast], clipped to [0, 1]."""
    factor = tf.random.stateless_uniform([], seed, 1.0 - contrast, 1.0 + contrast)
    mean = tf.reduce_mean(image)
    return tf.clip_by_value((image - mean) * factor + mean, 0.0, 1.0)


def _augment(augment):
    """A map function (image, mask, seed) -> (image, mask) using stateless random ops.

    Geometric changes (flips, zoom, rotation) move image and mask together and
    keep the mask binary; brightness and contrast change the image only.
    """
    hflip, vflip, brightness, contrast = augment.hflip, augment.vflip, augment.brightness, augment.contrast
    zoom, rotation = augment.zoom, augment.rotation

    def apply(image, mask, seed):
        shape = image.shape
        seeds = tf.random.experimental.stateless_split(seed, 6)
        if hflip:
            image, mask = _flip(image, mask, seeds[0], axis=1)
        if vflip:
            image, mask = _flip(image, mask, seeds[1], axis=0)
        if zoom > 0:
            image, mask = _zoom(image, mask, seeds[2], zoom)
        if rotation > 0:
            image, mask = _rotate(image, mask, seeds[4], rotation)
        if brightness > 0:
            delta = tf.random.stateless_uniform([], seeds[3], -brightness, brightness)
            image = tf.clip_by_value(image + delta, 0.0, 1.0)
        if contrast > 0:
            image = _contrast(image, seeds[5], contrast)
        return tf.ensure_shape(image, shape), tf.ensure_shape(mask, shape)  # zoom and rotation lose the static size

    return apply


def _crop(size: int, tumour: float):
    """A map function (image, mask, seed) -> (image, mask) cut to a size x size window: with probability
    `tumour` one that contains a random tumour pixel, else any (tumorseg.train.batches.crop_window)."""

    def apply(image, mask, seed):
        span = tf.shape(mask)[0] - size
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 1), 3)
        pixels = tf.cast(tf.where(mask[..., 0] > 0.5), tf.int32)
        count = tf.shape(pixels)[0]
        on_tumour = (count > 0) & (tf.random.stateless_uniform([], seeds[0]) < tumour)
        pick = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(count, 1), dtype=tf.int32)
        pixel = tf.concat([pixels, tf.zeros((1, 2), tf.int32)], axis=0)[pick]  # the zeros only when count is 0
        first = tf.where(on_tumour, tf.maximum(0, pixel - size + 1), 0)
        last = tf.where(on_tumour, tf.minimum(span, pixel), span)
        draw = tf.random.stateless_uniform([2], seeds[2])
        corner = first + tf.cast(tf.floor(draw * tf.cast(last - first + 1, tf.float32)), tf.int32)
        corner = tf.minimum(corner, last)  # a draw of 1.0 - epsilon rounding up stays inside
        start = tf.concat([corner, [0]], axis=0)
        return tf.slice(image, start, [size, size, 1]), tf.slice(mask, start, [size, size, 1])

    return apply


def make_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, training: bool = False,
                 augment: Augment | None = None, seed: int = 0, drop_remainder: bool = False,
                 labels: np.ndarray | None = None, mask_outputs: Sequence[str] = (MASK_OUTPUT,),
                 crop: Crop | None = None) -> tf.data.Dataset:
    """Batches of (image, mask), both (batch, S, S, 1) float32; with `labels`, of
    (image, {"mask": mask, "tumor_type": one-hot type}), and the mask under each of `mask_outputs`
    (see tumorseg.train.batches.make_batches).

    Training data is shuffled with the seed (a new order every epoch),
    augmented and, with a `crop` of size > 0, cut to random crops; validation
    data is none of these. `drop_remainder` keeps every batch
    full, which training on several replicas needs (a replica must not get
    an empty share of the last batch). Under a multi-worker strategy every
    worker builds the same batches and keeps its share of each (data
    sharding: the arrays are in memory, there are no files to divide).
    """
    images = np.asarray(images, dtype=np.float32)[..., None]
    masks = np.asarray(masks, dtype=np.float32)[..., None]
    types = one_hot_types(labels if labels is not None else np.ones(len(images)))
    dataset = tf.data.Dataset.from_tensor_slices((images, masks, types))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        augmented = _augment(augment or Augment())
        cropped = _crop(crop.size, crop.tumour) if crop and crop.size else None

        def prepare(row, seed_pair):
            image, mask = augmented(row[0], row[1], seed_pair)
            if cropped:
                image, mask = cropped(image, mask, seed_pair)
            return image, mask, row[2]

        dataset = tf.data.Dataset.zip((dataset, seeds)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                                            deterministic=True)
    with_types = labels is not None
    dataset = dataset.map(lambda image, mask, kind: (image, batch_target(mask, kind if with_types else None,
                                                                         mask_outputs)))
    # Data built from arrays in memory has no files to shard: each worker keeps its share of every
    # batch (what AUTO falls back to, said explicitly to spare the fallback's warning)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(options)
