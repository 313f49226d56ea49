"""The reference U-Net, built by one small function (Keras 3 functional API).

The decoder and the output heads are shared with the pretrained-encoder
variants of tumorseg.model.encoders. With `classify`, the model has two outputs,
{"mask": (N, S, S, 1) tumour probability, "tumor_type": (N, 3) class probabilities}. With
`deep_supervision`, training also sees one mask per coarser decoder level ("mask_level1", ...: see
deep_supervision_heads); the published model keeps only the outputs above (without_training_outputs).
"""

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from tumorseg import LABEL_NAMES
from tumorseg.config import ConfigError
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT

MAX_FILTER_MULTIPLIER = 8  # filters double per level up to 8x the base, as in the reference


def one_hot_types(labels: np.ndarray) -> np.ndarray:
    """(n, 3) float32 one-hot tumour types of labels 1, 2, 3 (the order of the type head's outputs)."""
    return np.eye(len(LABEL_NAMES), dtype=np.float32)[np.asarray(labels, dtype=np.int64) - 1]


def batch_target(mask, types, mask_outputs: Sequence[str] = (MASK_OUTPUT,)):
    """The target fit() gets for a batch: the mask alone, or a dict of the mask under each of
    `mask_outputs` and, unless `types` is None, the one-hot types under "tumor_type"."""
    if types is None and tuple(mask_outputs) == (MASK_OUTPUT,):
        return mask
    target = {name: mask for name in mask_outputs}
    if types is not None:
        target[TYPE_OUTPUT] = types
    return target


def conv_block(x: keras.KerasTensor, filters: int, batchnorm_momentum: float,
               separable: bool = False) -> keras.KerasTensor:
    """Two 3x3 convolutions (depthwise-separable ones with `separable`), each followed by batch norm and ReLU."""
    for _ in range(2):
        if separable:
            x = layers.SeparableConv2D(filters, 3, padding="same", depthwise_initializer="he_normal",
                                       pointwise_initializer="he_normal")(x)
        else:
            x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization(momentum=batchnorm_momentum)(x)
        x = layers.Activation("relu")(x)
    return x


def check_image_size(image_size: int, depth: int) -> None:
    """Each level halves the image, so the size must divide by 2**depth."""
    if image_size % 2**depth:
        raise ConfigError(
            f"data.image_size ({image_size}) must be divisible by 2**model.depth ({2 ** depth}); "
            "change one of them."
        )


def level_widths(filters: int, depth: int) -> list[int]:
    """Filters of levels 0..depth: doubling per level, capped at MAX_FILTER_MULTIPLIER x filters."""
    return [filters * min(2**level, MAX_FILTER_MULTIPLIER) for level in range(depth + 1)]


def decoder(x: keras.KerasTensor, skips: list[keras.KerasTensor | None], widths: list[int], batchnorm_momentum: float,
            dropout: float, separable: bool = False) -> list[keras.KerasTensor]:
    """Up levels from the bottleneck `x`, deepest first; skips[level] may be None (no skip).

    With `separable`, the blocks below the top level use depthwise-separable convolutions.
    Returns the features of every level, deepest first (the last one is at full resolution).
    """
    features = []
    for level in reversed(range(len(skips))):
        x = layers.Conv2DTranspose(widths[level], 3, strides=2, padding="same")(x)
        if skips[level] is not None:
            x = layers.Concatenate()([x, skips[level]])
        x = layers.Dropout(dropout)(x)
        x = conv_block(x, widths[level], batchnorm_momentum, separable and level > 0)
        features.append(x)
    return features


def output_head(features: list[keras.KerasTensor], hypercolumns: bool = False) -> keras.KerasTensor:
    """1x1 sigmoid convolution on the full-resolution features.

    With hypercolumns, the features of every decoder level are first upsampled
    (bilinear) to full resolution and concatenated.
    """
    x = features[-1]
    if hypercolumns and len(features) > 1:
        columns = [
            layers.UpSampling2D(2 ** (len(features) - 1 - index), interpolation="bilinear")(level)
            for index, level in enumerate(features[:-1])
        ]
        x = layers.Concatenate(name="hypercolumns")([*columns, x])
    return layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=MASK_OUTPUT)(x)


