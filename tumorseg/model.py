"""The reference U-Net, built by one small function (Keras 3 functional API)."""

import keras
from keras import layers

MAX_FILTER_MULTIPLIER = 8  # filters double per level up to 8x the base, as in the reference


def conv_block(x, filters, batchnorm_momentum):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization(momentum=batchnorm_momentum)(x)
        x = layers.Activation("relu")(x)
    return x


def check_image_size(image_size, depth):
    """Each level halves the image, so the size must divide by 2**depth."""
    if image_size % 2**depth:
        raise ValueError(
            f"data.image_size ({image_size}) must be divisible by 2**model.depth ({2 ** depth}); "
            "change one of them."
        )


def build_unet(image_size=128, depth=4, filters=64, batchnorm_momentum=0.8, dropout=0.1):
    """U-Net: `depth` down/up levels, max-pool down, Conv2DTranspose up, sigmoid output."""
    check_image_size(image_size, depth)
    width = [filters * min(2**level, MAX_FILTER_MULTIPLIER) for level in range(depth + 1)]
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, width[level], batchnorm_momentum)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout)(x)
    x = conv_block(x, width[depth], batchnorm_momentum)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(width[level], 3, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = layers.Dropout(dropout)(x)
        x = conv_block(x, width[level], batchnorm_momentum)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name="unet")
