"""Loss and metrics for binary segmentation, written with keras.ops.

Soft Dice per image: (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth),
with `smooth` (default 1.0) keeping it defined on empty masks: an empty truth
with an empty prediction scores 1, so the Dice loss is 0 there.

Optional Lovasz hinge (Berman et al. 2018, "The Lovasz-Softmax loss"), per
image, on logits: the model outputs sigmoid probabilities p, so the logits are
recovered as log(p / (1 - p)) with p clipped to [LOGIT_EPSILON, 1 - LOGIT_EPSILON]
(logits within about +-16.1; a saturated sigmoid gives no gradient there).
It can be switched on after a warm-up: its weight in effect is a non-trainable
variable of the loss, set at the start of every epoch by LovaszSchedule.

The Dice metric thresholds the prediction at 0.5 and averages per-image Dice
over images, with the convention: truth and prediction both empty -> 1, one of
them empty -> 0.
"""

import keras
from keras import ops

LOGIT_EPSILON = 1.0e-7


def _flatten(y_true, y_pred):
    batch = ops.shape(y_pred)[0]
    y_true = ops.reshape(ops.cast(y_true, "float32"), (batch, -1))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (batch, -1))
    return y_true, y_pred


def soft_dice(y_true, y_pred, smooth: float = 1.0):
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


def probability_logits(y_pred, epsilon: float = LOGIT_EPSILON):
    """Logits log(p / (1 - p)) of sigmoid probabilities, clipped to [epsilon, 1 - epsilon]."""
    p = ops.clip(ops.cast(y_pred, "float32"), epsilon, 1.0 - epsilon)
    return ops.log(p) - ops.log1p(-p)


def jaccard_increments(sorted_labels):
    """Jaccard-loss increments as pixels join the error set in the given order, shape (batch, pixels).

    Entry k is Delta(first k+1 pixels) - Delta(first k pixels), with Delta(E) the
    Jaccard loss of a prediction whose wrong pixels are E: 1 - |truth - E| / |truth | E|.
    """
    positives = ops.sum(sorted_labels, axis=1, keepdims=True)
    intersection = positives - ops.cumsum(sorted_labels, axis=1)
    union = positives + ops.cumsum(1.0 - sorted_labels, axis=1)  # >= 1: never divides by 0
    jaccard_loss = 1.0 - intersection / union
    return ops.concatenate([jaccard_loss[:, :1], jaccard_loss[:, 1:] - jaccard_loss[:, :-1]], axis=1)


def lovasz_hinge(y_true, logits):
    """Per-image Lovasz hinge on logits, shape (batch,).

    The hinge errors max(0, 1 - logit * sign) (sign +1 on tumour, -1 elsewhere),
    sorted in decreasing order, weighted by the Jaccard-loss increments: the
    Lovasz extension of the Jaccard loss evaluated at the errors.
    """
    labels, logits = _flatten(y_true, logits)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    sorted_errors, order = ops.top_k(errors, k=ops.shape(errors)[1], sorted=True)
    weights = ops.stop_gradient(jaccard_increments(ops.take_along_axis(labels, order, axis=1)))
    return ops.sum(ops.relu(sorted_errors) * weights, axis=1)


@keras.saving.register_keras_serializable(package="tumorseg")
class BceDiceLoss(keras.losses.Loss):
    """bce_weight * binary cross-entropy + dice_weight * (1 - soft Dice) [+ Lovasz hinge], per image.

    With lovasz_weight > 0, lovasz_weight * Lovasz hinge is added from epoch
    lovasz_from_epoch on (0-based). The weight in effect, `active_lovasz_weight`,
    is a non-trainable variable that starts at its epoch-0 value (also after
    loading) and is set per epoch by the LovaszSchedule callback.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 lovasz_weight: float = 0.0, lovasz_from_epoch: int = 0, name: str = "bce_dice", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.lovasz_weight = float(lovasz_weight)
        self.lovasz_from_epoch = int(lovasz_from_epoch)
        self.active_lovasz_weight = None
        if self.lovasz_weight:
            self.active_lovasz_weight = keras.Variable(
                self.lovasz_weight_at(0), trainable=False, dtype="float32", name="active_lovasz_weight"
            )

    def lovasz_weight_at(self, epoch: int) -> float:
        """The Lovasz weight in effect during `epoch` (0-based)."""
        return self.lovasz_weight if epoch >= self.lovasz_from_epoch else 0.0

    def start_epoch(self, epoch: int) -> None:
        """Set the Lovasz weight in effect for `epoch`."""
        if self.active_lovasz_weight is not None:
            self.active_lovasz_weight.assign(self.lovasz_weight_at(epoch))

    def call(self, y_true, y_pred):
        flat_true, flat_pred = _flatten(y_true, y_pred)
        bce = ops.mean(keras.losses.binary_crossentropy(flat_true[..., None], flat_pred[..., None]), axis=1)
        dice_loss = 1.0 - soft_dice(y_true, y_pred, self.smooth)
        loss = self.bce_weight * bce + self.dice_weight * dice_loss
        if self.active_lovasz_weight is not None:
            loss = loss + self.active_lovasz_weight * lovasz_hinge(y_true, probability_logits(y_pred))
        return loss

    def get_config(self) -> dict[str, object]:
        config = super().get_config()
        config.update(
            bce_weight=self.bce_weight, dice_weight=self.dice_weight, smooth=self.smooth,
            lovasz_weight=self.lovasz_weight, lovasz_from_epoch=self.lovasz_from_epoch,
        )
        return config


class LovaszSchedule(keras.callbacks.Callback):
    """Switches the Lovasz term of a BceDiceLoss on at its lovasz_from_epoch (also when a run resumes)."""

    def __init__(self, loss: BceDiceLoss) -> None:
        super().__init__()
        self.loss = loss

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.loss.start_epoch(epoch)


def training_metrics() -> list[keras.metrics.Metric]:
    """Pooled IoU at 0.5 (Keras BinaryIoU) and mean per-image Dice at 0.5."""
    return [
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou"),
        keras.metrics.MeanMetricWrapper(dice_score, name="dice"),
    ]