def type_head(bottleneck: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Tumour-type probabilities (softmax over LABEL_NAMES, in label order) from the pooled bottleneck."""
    x = layers.GlobalAveragePooling2D()(bottleneck)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(len(LABEL_NAMES), activation="softmax", dtype="float32", name=TYPE_OUTPUT)(x)


def level_output(level: int) -> str:
    """Name of the deep-supervision output of decoder level `level` (1/2**level of the resolution)."""
    return f"{MASK_OUTPUT}_level{level}"


def supervised_levels(depth: int) -> dict[str, float]:
    """The deep-supervision outputs of a `depth`-level decoder (levels 1 .. depth - 1, finest first) with
    their loss weights: 1/2 at level 1, halved per level (the main mask has 1)."""
    return {level_output(level): 0.5**level for level in range(1, depth)}


def deep_supervision_heads(features: list[keras.KerasTensor]) -> dict[str, keras.KerasTensor]:
    """A mask from each coarser decoder level (features deepest first, the full-resolution one last): a
    1x1 convolution, bilinear upsampling of its logits to full size, then the sigmoid. Trained against the
    same mask as the main output, they ask the coarse levels, which see the most context, to find the
    tumour themselves rather than only feed the top level."""
    heads = {}
    for index, level_features in enumerate(features[:-1]):
        level = len(features) - 1 - index
        name = level_output(level)
        logits = layers.Conv2D(1, 1, name=f"{name}_logits")(level_features)
        logits = layers.UpSampling2D(2**level, interpolation="bilinear")(logits)
        heads[name] = layers.Activation("sigmoid", dtype="float32", name=name)(logits)
    return heads


def model_outputs(features: list[keras.KerasTensor], bottleneck: keras.KerasTensor, hypercolumns: bool, classify: bool,
                  dropout: float, deep_supervision: bool = False) -> keras.KerasTensor | dict[str, keras.KerasTensor]:
    """The mask output alone, or a dict of it with the tumour-type output (`classify`) and the masks of
    the coarser decoder levels (`deep_supervision`)."""
    outputs = {MASK_OUTPUT: output_head(features, hypercolumns)}
    if classify:
        outputs[TYPE_OUTPUT] = type_head(bottleneck, dropout)
    if deep_supervision:
        outputs.update(deep_supervision_heads(features))
    return outputs if len(outputs) > 1 else outputs[MASK_OUTPUT]


def without_training_outputs(model: keras.Model) -> keras.Model:
    """`model` without its deep-supervision outputs (the same layers and weights): the mask alone, or the
    mask and the tumour type. A model without them is returned as it is."""
    names = list(getattr(model, "output_names", None) or [])
    if set(names) <= {MASK_OUTPUT, TYPE_OUTPUT}:
        return model
    kept = {name: model.get_layer(name).output for name in (MASK_OUTPUT, TYPE_OUTPUT) if name in names}
    return keras.Model(model.input, kept if len(kept) > 1 else kept[MASK_OUTPUT], name=model.name)


def build_unet(image_size: int | None = 128, depth: int = 4, filters: int = 64, batchnorm_momentum: float = 0.8,
               dropout: float = 0.1, hypercolumns: bool = False, classify: bool = False,
               separable: bool = False, deep_supervision: bool = False) -> keras.Model:
    """U-Net: `depth` down/up levels, max-pool down, Conv2DTranspose up, sigmoid output (and a type head).

    With `separable`, every level below the top one uses depthwise-separable 3x3 convolutions; the top
    level (the image's one channel in, the fewest channels at the most pixels) keeps full ones.
    `image_size` None: any size divisible by 2**depth (training on crops, validation on whole slices).
    """
    if image_size is not None:
        check_image_size(image_size, depth)
    widths = level_widths(filters, depth)
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, widths[level], batchnorm_momentum, separable and level > 0)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout)(x)
    bottleneck = conv_block(x, widths[depth], batchnorm_momentum, separable)
    features = decoder(bottleneck, skips, widths, batchnorm_momentum, dropout, separable) or [bottleneck]
    outputs = model_outputs(features, bottleneck, hypercolumns, classify, dropout, deep_supervision)
    return keras.Model(inputs, outputs, name="unet")
