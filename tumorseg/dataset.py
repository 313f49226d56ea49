"""tf.data input pipeline with augmentation applied identically to image and mask."""

import numpy as np
import tensorflow as tf


def _augment(augment):
    """A map function (image, mask, seed) -> (image, mask) using stateless random ops."""
    hflip = bool(augment.get("hflip", True))
    vflip = bool(augment.get("vflip", False))
    brightness = float(augment.get("brightness", 0.0))
    zoom = float(augment.get("zoom", 0.0))

    def apply(image, mask, seed):
        seeds = tf.random.experimental.stateless_split(seed, 4)
        if hflip:
            flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
            image, mask = tf.cond(flip, lambda: (image[:, ::-1], mask[:, ::-1]), lambda: (image, mask))
        if vflip:
            flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
            image, mask = tf.cond(flip, lambda: (image[::-1], mask[::-1]), lambda: (image, mask))
        if zoom > 0:
            size = tf.shape(image)[0]
            scale = tf.random.stateless_uniform([], seeds[2], 1.0 - zoom, 1.0 + zoom)
            new_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
            image = tf.image.resize_with_crop_or_pad(tf.image.resize(image, [new_size, new_size]), size, size)
            mask = tf.image.resize_with_crop_or_pad(
                tf.image.resize(mask, [new_size, new_size], method="nearest"), size, size
            )
        if brightness > 0:
            delta = tf.random.stateless_uniform([], seeds[3], -brightness, brightness)
            image = tf.clip_by_value(image + delta, 0.0, 1.0)
        return image, mask

    return apply


def make_dataset(images, masks, batch_size, training=False, augment=None, seed=0, drop_remainder=False):
    """Batches of (image, mask), both (batch, S, S, 1) float32.

    Training data is shuffled with the seed (a new order every epoch) and
    augmented; validation data is neither. `drop_remainder` keeps every batch
    full, which training on several replicas needs (a replica must not get
    an empty share of the last batch).
    """
    images = np.asarray(images, dtype=np.float32)[..., None]
    masks = np.asarray(masks, dtype=np.float32)[..., None]
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda pair, seed_pair: _augment(augment or {})(pair[0], pair[1], seed_pair),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
