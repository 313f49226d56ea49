"""What the train stage builds from params: the model of params.model, its loss and its compile() settings.

Benchmarks and tests build through these too, so what they time or check is what the train stage trains.
"""

import keras

from tumorseg.config import Loss, Params
from tumorseg.model.encoders import build_encoder_unet
from tumorseg.model.losses import BceDiceLoss, training_metrics
from tumorseg.model.unet import MASK_OUTPUT, TYPE_OUTPUT, build_unet


def build_model(params: Params, image_size: int | None = None) -> keras.Model:
    """The model params.model describes, for `image_size` images (default params.data.image_size)."""
    model, image_size = params.model, image_size or params.data.image_size
    settings = dict(depth=model.depth, filters=model.filters, batchnorm_momentum=model.batchnorm_momentum,
                    dropout=model.dropout, hypercolumns=model.hypercolumns, classify=model.classify,
                    separable=model.separable)
    if model.encoder == "none":
        return build_unet(image_size, **settings)
    return build_encoder_unet(image_size, model.encoder, encoder_weights=model.encoder_weights, **settings)


def make_loss(loss: Loss) -> BceDiceLoss:
    """The BceDiceLoss of train.loss."""
    return BceDiceLoss(bce_weight=loss.bce_weight, dice_weight=loss.dice_weight, smooth=loss.smooth,
                       lovasz_weight=loss.lovasz_weight, lovasz_from_epoch=loss.lovasz_from_epoch)


def compile_settings(segmentation_loss: keras.losses.Loss, params: Params) -> dict[str, object]:
    """compile() arguments: the segmentation loss and metrics, or with model.classify those of both outputs,
    the type's cross-entropy weighted by train.loss.class_weight."""
    if not params.model.classify:
        return dict(loss=segmentation_loss, metrics=training_metrics())
    return dict(
        loss={MASK_OUTPUT: segmentation_loss, TYPE_OUTPUT: keras.losses.CategoricalCrossentropy()},
        loss_weights={MASK_OUTPUT: 1.0, TYPE_OUTPUT: params.train.loss.class_weight},
        metrics={MASK_OUTPUT: training_metrics(), TYPE_OUTPUT: [keras.metrics.CategoricalAccuracy(name="accuracy")]},
    )


def compile_model(model: keras.Model, params: Params, loss: keras.losses.Loss,
                  learning_rate: float | keras.optimizers.schedules.LearningRateSchedule) -> keras.Model:
    """Compile `model` as the train stage does: Adam at `learning_rate` (a float or a schedule), the loss
    and metrics of compile_settings."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **compile_settings(loss, params))
    return model
