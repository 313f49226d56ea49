"""What the train stage builds from params: the model of params.model, its loss and its compile() settings.

Benchmarks and tests build through these too, so what they time or check is what the train stage trains.
"""

from pathlib import Path

import keras
import numpy as np

from tumorseg.config import Loss, Params
from tumorseg.errors import ProjectError
from tumorseg.model.encoders import build_encoder_unet
from tumorseg.model.load import load_model
from tumorseg.model.losses import BceDiceLoss, training_metrics
from tumorseg.model.unet import (
    MASK_OUTPUT,
    TYPE_OUTPUT,
    build_unet,
    supervised_levels,
    without_training_outputs,
)


def build_model(params: Params, image_size: int | None = None) -> keras.Model:
    """The model params.model describes, for `image_size` images (default params.data.image_size; with
    train.crop, of any size: crops in training, whole slices in validation)."""
    model, image_size = params.model, image_size or params.data.image_size
    if params.train.crop.size:
        image_size = None
    settings = dict(depth=model.depth, filters=model.filters, batchnorm_momentum=model.batchnorm_momentum,
                    dropout=model.dropout, hypercolumns=model.hypercolumns, classify=model.classify,
                    separable=model.separable, deep_supervision=model.deep_supervision)
    if model.encoder == "none":
        return build_unet(image_size, **settings)
    return build_encoder_unet(image_size, model.encoder, encoder_weights=model.encoder_weights,
                              full_resolution_skip=model.full_resolution_skip, **settings)


class InitError(ProjectError, ValueError):
    """train.init_from names no usable model, or one whose architecture is not the one params describe."""


ARCHITECTURE_PARAMS = ("model.depth, model.filters, model.encoder, model.full_resolution_skip, model.separable, "
                       "model.hypercolumns, model.classify")
# model.deep_supervision is not among them: its heads are compared and copied only where both models have them


def _weighted_layers(model: keras.Model) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """(name, class, weight shapes) of each layer with weights, in order."""
    return [(layer.name, type(layer).__name__, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def architecture_difference(source: keras.Model, model: keras.Model) -> str | None:
    """None when both models have the same layers with weights of the same shapes, else the first layer
    that differs and which param to change."""
    theirs, ours = _weighted_layers(source), _weighted_layers(model)
    first = next((i for i, (have, want) in enumerate(zip(theirs, ours)) if have[1:] != want[1:]), None)
    if first is None and len(theirs) == len(ours):
        return None
    if len(theirs) != len(ours):
        fix = "model.depth, model.hypercolumns or model.classify"
    elif theirs[first][1] == ours[first][1]:
        fix = "model.filters"
    else:
        fix = "model.separable or model.encoder"
    where = "" if first is None else (
        f"; first differing layer {first} '{theirs[first][0]}' ({theirs[first][1]}, weights {theirs[first][2]}) "
        f"against '{ours[first][0]}' ({ours[first][1]}, weights {ours[first][2]})")
    return f"it has {len(theirs)} layers with weights, this params' model {len(ours)}{where}: set {fix} as it was trained"


def load_initial_weights(model: keras.Model, path: str | Path) -> None:
    """Set `model`'s weights to those of the .keras model at `path` (train.init_from), or raise InitError
    naming the file, the first differing layer and the param to change."""
    try:
        source = load_model(path)
    except ProjectError as error:
        raise InitError(f"train.init_from: {error}") from None
    if len(source.outputs) != len(model.outputs):  # a published model has no deep-supervision heads
        source, model = without_training_outputs(source), without_training_outputs(model)
    difference = architecture_difference(source, model)
    if difference:
        raise InitError(f"train.init_from {path}: not the architecture params describe: {difference} "
                        f"({ARCHITECTURE_PARAMS}).")
    weights = source.get_weights()
    if not all(np.isfinite(w).all() for w in weights):
        raise InitError(f"train.init_from {path}: the model holds NaN or infinite weights; start from another.")
    model.set_weights(weights)


def make_loss(loss: Loss) -> BceDiceLoss:
    """The BceDiceLoss of train.loss."""
    return BceDiceLoss(bce_weight=loss.bce_weight, dice_weight=loss.dice_weight, smooth=loss.smooth,
                       lovasz_weight=loss.lovasz_weight, lovasz_from_epoch=loss.lovasz_from_epoch)


def mask_loss_weights(params: Params) -> dict[str, float]:
    """The outputs trained against the mask, with their loss weights: the mask's (1), and with
    model.deep_supervision those of the coarser decoder levels (1/2, 1/4, ...)."""
    return {MASK_OUTPUT: 1.0, **(supervised_levels(params.model.depth) if params.model.deep_supervision else {})}


def mask_targets(params: Params) -> list[str]:
    """The names of the outputs trained against the mask (mask_loss_weights)."""
    return list(mask_loss_weights(params))


def compile_settings(segmentation_loss: keras.losses.Loss, params: Params) -> dict[str, object]:
    """compile() arguments: the segmentation loss and metrics, or, with model.classify or
    model.deep_supervision, those of each output: the type's cross-entropy weighted by
    train.loss.class_weight, the segmentation loss of each coarser level weighted 1/2, 1/4, ..."""
    loss_weights = mask_loss_weights(params)
    if not params.model.classify and len(loss_weights) == 1:
        return dict(loss=segmentation_loss, metrics=training_metrics())
    loss = {name: segmentation_loss for name in loss_weights}
    metrics = {MASK_OUTPUT: training_metrics()}
    if params.model.classify:
        loss[TYPE_OUTPUT] = keras.losses.CategoricalCrossentropy()
        loss_weights[TYPE_OUTPUT] = params.train.loss.class_weight
        metrics[TYPE_OUTPUT] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    return dict(loss=loss, loss_weights=loss_weights, metrics=metrics)


@keras.saving.register_keras_serializable("tumorseg")
class EncoderRateAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by `encoder_factor` for the variables whose paths are in
    `encoder_paths` (the pretrained encoder's): discriminative fine-tuning, the ImageNet features moved
    less than the decoder that starts from nothing. (Scaling the encoder's gradients instead would do
    nothing: Adam's steps do not depend on the gradient's scale.)"""

    def __init__(self, encoder_paths=(), encoder_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder_paths = tuple(encoder_paths)
        self.encoder_factor = float(encoder_factor)

    def build(self, var_list):
        super().build(var_list)
        paths = set(self.encoder_paths)
        self._in_encoder = [variable.path in paths for variable in var_list]

    def update_step(self, gradient, variable, learning_rate):
        if self._in_encoder[self._get_variable_index(variable)]:
            learning_rate = learning_rate * self.encoder_factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "encoder_paths": list(self.encoder_paths),
                "encoder_factor": self.encoder_factor}


def compile_model(model: keras.Model, params: Params, loss: keras.losses.Loss,
                  learning_rate: float | keras.optimizers.schedules.LearningRateSchedule) -> keras.Model:
    """Compile `model` as the train stage does: Adam at `learning_rate` (a float or a schedule), the loss
    and metrics of compile_settings. While a pretrained encoder trains, its rate is train.encoder_lr_factor
    times that (EncoderRateAdam)."""
    factor = params.train.encoder_lr_factor
    encoder = model.get_layer("encoder") if params.model.encoder != "none" else None
    if encoder is not None and encoder.trainable and factor != 1.0:
        paths = [variable.path for variable in encoder.trainable_variables]
        optimizer = EncoderRateAdam(paths, factor, learning_rate=learning_rate)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer, **compile_settings(loss, params))
    return model
