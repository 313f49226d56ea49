"""U-Nets whose contracting path is a pretrained classification network.

efficientnet_lite0 (tumorseg.model.efficientnet_lite) takes its ImageNet weights
from an installed package, offline; the keras.applications networks (vgg16,
resnet50, efficientnetb0) download theirs on first use into ~/.keras/models/.

Feature maps taken from each encoder, by level (level L is 1/2**L of the input size):

| level | vgg16        | resnet50         | efficientnetb0            | efficientnet_lite0        |
|-------|--------------|------------------|---------------------------|---------------------------|
| 0     | block1_conv2 | -                | -                         | -                         |
| 1     | block2_conv2 | conv1_relu       | block2a_expand_activation | block1_expand_activation  |
| 2     | block3_conv3 | conv2_block3_out | block3a_expand_activation | block3_expand_activation  |
| 3     | block4_conv3 | conv3_block4_out | block4a_expand_activation | block5_expand_activation  |
| 4     | block5_conv3 | conv4_block6_out | block6a_expand_activation | block11_expand_activation |
| 5     | block5_pool  | conv5_block3_out | top_activation            | head_activation           |

With model.depth d (1 to 5), the map of level d is the bottleneck and the maps
of levels d-1..0 are the skip connections of the decoder (the reference
decoder of tumorseg.model.unet); ResNet50 and the EfficientNets have no
full-resolution map, so their last up level has no skip. Layers past level d
are left out of the model.

The grey [0, 1] input is replicated to 3 channels and scaled to [0, 255] with
the application's preprocess_input inside the model. Every preprocess_input
used here is affine per channel, so it is folded into one Rescaling layer
(plain Keras layers: the saved model loads without custom code).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tumorseg.config import ENCODER_NAMES, ConfigError
from tumorseg.errors import ProjectError
from tumorseg.model import efficientnet_lite
from tumorseg.model.unet import check_image_size, conv_block, decoder, level_widths, model_outputs

MIN_IMAGE_SIZE = 32  # keras.applications refuse smaller inputs
IMAGENET_STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Encoder:
    application: object  # keras.applications constructor
    preprocess_input: object
    feature_layers: tuple  # layer name per level 0..5, None where the network has no map at that size


ENCODERS = {
    "vgg16": Encoder(
        keras.applications.VGG16, keras.applications.vgg16.preprocess_input,
        ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"),
    ),
    "resnet50": Encoder(
        keras.applications.ResNet50, keras.applications.resnet50.preprocess_input,
        (None, "conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "efficientnetb0": Encoder(
        keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input,
        (None, "block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation", "top_activation"),
    ),
    "efficientnet_lite0": Encoder(
        efficientnet_lite.EfficientNetLite0, efficientnet_lite.preprocess_input, efficientnet_lite.FEATURE_LAYERS,
    ),
}
OFFLINE_ENCODER = "efficientnet_lite0"  # its ImageNet weights come with a pip package
assert set(ENCODER_NAMES) == {"none", *ENCODERS}, "tumorseg.config.ENCODER_NAMES lists the encoders here"


def weights_argument(encoder_weights: str | Path | None) -> str | None:
    """model.encoder_weights as keras.applications takes it: 'imagenet', None, or an existing file path."""
    if encoder_weights is None or str(encoder_weights).lower() == "none":
        return None
    if encoder_weights == "imagenet":
        return "imagenet"
    path = Path(encoder_weights)
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights: weights file {path} not found; give imagenet, none, or the path of "
            "the encoder's no-top weights file (as Keras stores it in ~/.keras/models/, or saved with save_weights)."
        )
    return str(path)


def check_encoder(encoder: str, encoder_weights: str | Path | None, image_size: int, depth: int,
                  full_resolution_skip: bool = False) -> None:
    """Raise ConfigError for a depth or image size the encoder cannot serve, a full-resolution skip it has
    already, or a missing weights file."""
    if encoder == "none":
        check_image_size(image_size, depth)
        return
    stages = len(ENCODERS[encoder].feature_layers) - 1
    if not 1 <= depth <= stages:
        raise ConfigError(
            f"model.depth ({depth}) must be between 1 and {stages} with model.encoder {encoder}: "
            f"{encoder} downsamples {stages} times."
        )
    check_image_size(image_size, depth)
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"data.image_size ({image_size}) is too small for model.encoder {encoder}: "
            f"keras.applications need at least {MIN_IMAGE_SIZE}."
        )
    if full_resolution_skip and ENCODERS[encoder].feature_layers[0]:
        raise ConfigError(
            f"model.full_resolution_skip: model.encoder {encoder} has a full-resolution map of its own "
            f"({ENCODERS[encoder].feature_layers[0]}), the top level's skip; set model.full_resolution_skip false."
        )
    weights_argument(encoder_weights)


def grey_to_encoder_input(encoder: str, x: keras.KerasTensor) -> keras.KerasTensor:
    """Grey [0, 1] images -> 3 equal channels in [0, 255] after the application's preprocess_input."""
    preprocess = ENCODERS[encoder].preprocess_input
    black = np.asarray(preprocess(np.zeros((1, 1, 1, 3), np.float32)), np.float32).reshape(3)
    white = np.asarray(preprocess(np.full((1, 1, 1, 3), 255.0, np.float32)), np.float32).reshape(3)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    return layers.Rescaling(scale=(white - black).tolist(), offset=black.tolist(), name="encoder_preprocess")(x)


