"""Loss and metrics for binary segmentation, written with keras.ops.

Soft Dice per image: (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth),
with `smooth` (default 1.0) keeping it defined on empty masks: an empty truth
with an empty prediction scores 1, so the Dice loss is 0 there.

The Dice metric thresholds the prediction at 0.5 and averages per-image Dice
over images, with the convention: truth and prediction both empty -> 1, one of
them empty -> 0.
"""

import keras
from keras import ops


def _flatten(y_true, y_pred):
    batch = ops.shape(y_pred)[0]
    y_true = ops.reshape(ops.cast(y_true, "float32"), (batch, -1))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (batch, -1))
    return y_true, y_pred


def soft_dice(y_true, y_pred, smooth=1.0):
    """Per-image soft Dice, shape (batch,)."""
    y_true, y_pred = _flatten(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred, axis=1)
    total = ops.sum(y_true, axis=1) + ops.sum(y_pred, axis=1)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="tumorseg")
def dice_score(y_true, y_pred):
    """Per-image Dice of the prediction thresholded at 0.5, shape (batch,)."""
    y_true, y_pred = _flatten(y_true, y_pred)
    y_pred = ops.cast(y_pred >= 0.5, "float32")
    intersection = ops.sum(y_true * y_pred, axis=1)
    total = ops.sum(y_true, axis=1) + ops.sum(y_pred, axis=1)
    return ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="tumorseg")
class BceDiceLoss(keras.losses.Loss):
    """bce_weight * binary cross-entropy + dice_weight * (1 - soft Dice), per image."""

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        flat_true, flat_pred = _flatten(y_true, y_pred)
        bce = ops.mean(keras.losses.binary_crossentropy(flat_true[..., None], flat_pred[..., None]), axis=1)
        dice_loss = 1.0 - soft_dice(y_true, y_pred, self.smooth)
        return self.bce_weight * bce + self.dice_weight * dice_loss

    def get_config(self):
        config = super().get_config()
        config.update(bce_weight=self.bce_weight, dice_weight=self.dice_weight, smooth=self.smooth)
        return config


def training_metrics():
    """Pooled IoU at 0.5 (Keras BinaryIoU) and mean per-image Dice at 0.5."""
    return [
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou"),
        keras.metrics.MeanMetricWrapper(dice_score, name="dice"),
    ]