def load_weights_file(backbone: keras.Model, path: str | Path, encoder: str) -> None:
    """Load a weights file into the application, or raise ConfigError if it is not for this architecture."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(path)
        except Exception as error:  # Keras raises ValueError, KeyError or OSError for a foreign file
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(
                f"model.encoder_weights: {path} does not hold {encoder} no-top weights ({message})."
            ) from error
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message) or "not be loaded" in str(w.message)]
    if skipped:
        raise ConfigError(f"model.encoder_weights: {path} does not hold {encoder} no-top weights ({skipped[0]}).")


def match_imagenet_normalization(backbone: keras.Model) -> None:
    """EfficientNet: give a file's ImageNet weights the input normalisation weights='imagenet' gives.

    The ImageNet file stores the RGB standard deviations as the variance of the
    stem Normalization layer; keras.applications corrects that with an extra
    Rescaling only when weights='imagenet', not for a file path. When the
    loaded variance is that uncorrected one, square it instead.
    """
    normalization = next(layer for layer in backbone.layers if isinstance(layer, layers.Normalization))
    variance = keras.ops.convert_to_numpy(normalization.adapt_variance)
    if np.allclose(variance, IMAGENET_STDDEV_RGB, atol=1e-4):
        normalization.adapt_variance.assign(IMAGENET_STDDEV_RGB**2)
        normalization.finalize_state()


def load_backbone(encoder: str, encoder_weights: str | Path | None, image_size: int) -> keras.Model:
    """The keras.applications network without its classifier, with the weights asked for."""
    weights = weights_argument(encoder_weights)
    application = ENCODERS[encoder].application
    shape = (image_size, image_size, 3)
    if weights is None:
        return application(include_top=False, weights=None, input_shape=shape)
    if weights == "imagenet":
        try:
            return application(include_top=False, weights="imagenet", input_shape=shape)
        except ProjectError:  # the offline encoder's own message: a missing package or a changed file
            raise
        except Exception as error:  # no network: keras.utils.get_file raises a plain Exception
            raise ConfigError(
                f"model.encoder_weights: the ImageNet weights of {encoder} are not in Keras's cache "
                f"(~/.keras/models/) and could not be downloaded ({error}). Offline, use model.encoder "
                f"{OFFLINE_ENCODER} (its ImageNet weights come with a pip package); or copy the no-top file "
                "into the cache from a machine with network, or set model.encoder_weights to its path."
            ) from error
    backbone = application(include_top=False, weights=None, input_shape=shape)
    load_weights_file(backbone, weights, encoder)
    if encoder == "efficientnetb0":
        match_imagenet_normalization(backbone)
    return backbone


def set_batchnorm_momentum(backbone: keras.Model, momentum: float) -> None:
    """Give the encoder's batch norms the decoder's momentum.

    keras.applications use 0.99, tuned for ImageNet's millions of steps. On a few
    hundred steps the moving statistics stay near their start (initial values or
    ImageNet's), so the model predicts well with batch statistics yet nothing in
    inference: measured with a randomly initialised EfficientNetB0 on the
    synthetic set, validation Dice 0.00 at 0.99 and 0.94 at 0.8 after 15 epochs.
    """
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def build_encoder_unet(image_size: int, encoder: str, depth: int = 4, filters: int = 64,
                       batchnorm_momentum: float = 0.8, dropout: float = 0.1, hypercolumns: bool = False,
                       encoder_weights: str | Path | None = "imagenet", classify: bool = False,
                       separable: bool = False, deep_supervision: bool = False,
                       full_resolution_skip: bool = False) -> keras.Model:
    """U-Net with a keras.applications contracting path (a nested model named 'encoder') and the reference decoder.

    Most encoders have no full-resolution map (their stem strides by 2), so the top decoder level has no
    skip. With `full_resolution_skip`, a conv block on the grey image (the plain U-Net's top level) is that
    skip: the exact edges the stride-2 maps blur.
    """
    check_encoder(encoder, encoder_weights, image_size, depth, full_resolution_skip)
    backbone = load_backbone(encoder, encoder_weights, image_size)
    set_batchnorm_momentum(backbone, batchnorm_momentum)
    levels = [level for level, name in enumerate(ENCODERS[encoder].feature_layers[: depth + 1]) if name]
    names = [ENCODERS[encoder].feature_layers[level] for level in levels]
    contracting = keras.Model(backbone.inputs, [backbone.get_layer(name).output for name in names], name="encoder")
    inputs = keras.Input((image_size, image_size, 1), name="image")
    maps = contracting(grey_to_encoder_input(encoder, inputs))
    maps = dict(zip(levels, maps if isinstance(maps, (list, tuple)) else [maps]))
    for level, feature in maps.items():
        if feature.shape[1] != image_size // 2**level:
            raise ConfigError(
                f"model.encoder {encoder}: its level-{level} map is {feature.shape[1]} pixels wide, not "
                f"{image_size // 2**level}; use a data.image_size divisible by 32."
            )
    widths = level_widths(filters, depth)
    skips = [maps.get(level) for level in range(depth)]
    if full_resolution_skip:
        skips[0] = conv_block(inputs, widths[0], batchnorm_momentum)
    features = decoder(maps[depth], skips, widths, batchnorm_momentum, dropout, separable)
    outputs = model_outputs(features, maps[depth], hypercolumns, classify, dropout, deep_supervision)
    return keras.Model(inputs, outputs, name=f"{encoder}_unet")


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze the pretrained contracting path (takes effect at the next compile)."""
    model.get_layer("encoder").trainable = trainable
